"""Pure audio functions: decode any soundfile-readable bytes into the model's 1 s windows.

Shared by the labelling pipeline and by evaluation, so that both see a recording the same way.
"""

import io
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr

from model.contract import CLIP_SAMPLES, SAMPLE_RATE

WINDOW_HOP = CLIP_SAMPLES // 2  # 0.5 s between the starts of consecutive windows


class AudioError(ValueError):
    """A recording that cannot be labelled; `kind` is a short stable tag for counting errors."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32 [frames, channels]
    sample_rate: int

    @property
    def channels(self) -> int:
        return self.samples.shape[1]

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def decode(data: bytes) -> DecodedAudio:
    """Decode a whole audio file (WAV, or any container libsndfile reads) to float32 frames."""
    if not data:
        raise AudioError("empty_file", "the file has 0 bytes")
    try:
        samples, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise AudioError("unreadable_audio", f"not a readable audio file ({error})") from error
    if samples.shape[0] == 0:
        raise AudioError("no_samples", "the file holds no audio frames")
    if not np.isfinite(samples).all():
        raise AudioError("non_finite_samples", "the audio holds NaN or infinite samples")
    return DecodedAudio(samples=samples, sample_rate=int(sample_rate))


def to_model_rate(audio: DecodedAudio) -> np.ndarray:
    """Mono float32 at 16 kHz: channels averaged, resampled with soxr's anti-aliasing filter."""
    mono = audio.samples.mean(axis=1, dtype=np.float32)
    if audio.sample_rate != SAMPLE_RATE:
        mono = soxr.resample(mono, audio.sample_rate, SAMPLE_RATE, quality="HQ")
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


def split_windows(mono: np.ndarray) -> np.ndarray:
    """Cut 16 kHz audio into 1 s windows [n, CLIP_SAMPLES] that together cover every sample.

    Shorter than 1 s: one window, zero-padded evenly on both sides. Longer: windows every
    0.5 s, the last one aligned to the end, so no part of the recording goes unscored.
    """
    length = len(mono)
    if length <= CLIP_SAMPLES:
        before = (CLIP_SAMPLES - length) // 2
        padded = np.zeros(CLIP_SAMPLES, np.float32)
        padded[before : before + length] = mono
        return padded[np.newaxis]
    last_start = length - CLIP_SAMPLES
    starts = [*range(0, last_start, WINDOW_HOP), last_start]
    return np.stack([mono[start : start + CLIP_SAMPLES] for start in starts]).astype(np.float32)
