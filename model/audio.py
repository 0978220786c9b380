"""Pure audio functions: read any soundfile-readable recording into the model's 1 s windows.

Shared by the labelling pipeline and by evaluation, so that both see a recording the same way.
"""

import contextlib
import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile
import soxr
from numpy.lib.stride_tricks import sliding_window_view

from model.contract import CLIP_SAMPLES, SAMPLE_RATE

WINDOW_HOP = CLIP_SAMPLES // 2  # 0.5 s between the starts of consecutive windows
EDGE_PAD = WINDOW_HOP  # silence read before and after a recording longer than a window
BLOCK_FRAMES = 65_536  # frames decoded at a time: memory follows the output, not the input
DEFAULT_MAX_DURATION_S = 86_400.0  # 24 h; a file is decoded and scored as a stream of blocks
# Files up to this size are read whole and, if plain 16-bit PCM WAV, parsed with numpy: most
# recordings to label are short, and libsndfile's per-file set-up costs more than the samples.
FAST_WAV_MAX_BYTES = 256 * 1024
# An MP3 that decodes to less than this share of the frames its header declares, less one MPEG
# frame, was cut short (RecordingStream). Loose, as a header without a frame count (VBR without
# a Xing header) only lets the decoder estimate the length from the file's size.
MP3_COMPLETE_SHARE = 0.9
MP3_FRAME_SAMPLES = 1_152
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


class RecordingStream:
    """A recording opened for decoding block by block, so a file of any length costs the memory
    of a block: `blocks()` yields mono float32 at 16 kHz in [-1, 1]; once they are all read,
    `frames` and `duration_s` count what the file really held.

    Channels are averaged; resampling uses soxr's high-quality anti-aliasing filter, as one
    stream, so the blocks join up exactly. The file is read until its data really ends, so a
    header that claims more frames than the file holds costs nothing, and a recording longer
    than `max_duration_s` is refused before decoding. A short plain 16-bit PCM WAV is parsed
    with numpy (`parse_pcm16_wav`), with the same result; anything else is decoded by
    libsndfile, from the path itself when there is one. Every failure is an AudioError.
    """

    def __init__(self, source: BinaryIO | str, max_duration_s: float = DEFAULT_MAX_DURATION_S):
        self.frames = 0
        self._file: soundfile.SoundFile | None = None
        self._parsed: np.ndarray | None = None
        size = _size(source)
        if size == 0:
            raise AudioError("empty_file", "the file has 0 bytes")
        with _audio_errors():
            parsed = parse_pcm16_wav(_read_all(source)) if size <= FAST_WAV_MAX_BYTES else None
            if parsed is not None:
                self._parsed, self.sample_rate = parsed
                self.channels = self._parsed.shape[1]
                _check_duration(len(self._parsed), self.sample_rate, max_duration_s)
            else:
                self._file = soundfile.SoundFile(source)
                self.sample_rate, self.channels = self._file.samplerate, self._file.channels
                _check_duration(self._file.frames, self.sample_rate, max_duration_s)

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    def blocks(self) -> Iterator[np.ndarray]:
        """The recording as consecutive 16 kHz mono blocks; AudioError("no_samples") when the
        file holds no frames at all."""
        resampler = None if self.sample_rate == SAMPLE_RATE else _resampler(self.sample_rate)
        with _audio_errors():
            for block, last in self._file_blocks():
                self.frames += len(block)
                mono = _to_mono(block)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono, last=last)
                yield np.clip(mono, -1.0, 1.0)
        if self.frames == 0:
            raise AudioError("no_samples", "the file holds no audio frames")
        self._check_complete()

    def _check_complete(self) -> None:
        """An MP3 whose decoded audio falls well short of the length its header declares was
        cut (a download or copy that stopped): an error, not a label of part of it. Other
        formats: libsndfile fails a cut FLAC or OGG itself, and a WAV header that claims more
        than the file holds is a common writer's bug, not damage."""
        if self._file is None or self._file.format != "MP3":
            return
        declared = self._file.frames
        if self.frames < MP3_COMPLETE_SHARE * declared - MP3_FRAME_SAMPLES:
            raise AudioError(
                "unreadable_audio",
                f"a truncated MP3: its header declares {declared} frames, it holds {self.frames}",
            )

    def _file_blocks(self) -> Iterator[tuple[np.ndarray, bool]]:
        """(frames [n, channels], whether it is the last block) of the file."""
        if self._parsed is not None:
            yield self._parsed, True
            return
        # Integer PCM decodes to finite floats by construction; other encodings are checked.
        may_be_non_finite = not self._file.subtype.startswith("PCM_")
        while True:
            block = self._file.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
            if may_be_non_finite and not np.isfinite(block).all():
                raise AudioError("non_finite_samples", "the audio holds NaN or infinite samples")
            last = len(block) < BLOCK_FRAMES  # libsndfile reads short only where the data ends
            yield block, last
            if last:
                return

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> "RecordingStream":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@contextlib.contextmanager
def _audio_errors() -> Iterator[None]:
    """What a decoder raises, as AudioError("unreadable_audio") in libsndfile's own words."""
    try:
        yield
    except AudioError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        reason = getattr(error, "error_string", error)  # libsndfile's words, without the file
        raise AudioError("unreadable_audio", f"not a readable audio file ({reason})") from error


def read_recording(
    source: BinaryIO | str, max_duration_s: float = DEFAULT_MAX_DURATION_S
) -> Recording:
    """A whole recording decoded at once (RecordingStream): for clips and evaluation sets."""
    with RecordingStream(source, max_duration_s) as stream:
        mono = np.concatenate(list(stream.blocks()))
    return Recording(mono, stream.sample_rate, stream.channels, stream.duration_s)


def read_window(source: BinaryIO | str, start_s: float, seconds: float) -> np.ndarray:
    """`seconds` of a recording from `start_s`, mono at 16 kHz in [-1, 1], read without
    decoding what comes before it: to listen again to one window of a long file."""
    with _audio_errors(), soundfile.SoundFile(source) as file:
        file.seek(min(round(start_s * file.samplerate), max(file.frames - 1, 0)))
        mono = _to_mono(file.read(round(seconds * file.samplerate), "float32", always_2d=True))
        if file.samplerate != SAMPLE_RATE:
            mono = _resampler(file.samplerate).resample_chunk(mono, last=True)
    return np.clip(mono, -1.0, 1.0)


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
            # The rate is signed, as libsndfile reads it: a rate of 2**31 or more is refused.
            encoding, channels, sample_rate, _, block_align, bits = struct.unpack_from(
                "<HHiIHH", data, body
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


def pad_to_clip(mono: np.ndarray) -> np.ndarray:
    """A clip of at most CLIP_SAMPLES zero-padded evenly on both sides to exactly CLIP_SAMPLES.

    Training and the pipeline share this rule, so a short recording looks the same to both."""
    before = (CLIP_SAMPLES - len(mono)) // 2
    padded = np.zeros(CLIP_SAMPLES, np.float32)
    padded[before : before + len(mono)] = mono
    return padded


@dataclass(frozen=True)
class WindowRun:
    """`count` consecutive windows, WINDOW_HOP apart, held once as the samples they span
    (CLIP_SAMPLES + WINDOW_HOP * (count - 1)): half the memory of the windows, and what
    `model.serving.KeywordModel.predict_run` scores with each STFT frame computed once."""

    samples: np.ndarray  # float32, 16 kHz

    @property
    def count(self) -> int:
        return max(0, (len(self.samples) - CLIP_SAMPLES) // WINDOW_HOP + 1)

    def windows(self) -> np.ndarray:
        """The windows [count, CLIP_SAMPLES], as a view of the samples."""
        if self.count == 0:
            return np.zeros((0, CLIP_SAMPLES), np.float32)
        if self.count == 1:  # most recordings to label: no strided view to build
            return self.samples[np.newaxis, :CLIP_SAMPLES]
        return sliding_window_view(self.samples, CLIP_SAMPLES)[::WINDOW_HOP]


def join_runs(runs: list[WindowRun]) -> WindowRun:
    """One run of consecutive runs, each starting WINDOW_HOP after the last window of the one
    before (as WindowCutter.add gives them for one recording)."""
    overlap = CLIP_SAMPLES - WINDOW_HOP
    parts = [runs[0].samples, *(run.samples[overlap:] for run in runs[1:])]
    return WindowRun(np.concatenate(parts) if len(parts) > 1 else parts[0])


class WindowCutter:
    """Cuts 16 kHz audio, given block by block, into the model's 1 s windows, which together
    cover every sample. A recording longer than a window is read with EDGE_PAD of silence
    (zeros) before and after it, so that a word said at its very start or end lies near the
    middle of some window, as words do in training: windows every WINDOW_HOP from EDGE_PAD
    before its start, the last one aligned to EDGE_PAD after its end. A recording of at most
    1 s is one window zero-padded evenly on both sides. Only the samples that later windows
    need are kept, so memory does not grow with the recording.
    """

    def __init__(self) -> None:
        self._buffer = np.zeros(EDGE_PAD, np.float32)
        self._buffer_start = -EDGE_PAD  # recording sample position of self._buffer[0]
        self._next_start = -EDGE_PAD
        self.length = 0  # samples given so far

    def add(self, mono: np.ndarray) -> tuple[WindowRun, np.ndarray]:
        """(the run of windows this block completes, their start samples [n], negative before
        the recording's start); the runs of consecutive blocks and finish()'s first run join up
        (join_runs)."""
        self._buffer = np.concatenate([self._buffer, mono.astype(np.float32, copy=False)])
        self.length += len(mono)
        if self.length <= CLIP_SAMPLES:  # perhaps a short recording: its one window comes last
            return _no_windows()
        return self._cut(end=self.length)

    def finish(self) -> list[tuple[WindowRun, np.ndarray]]:
        """The windows the end completes, with their start samples: the rest of the windows
        every WINDOW_HOP (a run, perhaps empty), then the last window, aligned to the end (or a
        short recording's only one)."""
        if self.length <= CLIP_SAMPLES:
            only = WindowRun(pad_to_clip(self._buffer[EDGE_PAD:]))
            return [_no_windows(), (only, np.zeros(1, np.int64))]
        self._buffer = np.concatenate([self._buffer, np.zeros(EDGE_PAD, np.float32)])
        end = self.length + EDGE_PAD
        last_start = end - CLIP_SAMPLES
        return [self._cut(end), (self._run(last_start, 1), np.array([last_start]))]

    def _cut(self, end: int) -> tuple[WindowRun, np.ndarray]:
        """The run of the next windows that end before sample `end` (a window is cut only when
        audio follows it: the one ending at the very end is finish()'s aligned one)."""
        count = max(0, -(-(end - CLIP_SAMPLES - self._next_start) // WINDOW_HOP))
        starts = self._next_start + WINDOW_HOP * np.arange(count)
        run = self._run(self._next_start, count)
        self._next_start += WINDOW_HOP * count
        keep_from = min(self._next_start, end - CLIP_SAMPLES)
        self._buffer = self._buffer[keep_from - self._buffer_start :]
        self._buffer_start = keep_from
        return run, starts

    def _run(self, start: int, count: int) -> WindowRun:
        """The run of `count` windows from sample `start` (a view of the buffer, which is
        replaced, never written, by later blocks)."""
        offset = start - self._buffer_start
        length = CLIP_SAMPLES + WINDOW_HOP * (count - 1) if count else 0
        return WindowRun(self._buffer[offset : offset + length])


def _no_windows() -> tuple[WindowRun, np.ndarray]:
    return WindowRun(np.zeros(0, np.float32)), np.zeros(0, np.int64)


def split_windows(mono: np.ndarray) -> np.ndarray:
    """All the windows of 16 kHz audio held whole [n, CLIP_SAMPLES] (WindowCutter's)."""
    cutter = WindowCutter()
    pieces = [cutter.add(mono), *cutter.finish()]
    return np.concatenate([run.windows() for run, _ in pieces])


def window_starts_s(windows: int, duration_s: float) -> np.ndarray:
    """Start (s) of each window WindowCutter cuts from a recording of `duration_s` that gave
    `windows` windows: every WINDOW_HOP from EDGE_PAD before the start, the last aligned to
    EDGE_PAD after the end (for matching windows to times without the audio)."""
    if windows == 1:
        return np.zeros(1)
    starts = (np.arange(windows) * WINDOW_HOP - EDGE_PAD) / SAMPLE_RATE
    starts[-1] = duration_s + (EDGE_PAD - CLIP_SAMPLES) / SAMPLE_RATE
    return starts


def window_spans_s(starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) in seconds of the audio each window holds, for windows at `starts` of a
    recording of `length` samples at 16 kHz: a padded window holds the recording's part of it."""
    ends = np.minimum(starts + CLIP_SAMPLES, length)
    return np.maximum(starts, 0) / SAMPLE_RATE, ends / SAMPLE_RATE
