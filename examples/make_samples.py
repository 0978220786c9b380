"""Regenerate examples/recordings/: synthetic WAV files for trying out the yes/no labeller.

Speech comes from espeak-ng (run as a subprocess, 22.05 kHz); numpy, soxr and soundfile trim,
place, normalise, add seeded noise, resample and write each file in its own WAV format. The
folder is deleted and rebuilt, so the same espeak-ng version always gives the same bytes.

Usage: python examples/make_samples.py
"""

import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

OUT_DIR = Path(__file__).resolve().parent / "recordings"
ESPEAK_RATE = 22_050  # what `espeak-ng -w` writes
PEAK_DBFS = -3.0  # speech peak after normalisation
TRIM_THRESHOLD = 0.02  # fraction of the peak below which leading/trailing samples are cut
BROKEN_NAME = "broken.wav"
BROKEN_BYTES = 20  # a RIFF header cut short: "RIFF", size, "WAVE", "fmt ", then nothing useful


@dataclass(frozen=True)
class Sample:
    """One output file: what is said (None: no speech), how, and in which format."""

    name: str  # path under OUT_DIR
    word: str | None
    seconds: float
    sample_rate: int
    subtype: str  # a soundfile subtype: PCM_16, PCM_24, PCM_U8, FLOAT
    voice: str = "en-us"
    speed: int = 160  # espeak-ng -s, words per minute
    pitch: int = 50  # espeak-ng -p, 0..99
    start: float | None = None  # where the word begins, in seconds; None: centred
    noise_dbfs: float = -60.0  # RMS of the added white noise
    seed: int = 0
    channels: int = 1


SAMPLES: tuple[Sample, ...] = (
    # yes
    Sample("yes_en-us_16k.wav", "yes", 1.0, 16_000, "PCM_16", seed=1),
    Sample(
        "yes_en+f3_fast_8k.wav", "yes", 1.0, 8_000, "PCM_16", "en+f3", speed=200, pitch=60, seed=2
    ),
    Sample(
        "yes_en+m7_low-pitch_44k1_24bit_stereo.wav",
        "yes",
        0.8,
        44_100,
        "PCM_24",
        "en+m7",
        speed=150,
        pitch=25,
        seed=3,
        channels=2,
    ),
    Sample(
        "yes_en_slow_in-noise_3s_16k.wav",
        "yes",
        3.0,
        16_000,
        "PCM_16",
        "en",
        speed=120,
        noise_dbfs=-35.0,
        seed=4,
    ),
    # no
    Sample(
        "no_en-us_high-pitch_48k_float.wav",
        "no",
        0.8,
        48_000,
        "FLOAT",
        "en-us",
        speed=170,
        pitch=80,
        seed=5,
    ),
    Sample("no_en+f3_slow_22k_u8.wav", "no", 1.0, 22_050, "PCM_U8", "en+f3", speed=130, seed=6),
    Sample(
        "NO_en+m7_fast_16k.WAV", "no", 1.0, 16_000, "PCM_16", "en+m7", speed=190, pitch=40, seed=7
    ),
    Sample(
        "more/no_after-pause_en_2.5s_16k.wav",
        "no",
        2.5,
        16_000,
        "PCM_16",
        "en",
        speed=150,
        start=1.6,
        noise_dbfs=-50.0,
        seed=8,
    ),
    # unknown: other words
    Sample("unknown_go_en-us_16k.wav", "go", 1.0, 16_000, "PCM_16", pitch=55, seed=9),
    Sample("unknown_stop_en+f3_8k.wav", "stop", 1.0, 8_000, "PCM_16", "en+f3", speed=170, seed=10),
    Sample(
        "unknown_hello_en+m7_16k.wav", "hello", 1.0, 16_000, "PCM_16", "en+m7", speed=180, seed=11
    ),
    # silence: no speech, only noise
    Sample("silence_noise_16k.wav", None, 1.0, 16_000, "PCM_16", noise_dbfs=-45.0, seed=12),
)
NEAR_SILENCE_NAME = "silence_near-digital_16k.wav"  # +-1 LSB of 16-bit dither, about -90 dBFS


def synthesize(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """Speak `word` with espeak-ng; mono float64 at ESPEAK_RATE."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        command = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav)]
        subprocess.run([*command, word], check=True, capture_output=True)
        audio, rate = soundfile.read(wav, dtype="float64", always_2d=True)
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng wrote {rate} Hz, expected {ESPEAK_RATE} Hz")
    return audio.mean(axis=1)


def trim(audio: np.ndarray) -> np.ndarray:
    """Cut leading and trailing samples quieter than TRIM_THRESHOLD of the peak."""
    loud = np.flatnonzero(np.abs(audio) >= TRIM_THRESHOLD * np.abs(audio).max())
    return audio[loud[0] : loud[-1] + 1]


def noise(frames: int, dbfs: float, seed: int) -> np.ndarray:
    """Seeded white Gaussian noise with the given RMS level."""
    return np.random.default_rng(seed).normal(0.0, 10 ** (dbfs / 20), frames)


def render(sample: Sample) -> np.ndarray:
    """The sample's signal: float64 [frames, channels] at its own rate, within [-1, 1]."""
    frames = round(sample.seconds * sample.sample_rate)
    signal = noise(frames, sample.noise_dbfs, sample.seed)
    if sample.word is not None:
        speech = trim(synthesize(sample.word, sample.voice, sample.speed, sample.pitch))
        if sample.sample_rate != ESPEAK_RATE:
            speech = soxr.resample(speech, ESPEAK_RATE, sample.sample_rate, quality="VHQ")
        speech *= 10 ** (PEAK_DBFS / 20) / np.abs(speech).max()
        if len(speech) > frames:
            raise ValueError(f"{sample.name}: the word lasts longer than {sample.seconds} s")
        if sample.start is None:
            begin = (frames - len(speech)) // 2
        else:
            begin = min(round(sample.start * sample.sample_rate), frames - len(speech))
        signal[begin : begin + len(speech)] += speech
    signal = np.clip(signal, -1.0, 1.0)
    if sample.channels == 2:  # the right channel 2 dB quieter, as if the speaker sat left
        return np.stack([signal, signal * 10 ** (-2 / 20)], axis=1)
    return signal[:, np.newaxis]


def zero_peak_timestamp(path: Path) -> None:
    """Zero the creation time libsndfile stores in a float WAV's PEAK chunk (determinism)."""
    data = bytearray(path.read_bytes())
    position = 12  # after "RIFF", size, "WAVE"
    while position + 8 <= len(data):
        chunk_id = bytes(data[position : position + 4])
        (size,) = struct.unpack_from("<I", data, position + 4)
        if chunk_id == b"PEAK":
            data[position + 12 : position + 16] = bytes(4)  # after the version field
            path.write_bytes(bytes(data))
            return
        position += 8 + size + (size & 1)


def write(path: Path, audio: np.ndarray, sample_rate: int, subtype: str) -> None:
    """Write a WAV file with a deterministic byte content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio, sample_rate, subtype=subtype, format="WAV")
    if subtype in {"FLOAT", "DOUBLE"}:
        zero_peak_timestamp(path)


def main() -> None:
    """Delete and rebuild OUT_DIR, then print what it holds."""
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    for sample in SAMPLES:
        write(OUT_DIR / sample.name, render(sample), sample.sample_rate, sample.subtype)

    dither = np.random.default_rng(13).integers(-1, 2, 16_000) / 32_768
    write(OUT_DIR / NEAR_SILENCE_NAME, dither, 16_000, "PCM_16")

    header = (OUT_DIR / SAMPLES[0].name).read_bytes()[:BROKEN_BYTES]
    (OUT_DIR / BROKEN_NAME).write_bytes(header)  # broken on purpose

    total = 0
    for path in sorted(p for p in OUT_DIR.rglob("*") if p.is_file()):
        size = path.stat().st_size
        total += size
        name = str(path.relative_to(OUT_DIR))
        try:
            info = soundfile.info(path)
        except soundfile.LibsndfileError as error:
            print(f"{name:45} {size:>7} B  unreadable ({error})")
            continue
        print(
            f"{name:45} {size:>7} B  {info.samplerate:>5} Hz  {info.channels} ch  "
            f"{info.subtype:7} {info.duration:.2f} s"
        )
    print(f"total {total} B in {OUT_DIR}")


if __name__ == "__main__":
    main()
