"""Read the Speech Commands subset into numpy arrays: speech clips by split, and silence clips.

Pure functions (numpy + soundfile only), so training, evaluation and tests share one loader.

Splits: speech clips use the manifest's speaker-disjoint `train` / `val` / `test` splits. The six
background-noise recordings are not assigned to speakers, so each one is split by TIME instead:
the first 80% of every file is `train`, the next 10% `val`, the last 10% `test`
(`NOISE_SPLIT_FRACTIONS`). Silence clips and noise augmentation for a split only ever read that
split's portion, so test silence never overlaps audio seen in training.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from model.audio import pad_to_clip
from model.contract import CLIP_SAMPLES, LABELS, SAMPLE_RATE

MANIFEST_FILE = "manifest.csv"
DEFAULT_READ_SPEECH = Path("../shared/data/read_speech")
SPEECH_SPLITS = ("train", "val", "test")
NOISE_SPLIT = "noise"
NOISE_SPLIT_FRACTIONS: dict[str, tuple[float, float]] = {
    "train": (0.0, 0.8),
    "val": (0.8, 0.9),
    "test": (0.9, 1.0),
}
SILENCE_LABEL = LABELS.index("silence")
# Share of silence clips that are near-silent (digital zeros or faint hiss) rather than a noise
# recording, and the loudness ranges (RMS, full scale = 1) the two kinds are drawn from.
NEAR_SILENCE_FRACTION = 0.15
NOISE_RMS_RANGE = (1e-3, 0.15)
NEAR_SILENCE_RMS_RANGE = (1e-5, 1e-3)
# Lengths (samples) of the short recordings that `shorten` imitates: 0.25 s to 0.95 s.
SHORT_RECORDING_SAMPLES = (4_000, 15_200)


@dataclass(frozen=True)
class ManifestRow:
    path: str
    word: str
    label: str
    speaker: str
    split: str


def read_manifest(data_dir: str | Path) -> list[ManifestRow]:
    """All rows of `manifest.csv`, in file order."""
    with open(Path(data_dir) / MANIFEST_FILE, newline="") as handle:
        return [ManifestRow(**row) for row in csv.DictReader(handle)]


def read_audio(path: str | Path) -> np.ndarray:
    """A whole mono 16 kHz file as float32 in [-1, 1]."""
    audio, sample_rate = sf.read(str(path), dtype="float32", always_2d=False)
    if sample_rate != SAMPLE_RATE or audio.ndim != 1:
        raise ValueError(f"{path}: expected mono {SAMPLE_RATE} Hz, got {sample_rate} Hz")
    return audio


def fit_to_clip(audio: np.ndarray) -> np.ndarray:
    """Exactly CLIP_SAMPLES samples: zero-padded evenly like the pipeline if short, cropped if
    long."""
    return pad_to_clip(audio[:CLIP_SAMPLES])


def load_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The speech clips of one manifest split (`train`, `val` or `test`), in manifest order.

    Returns `(waveforms, labels, paths)`: waveforms float32 [n, 16000] in [-1, 1] (short clips
    zero-padded evenly on both sides), labels int64 [n] indexing LABELS (yes=0, no=1,
    unknown=2, and silence=3 for the `_silence_` clips that val and test hold), and paths
    relative to `data_dir`.
    """
    if split not in SPEECH_SPLITS:
        raise ValueError(f"split must be one of {SPEECH_SPLITS}, got {split!r}")
    rows = [row for row in read_manifest(data_dir) if row.split == split]
    waveforms = np.stack([fit_to_clip(read_audio(Path(data_dir) / row.path)) for row in rows])
    labels = np.array([LABELS.index(row.label) for row in rows], np.int64)
    return waveforms, labels, [row.path for row in rows]


def load_noise(data_dir: str | Path, split: str) -> list[np.ndarray]:
    """This split's time portion of each background-noise recording (see module docstring)."""
    start, end = NOISE_SPLIT_FRACTIONS[split]
    segments = []
    for row in read_manifest(data_dir):
        if row.split == NOISE_SPLIT:
            audio = read_audio(Path(data_dir) / row.path)
            segments.append(audio[int(start * len(audio)) : int(end * len(audio))])
    return segments


def random_noise_windows(
    noise_segments: list[np.ndarray], n: int, rng: np.random.Generator
) -> np.ndarray:
    """n random 1 s windows, each from a uniformly chosen segment, at the recording's own level."""
    windows = np.empty((n, CLIP_SAMPLES), np.float32)
    for i in range(n):
        segment = noise_segments[rng.integers(len(noise_segments))]
        start = rng.integers(len(segment) - CLIP_SAMPLES + 1)
        windows[i] = segment[start : start + CLIP_SAMPLES]
    return windows


def rms(waveforms: np.ndarray) -> np.ndarray:
    """Root-mean-square level of each row, shape [n, 1] for broadcasting."""
    return np.sqrt(np.mean(np.square(waveforms), axis=-1, keepdims=True))


def log_uniform(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    """n values spread evenly in log scale, since loudness is perceived logarithmically."""
    return np.exp(rng.uniform(np.log(low), np.log(high), n))


def make_silence(noise_segments: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """n silence-class clips: noise windows at random loudness, plus some near-silent ones.

    A share NEAR_SILENCE_FRACTION are near-silent: half digital zeros, half faint Gaussian hiss.
    The rest are noise-recording windows rescaled to an RMS drawn log-uniformly from
    NOISE_RMS_RANGE (the recordings' own levels differ by 100x, so they are normalised first).
    """
    n_near = round(n * NEAR_SILENCE_FRACTION)
    n_noise = n - n_near
    noise = random_noise_windows(noise_segments, n_noise, rng)
    target_rms = log_uniform(rng, *NOISE_RMS_RANGE, n_noise)[:, None]
    noise = noise * (target_rms / np.maximum(rms(noise), 1e-8))
    hiss_rms = log_uniform(rng, *NEAR_SILENCE_RMS_RANGE, n_near)[:, None]
    near = rng.standard_normal((n_near, CLIP_SAMPLES)) * hiss_rms
    near[: n_near // 2] = 0.0
    clips = np.concatenate([noise, near]).astype(np.float32)
    return np.clip(clips[rng.permutation(n)], -1.0, 1.0)


def silence_windows(data_dir: str | Path, split: str, n: int, seed: int) -> np.ndarray:
    """Deterministic silence-class clips for one split: float32 [n, 16000] in [-1, 1].

    Random 1 s windows from this split's time portion of the background-noise recordings (first
    80% of each file for `train`, next 10% `val`, last 10% `test`), rescaled to random loudness,
    plus a share of near-silent clips (zeros and faint hiss). Same arguments, same array.
    """
    return make_silence(load_noise(data_dir, split), n, np.random.default_rng(seed))


def shorten(waveforms: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each clip cut to a random length in SHORT_RECORDING_SAMPLES at a random offset, then
    zero-padded evenly back to a clip: what the pipeline makes of a recording that short."""
    shortened = np.empty_like(waveforms)
    for i, length in enumerate(rng.integers(*SHORT_RECORDING_SAMPLES, len(waveforms))):
        start = rng.integers(CLIP_SAMPLES - length + 1)
        shortened[i] = pad_to_clip(waveforms[i, start : start + length])
    return shortened


def time_shift(waveforms: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Each clip moved by up to max_shift samples either way, zero-filled, so the model does not
    rely on words being centred."""
    shifted = np.zeros_like(waveforms)
    for i, shift in enumerate(rng.integers(-max_shift, max_shift + 1, len(waveforms))):
        if shift >= 0:
            shifted[i, shift:] = waveforms[i, : CLIP_SAMPLES - shift]
        else:
            shifted[i, :shift] = waveforms[i, -shift:]
    return shifted


def change_speed(
    waveforms: np.ndarray, rng: np.random.Generator, share: float, factors: tuple[float, float]
) -> np.ndarray:
    """A random `share` of the clips played faster or slower by a factor drawn from `factors`
    (tempo and pitch together, as a shorter or longer vocal tract says the word), the 1 s
    window then centred on the word again: each speaker lends the network a few more voices."""
    changed = waveforms.copy()
    for i in np.flatnonzero(rng.random(len(waveforms)) < share):
        factor = rng.uniform(*factors)
        played = soxr.resample(waveforms[i], SAMPLE_RATE, SAMPLE_RATE / factor, quality="HQ")
        start, end = active_region(played)
        first = (start + end - CLIP_SAMPLES) // 2
        canvas = np.zeros(len(played) + 2 * CLIP_SAMPLES, np.float32)
        canvas[CLIP_SAMPLES : CLIP_SAMPLES + len(played)] = played
        changed[i] = canvas[CLIP_SAMPLES + first : 2 * CLIP_SAMPLES + first]
    return np.clip(changed, -1.0, 1.0)


def room_response(
    rng: np.random.Generator, rt60_s: float, direct_to_reverberant_db: float
) -> np.ndarray:
    """A synthetic room impulse response: the direct sound, then a tail of white noise decaying
    by 60 dB in `rt60_s` (Sabine's exponential decay), its energy `direct_to_reverberant_db`
    below the direct sound's: a talker a few metres from the microphone in a room."""
    length = max(int(rt60_s * SAMPLE_RATE), 1)
    decay = np.exp(-np.log(1000.0) * np.arange(length) / length)  # -60 dB at rt60
    tail = rng.standard_normal(length) * decay
    tail *= 10 ** (-direct_to_reverberant_db / 20) / np.sqrt(np.sum(tail**2))
    tail[0] = 1.0
    return tail


def reverberate(
    waveforms: np.ndarray,
    rng: np.random.Generator,
    share: float,
    rt60_range_s: tuple[float, float],
    direct_to_reverberant_db: tuple[float, float],
) -> np.ndarray:
    """A random `share` of the clips heard through a random synthetic room (`room_response`),
    kept at their own RMS: speech recorded far from the microphone, whose reverberant tail
    smears the word over time."""
    out = waveforms.copy()
    for i in np.flatnonzero(rng.random(len(waveforms)) < share):
        response = room_response(
            rng, rng.uniform(*rt60_range_s), rng.uniform(*direct_to_reverberant_db)
        )
        size = CLIP_SAMPLES + len(response)
        wet = np.fft.irfft(np.fft.rfft(waveforms[i], size) * np.fft.rfft(response, size), size)
        wet = wet[:CLIP_SAMPLES]
        out[i] = wet * (rms(waveforms[i]) / np.maximum(rms(wet), 1e-8))
    return np.clip(out, -1.0, 1.0)


def load_read_speech(read_speech_dir: str | Path, split: str) -> tuple[list[np.ndarray], list[str]]:
    """The whole recordings of one split of the read-speech set (sentences holding neither
    keyword), and their paths relative to `read_speech_dir`."""
    with open(Path(read_speech_dir) / MANIFEST_FILE, newline="") as handle:
        paths = [row["path"] for row in csv.DictReader(handle) if row["split"] == split]
    return [read_audio(Path(read_speech_dir) / path) for path in paths], paths


def speech_windows(
    recordings: list[np.ndarray], n: int, rng: np.random.Generator, min_level: float = 0.3
) -> np.ndarray:
    """n random 1 s windows of continuous speech, each at least `min_level` times its
    recording's RMS (so a window that falls in a long pause is drawn again)."""
    windows = np.empty((n, CLIP_SAMPLES), np.float32)
    levels = [float(rms(recording)[0]) for recording in recordings]
    filled = 0
    while filled < n:
        index = int(rng.integers(len(recordings)))
        recording = recordings[index]
        start = int(rng.integers(max(len(recording) - CLIP_SAMPLES, 0) + 1))
        window = fit_to_clip(recording[start : start + CLIP_SAMPLES])
        if rms(window)[0] >= min_level * levels[index]:
            windows[filled] = window
            filled += 1
    return windows


def active_region(clip: np.ndarray, floor_db: float = -30.0) -> tuple[int, int]:
    """(start, end) samples of the part of a clip within `floor_db` of its loudest 20 ms frame:
    where the word is. The whole clip when it is silent."""
    frame = SAMPLE_RATE // 50
    frames = clip[: len(clip) // frame * frame].reshape(-1, frame)
    energy = np.mean(np.square(frames), axis=1)
    loud = np.flatnonzero(energy >= energy.max() * 10 ** (floor_db / 10)) if energy.any() else []
    if len(loud) == 0:
        return 0, len(clip)
    return int(loud[0] * frame), int((loud[-1] + 1) * frame)


def neighbour_word(
    neighbour: np.ndarray, own_word: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The word of a neighbour clip (its active region) at 0.5-2 times the RMS of `own_word`."""
    n_start, n_end = active_region(neighbour)
    word = neighbour[n_start:n_end]
    level = log_uniform(rng, 0.5, 2.0, 1)[0] * rms(own_word)[0]
    return word * (level / max(float(rms(word)[0]), 1e-8))


def add_neighbours(
    clips: np.ndarray, neighbours: np.ndarray, rng: np.random.Generator, max_gap: int
) -> np.ndarray:
    """Each clip with the word of a neighbour clip placed just before or just after its own word
    (0 to `max_gap` samples apart), cut by the window's edge, as a 1 s window of running speech
    sees a word: the clip's own word stays whole, so its label stays true. A clip whose word
    fills the window (a noisy one, whose active region is all of it) gets nothing added."""
    out = clips.copy()
    for i, neighbour in enumerate(neighbours):
        start, end = active_region(clips[i])
        word = neighbour_word(neighbour, clips[i][start:end], rng)
        gap = int(rng.integers(max_gap + 1))
        if rng.random() < 0.5:  # before the clip's word
            place_end = start - gap
            piece = word[max(len(word) - place_end, 0) :] if place_end > 0 else word[:0]
            out[i, place_end - len(piece) : place_end] += piece
        else:
            place_start = end + gap
            piece = word[: max(CLIP_SAMPLES - place_start, 0)]
            out[i, place_start : place_start + len(piece)] += piece
    return np.clip(out, -1.0, 1.0)


def pair_words(
    clips: np.ndarray, neighbours: np.ndarray, rng: np.random.Generator, max_gap: int
) -> np.ndarray:
    """Each clip's word and a neighbour clip's word, said one after the other (either order,
    0 to `max_gap` samples apart), in one window: both whole when they fit in a second, else the
    clip's own word whole and the neighbour cut by the edge. A spoken answer puts two words in
    one window ("yes I do"), so the label stays the clip's own: the keyword is there."""
    out = np.zeros_like(clips)
    for i, neighbour in enumerate(neighbours):
        start, end = active_region(clips[i])
        own = clips[i][start:end]
        other = neighbour_word(neighbour, own, rng)
        gap = np.zeros(int(rng.integers(max_gap + 1)), np.float32)
        own_first = rng.random() < 0.5
        pair = np.concatenate([own, gap, other] if own_first else [other, gap, own])
        own_start = 0 if own_first else len(pair) - len(own)
        own_end = own_start + len(own)
        if len(pair) <= CLIP_SAMPLES:  # both words whole
            low, high = len(pair) - CLIP_SAMPLES, 0
        else:  # the own word whole, the neighbour cut by the window's edge
            low, high = max(own_end - CLIP_SAMPLES, 0), min(own_start, len(pair) - CLIP_SAMPLES)
        window_start = int(rng.integers(low, high + 1)) if high >= low else own_start
        canvas = np.zeros(len(pair) + 2 * CLIP_SAMPLES, np.float32)
        canvas[CLIP_SAMPLES : CLIP_SAMPLES + len(pair)] = pair
        out[i] = canvas[CLIP_SAMPLES + window_start : 2 * CLIP_SAMPLES + window_start]
    return np.clip(out, -1.0, 1.0)


def place_word(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 1 s clip holding the word of `audio` (its active region) at a random position; a word
    longer than a second keeps its middle second."""
    start, end = active_region(audio)
    word = audio[start:end]
    if len(word) > CLIP_SAMPLES:
        cut = (len(word) - CLIP_SAMPLES) // 2
        return word[cut : cut + CLIP_SAMPLES].astype(np.float32)
    clip = np.zeros(CLIP_SAMPLES, np.float32)
    offset = int(rng.integers(CLIP_SAMPLES - len(word) + 1))
    clip[offset : offset + len(word)] = word
    return clip
