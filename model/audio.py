"""Pure audio functions: read any soundfile-readable recording into the model's 1 s windows.

Shared by the labelling pipeline and by evaluation, so that both see a recording the same way.
"""

import io
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile
import soxr

from model.contract import CLIP_SAMPLES, SAMPLE_RATE

WINDOW_HOP = CLIP_SAMPLES // 2  # 0.5 s between the starts of consecutive windows
BLOCK_FRAMES = 65_536  # frames decoded at a time: memory follows the output, not the input
DEFAULT_MAX_DURATION_S = 1_200.0  # 20 min: at most 2,400 windows, about 150 MB of windows


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
    A path is opened by libsndfile itself, which is cheaper than reading through a Python file.
    """
    if _size(source) == 0:
        raise AudioError("empty_file", "the file has 0 bytes")
    try:
        with soundfile.SoundFile(source) as file:
            sample_rate, channels = file.samplerate, file.channels
            if file.frames / sample_rate > max_duration_s:
                raise AudioError(
                    "too_long",
                    f"the header says {file.frames / sample_rate:.0f} s; the cap is "
                    f"{max_duration_s:.0f} s per file (--max_duration_s)",
                )
            mono, frames = _decode_mono(file)
    except AudioError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        reason = getattr(error, "error_string", error)  # libsndfile's words, without the file
        raise AudioError("unreadable_audio", f"not a readable audio file ({reason})") from error
    if frames == 0:
        raise AudioError("no_samples", "the file holds no audio frames")
    return Recording(mono, sample_rate, channels, frames / sample_rate)


def _size(source: BinaryIO | str) -> int:
    if isinstance(source, str):
        return os.path.getsize(source)
    size = source.seek(0, io.SEEK_END)
    source.seek(0)
    return size


def _decode_mono(file: soundfile.SoundFile) -> tuple[np.ndarray, int]:
    """All frames as mono float32 at SAMPLE_RATE; a file shorter than a block is one read."""
    resampler = (
        None
        if file.samplerate == SAMPLE_RATE
        else soxr.ResampleStream(file.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    )
    # Integer PCM decodes to finite floats by construction; other encodings are checked.
    may_be_non_finite = not file.subtype.startswith("PCM_")
    pieces, frames = [], 0
    while True:
        block = file.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
        last = len(block) < BLOCK_FRAMES  # libsndfile reads short only where the data ends
        if may_be_non_finite and not np.isfinite(block).all():
            raise AudioError("non_finite_samples", "the audio holds NaN or infinite samples")
        frames += len(block)
        mono = block[:, 0].copy() if file.channels == 1 else block.mean(axis=1, dtype=np.float32)
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
