"""Cut each input file into model windows as it is decoded; a failure becomes an error, not a
loss.

Plain functions over Beam's FileSystems, so they read local paths, gs:// and s3:// alike.
"""

import contextlib
import os
import stat
from collections.abc import Iterator
from concurrent.futures import Future

import numpy as np
from apache_beam.io.filesystems import FileSystems

from model.audio import (
    AudioError,
    RecordingStream,
    WindowCutter,
    WindowRun,
    join_runs,
    window_spans_s,
)
from pipeline.labels import READ_FAILED, RecordingInfo
from pipeline.retries import is_transient
from pipeline.storage import open_input


def check_local_file(path: str) -> None:
    """Refuse what cannot be read as a file before opening it (opening a FIFO would hang)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as error:
        kind = "a broken symlink" if os.path.islink(path) else "no such file"
        raise AudioError("unreadable_file", kind) from error
    if stat.S_ISDIR(mode):
        raise AudioError("not_a_file", "a directory, not a file")
    if not stat.S_ISREG(mode):
        raise AudioError("not_a_file", "not a regular file (a device, socket or pipe)")
    if not os.access(path, os.R_OK):
        raise AudioError("unreadable_file", "permission denied")


class WindowReader:
    """One file's windows, cut block by block as it is decoded, so memory does not follow its
    length. After `runs()` ends, `info` says what the file held, or why it failed (any
    failure, at the start or halfway, is the file's error, never the job's: `read_failed` when
    its bytes could not be fetched after the retries, for a reason that may pass), and
    `spans_s()` where each window lies."""

    def __init__(
        self,
        path: str,
        max_duration_s: float,
        run_windows: int = 1,
        fetched: Future | None = None,
    ):
        self.path = path
        self._fetched = fetched  # the opened bucket object, being fetched (storage.fetch_ahead)
        self._max_duration_s = max_duration_s
        self._run_windows = run_windows
        self.info: RecordingInfo | None = None
        self._starts: list[np.ndarray] = []
        self._length = 0

    def runs(self) -> Iterator[WindowRun]:
        """The file's windows in order, as runs of at least `run_windows` consecutive windows
        (joined from the runs that decoded blocks complete), but for the last run of each
        kind: the windows every WINDOW_HOP, and the last window, aligned to the end."""
        try:
            with contextlib.ExitStack() as stack:
                stream = stack.enter_context(self._open(stack))
                cutter = WindowCutter()
                held: list[WindowRun] = []
                held_windows = 0
                for block in stream.blocks():
                    run, starts = cutter.add(block)
                    if run.count:
                        self._starts.append(starts)
                        held.append(run)
                        held_windows += run.count
                    if held_windows >= self._run_windows:
                        yield join_runs(held)
                        held, held_windows = [], 0
                (rest, rest_starts), (last, last_starts) = cutter.finish()
                if rest.count:
                    self._starts.append(rest_starts)
                    held.append(rest)
                if held:
                    yield join_runs(held)
                self._starts.append(last_starts)
                yield last
                self._length = cutter.length
        except AudioError as error:
            self.info = RecordingInfo(self.path, error=str(error))
            return
        except Exception as error:  # noqa: BLE001 - whatever a filesystem or decoder raises is a row
            kind = READ_FAILED if is_transient(error) else "unreadable_file"
            message = f"{kind}: {type(error).__name__}: {error}"
            self.info = RecordingInfo(self.path, error=message)
            return
        self.info = RecordingInfo(
            self.path,
            duration_s=stream.duration_s,
            sample_rate=stream.sample_rate,
            channels=stream.channels,
        )

    def spans_s(self) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) in seconds of each window's audio, once the file is read."""
        return window_spans_s(np.concatenate(self._starts), self._length)

    def _open(self, stack: contextlib.ExitStack) -> RecordingStream:
        if FileSystems.get_scheme(self.path) is None:
            check_local_file(self.path)
            return RecordingStream(self.path, self._max_duration_s)
        opened = self._fetched.result() if self._fetched is not None else open_input(self.path)
        file = stack.enter_context(opened)
        return RecordingStream(file, self._max_duration_s)
