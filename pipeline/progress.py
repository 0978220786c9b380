"""Progress of a run, on any runner: each group records what it has done in a small file in
staging, and the launcher adds them up and reports.

A file per group works wherever the workers run (threads, local processes, Dask workers, a
cluster), since they all write the staging directory anyway; a retried group overwrites its own
file, so nothing is counted twice.
"""

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from apache_beam.io.filesystems import FileSystems

from pipeline.storage import write_atomically

PROGRESS_DIR = "_progress"
# How often a group records its counts: cheap locally; each is a write on a bucket.
RECORD_INTERVAL_S = {"local": 1.0, "bucket": 10.0}
# How often the launcher reports: a terminal line redrawn, or a log line when not a terminal.
REPORT_INTERVAL_S = {"terminal": 2.0, "log": 30.0}


class ProgressRecorder:
    """A group's files done and errors so far, written at most every RECORD_INTERVAL_S."""

    def __init__(self, staging: str, group: str):
        self._path = FileSystems.join(staging, PROGRESS_DIR, f"group-{group}.json")
        is_local = FileSystems.get_scheme(staging) is None
        self._interval = RECORD_INTERVAL_S["local" if is_local else "bucket"]
        self._written_at = time.monotonic()

    def update(self, files: int, errors: int, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self._written_at >= self._interval:
            write_atomically(self._path, json.dumps({"files": files, "errors": errors}).encode())
            self._written_at = now


def read_progress(staging: str) -> tuple[int, int]:
    """(files done, errors) of the run so far, over every group that has recorded any."""
    pattern = FileSystems.join(staging, PROGRESS_DIR, "group-*.json")
    files = errors = 0
    for match in FileSystems.match([pattern])[0].metadata_list:
        try:
            with FileSystems.open(match.path) as file:
                counts = json.load(file)
        except FileNotFoundError:
            continue  # being renamed on a bucket: counted at the next report
        files += counts["files"]
        errors += counts["errors"]
    return files, errors


def format_progress(
    files: int, total: int, errors: int, elapsed_s: float, exact: bool = True
) -> str:
    """One progress line; `exact` False when the total is estimated (a text manifest's size)."""
    rate = files / elapsed_s if elapsed_s > 0 else 0.0
    left = max(total - files, 0)
    time_left = f"about {format_duration(left / rate)} left" if rate > 0 else "starting"
    of = f"{total:,}" if exact else f"about {total:,}"
    return (
        f"{files:,} of {of} files ({min(files / max(total, 1), 1):.0%}), {rate:,.1f} files/s,"
        f" {errors:,} errors, {time_left}"
    )


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ProgressReporter:
    """Reports the run's progress on `stream` while it runs: on a terminal one line redrawn every
    2 s, otherwise a log line every 30 s. Use as a context manager around the job."""

    def __init__(
        self,
        total: int,
        read: Callable[[], tuple[int, int]],
        stream: TextIO | None = None,
        exact: bool = True,
    ):
        self._total = total
        self._exact = exact
        self._read = read
        self._stream = stream or sys.stderr
        self._terminal = self._stream.isatty()
        self._interval = REPORT_INTERVAL_S["terminal" if self._terminal else "log"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> "ProgressReporter":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        if self._terminal:
            self._stream.write("\r\x1b[K")  # the summary replaces the progress line
            self._stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            files, errors = self._read()
            elapsed_s = time.monotonic() - self._started
            line = format_progress(files, self._total, errors, elapsed_s, self._exact)
            if self._terminal:
                self._stream.write(f"\r\x1b[K{line}")
            else:
                self._stream.write(f"yesno-label: {line}\n")
            self._stream.flush()
