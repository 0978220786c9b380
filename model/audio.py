"""Pure audio functions: read any soundfile-readable recording into the model's 1 s windows.

Shared by the labelling pipeline and by evaluation, so that both see a recording the same way.
"""

import io
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile
import soxr

from model.contract import CLIP_SAMPLES, SAMPLE_RATE

WINDOW_HOP = CLIP_SAMPLES // 2  # 0.5 s between the starts of consecutive windows
BLOCK_FRAMES = 65_536  # frames decoded at a time: memory follows the output, not the input
DEFAULT_MAX_DURATION_S = 1_200.0  # 20 min: at most 2,400 windows, about 150 MB of windows
# Files up to this size are read whole and, if plain 16-bit PCM WAV, parsed with numpy: most
# recordings to label are short, and libsndfile's per-file set-up costs more than the samples.
FAST_WAV_MAX_BYTES = 256 * 1024
WAVE_FORMAT_PCM = 1


class AudioError(ValueError):
    """A recording that cannot be labelled; `kind` is a short stable tag for counting errors."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True)
class Recording:
    mono: np.ndarray  # float32 at SAMPLE_RATE, in [-1, 1]
    sample_rate: int  # of the file, before resampling
    channels: int
    duration_s: float


def read_recording(
    source: BinaryIO | str, max_duration_s: float = DEFAULT_MAX_DURATION_S
) -> Recording:
    """Decode a local path or a seekable file: downmix to mono and resample to 16 kHz, by blocks.

    Channels are averaged; resampling uses soxr's high-quality anti-aliasing filter. The file is
    read in blocks until its data really ends, so a header that claims more frames than the file
    holds costs nothing, and a recording longer than `max_duration_s` is refused before decoding.
    A short plain 16-bit PCM WAV is parsed with numpy (`parse_pcm16_wav`), with the same result;
    anything else is decoded by libsndfile, from the path itself when there is one.
    """
    size = _size(source)
    if size == 0:
        raise AudioError("empty_file", "the file has 0 bytes")
    try:
        parsed = parse_pcm16_wav(_read_all(source)) if size <= FAST_WAV_MAX_BYTES else None
        if parsed is not None:
            samples, sample_rate = parsed
            _check_duration(len(samples), sample_rate, max_duration_s)
            return _recording(samples, sample_rate)
        with soundfile.SoundFile(source) as file:
            sample_rate, channels = file.samplerate, file.channels
            _check_duration(file.frames, sample_rate, max_duration_s)
            mono, frames = _decode_mono(file)
    except AudioError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        reason = getattr(error, "error_string", error)  # libsndfile's words, without the file
        raise AudioError("unreadable_audio", f"not a readable audio file ({reason})") from error
    if frames == 0:
        raise AudioError("no_samples", "the file holds no audio frames")
    return Recording(mono, sample_rate, channels, frames / sample_rate)


def parse_pcm16_wav(data: bytes) -> tuple[np.ndarray, int] | None:
    """(samples float32 [frames, channels] in [-1, 1), sample rate) of a whole, well-formed
    16-bit PCM RIFF/WAVE file of fewer than BLOCK_FRAMES frames; None for anything else.

    Samples are scaled by 1/32768 as libsndfile does, so both readers give identical floats. Any
    doubt (another encoding, a chunk running past the end, a partial frame) returns None and
    leaves the file to libsndfile, which knows every variant and explains its errors.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset, channels, sample_rate = 12, 0, 0
    while offset + 8 <= len(data):
        chunk_id, chunk_size = struct.unpack_from("<4sI", data, offset)
        body = offset + 8
        if body + chunk_size > len(data):
            return None
        if chunk_id == b"fmt " and chunk_size >= 16:
            encoding, channels, sample_rate, _, block_align, bits = struct.unpack_from(
                "<HHIIHH", data, body
            )
            if encoding != WAVE_FORMAT_PCM or bits != 16 or block_align != 2 * channels:
                return None
        elif chunk_id == b"data":
            if channels < 1 or sample_rate < 1 or chunk_size % (2 * channels):
                return None
            frames = chunk_size // (2 * channels)
            if not 0 < frames < BLOCK_FRAMES:
                return None
            samples = np.frombuffer(data, "<i2", frames * channels, body).reshape(frames, channels)
            return samples.astype(np.float32) * np.float32(1 / 32768), sample_rate
        offset = body + chunk_size + (chunk_size & 1)  # chunks are padded to even sizes
    return None


def _read_all(source: BinaryIO | str) -> bytes:
    if isinstance(source, str):
        with open(source, "rb") as file:
            return file.read()
    data = source.read()
    source.seek(0)
    return data


def _check_duration(frames: int, sample_rate: int, max_duration_s: float) -> None:
    if frames / sample_rate > max_duration_s:
        raise AudioError(
            "too_long",
            f"the header says {frames / sample_rate:.0f} s; the cap is "
            f"{max_duration_s:.0f} s per file (--max_duration_s)",
        )


def _recording(samples: np.ndarray, sample_rate: int) -> Recording:
    """A Recording from all of a file's samples [frames, channels], decoded in one block."""
    channels = samples.shape[1]
    mono = _to_mono(samples)
    if sample_rate != SAMPLE_RATE:
        mono = _resampler(sample_rate).resample_chunk(mono, last=True)
    return Recording(np.clip(mono, -1.0, 1.0), sample_rate, channels, len(samples) / sample_rate)


def _to_mono(block: np.ndarray) -> np.ndarray:
    return block[:, 0].copy() if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)


def _resampler(sample_rate: int) -> soxr.ResampleStream:
    return soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")


def _size(source: BinaryIO | str) -> int:
    if isinstance(source, str):
        return os.path.getsize(source)
    size = source.seek(0, io.SEEK_END)
    source.seek(0)
    return size


def _decode_mono(file: soundfile.SoundFile) -> tuple[np.ndarray, int]:
    """All frames as mono float32 at SAMPLE_RATE; a file shorter than a block is one read."""
    resampler = None if file.samplerate == SAMPLE_RATE else _resampler(file.samplerate)
    # Integer PCM decodes to finite floats by construction; other encodings are checked.
    may_be_non_finite = not file.subtype.startswith("PCM_")
    pieces, frames = [], 0
    while True:
        block = file.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
        last = len(block) < BLOCK_FRAMES  # libsndfile reads short only where the data ends
        if may_be_non_finite and not np.isfinite(block).all():
            raise AudioError("non_finite_samples", "the audio holds NaN or infinite samples")
        frames += len(block)
        mono = _to_mono(block)
        pieces.append(mono if resampler is None else resampler.resample_chunk(mono, last=last))
        if last:
            break
    return np.clip(np.concatenate(pieces), -1.0, 1.0), frames


def pad_to_clip(mono: np.ndarray) -> np.ndarray:
    """A clip of at most CLIP_SAMPLES zero-padded evenly on both sides to exactly CLIP_SAMPLES.

    Training and the pipeline share this rule, so a short recording looks the same to both."""
    before = (CLIP_SAMPLES - len(mono)) // 2
    padded = np.zeros(CLIP_SAMPLES, np.float32)
    padded[before : before + len(mono)] = mono
    return padded


def split_windows(mono: np.ndarray) -> np.ndarray:
    """Cut 16 kHz audio into 1 s windows [n, CLIP_SAMPLES] that together cover every sample.

    Shorter than 1 s: one window, zero-padded evenly on both sides. Longer: windows every
    0.5 s, the last one aligned to the end, so no part of the recording goes unscored.
    """
    length = len(mono)
    if length <= CLIP_SAMPLES:
        return pad_to_clip(mono)[np.newaxis]
    last_start = length - CLIP_SAMPLES
    starts = [*range(0, last_start, WINDOW_HOP), last_start]
    return np.stack([mono[start : start + CLIP_SAMPLES] for start in starts]).astype(np.float32)
