"""The output dataset: staged while the job runs, committed in place only when it succeeded.

Layout of --output: `labels-<run>-<group>.parquet` files and `_summary.json` (pyarrow's dataset
reader skips names that start with `_` or `.`); of --events: `events-<run>-<group>.parquet` and
its own `_summary.json`. A run writes each into a sibling staging directory,
`<output>.staging-<run>`, and only a finished run replaces them, both in one commit, so a failed
run leaves the previous datasets as they were and a rerun replaces them completely.
"""

import ctypes
import errno
import functools
import glob
import io
import json
import os
import shutil
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import retries
from pipeline.progress import PROGRESS_DIR
from pipeline.storage import is_bucket_root, write_atomically

PARQUET_PREFIX = "labels-"
EVENTS_PREFIX = "events-"
SUMMARY_FILE = "_summary.json"
REPORT_FILE = "_report.html"  # pipeline.report
INPUTS_DIR = "_inputs"  # in staging: the listing of --input (pipeline.sources)
TALLY_FILE = "_tally.json"  # in staging: the run's figures, written by the job
JOURNAL_FILE = "_commit.json"  # in staging, on buckets: written when a commit begins
AT_FDCWD = -100
RENAME_EXCHANGE = 2


def staging_dir(output_dir: str, run_id: str) -> str:
    """Beside the output; a whole bucket has no beside, so there a hidden prefix inside it."""
    if is_bucket_root(output_dir):
        return FileSystems.join(output_dir, f".staging-{run_id}")
    return f"{output_dir.rstrip('/')}.staging-{run_id}"


def run_prefix(run_id: str, name_prefix: str = PARQUET_PREFIX) -> str:
    return f"{name_prefix}{run_id}-"


def group_file(staging: str, run_id: str, group: str, name_prefix: str = PARQUET_PREFIX) -> str:
    """One file per group; the name is fixed, so a retried group overwrites its own file."""
    return FileSystems.join(staging, f"{run_prefix(run_id, name_prefix)}{group}.parquet")


def check_output_dir(output_dir: str, name_prefix: str = PARQUET_PREFIX) -> None:
    """Refuse an existing local --output that holds anything but an earlier run's output,
    since committing a run replaces that directory."""
    if FileSystems.get_scheme(output_dir) is not None or not os.path.exists(output_dir):
        return
    if not os.path.isdir(output_dir):
        raise FileExistsError(f"--output {output_dir} is a file, not a directory")
    foreign = [
        name
        for name in os.listdir(output_dir)
        if name not in (SUMMARY_FILE, REPORT_FILE)
        and not (name.startswith(name_prefix) and name.endswith(".parquet"))
    ]
    if foreign:
        raise FileExistsError(
            f"--output {output_dir} holds other files ({', '.join(sorted(foreign)[:3])}); "
            "it is replaced by each run, so give a new or earlier output directory"
        )


def write_parquet(path: str, rows: list[dict], schema: pa.Schema) -> None:
    """Write rows as one Parquet file, atomically."""
    write_atomically(path, parquet_bytes(pa.Table.from_pylist(rows, schema=schema)))


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def parquet_files(directory: str, name_prefix: str = PARQUET_PREFIX) -> list[str]:
    pattern = FileSystems.join(directory, f"{name_prefix}*.parquet")
    return sorted(match.path for match in FileSystems.match([pattern])[0].metadata_list)


def read_file_columns(path: str, columns: list[str]) -> list[dict]:
    """The rows of one Parquet file, these columns only; a column the file was written without
    (by a version before it was added) reads as None."""
    with FileSystems.open(path) as file:
        parquet = pq.ParquetFile(file)
        present = [column for column in columns if column in parquet.schema_arrow.names]
        rows = parquet.read(columns=present).to_pylist()
    missing = dict.fromkeys(column for column in columns if column not in present)
    return [row | missing for row in rows] if missing else rows


def summary_files(dataset_dir: str, summary: dict | None) -> list[str]:
    """The Parquet files of a committed dataset: those its summary lists (none without one)."""
    names = (summary or {}).get("parquet_files", [])
    return [FileSystems.join(dataset_dir, name) for name in names]


def parquet_names(directory: str, name_prefix: str = PARQUET_PREFIX) -> list[str]:
    return [os.path.basename(path) for path in parquet_files(directory, name_prefix)]


@dataclass(frozen=True)
class EventsDataset:
    """The --events dataset of a run: where it goes, where it is staged, and the run."""

    output_dir: str
    staging: str
    run_id: str

    def as_summary(self) -> dict:
        """What the per-file output's summary says of it, for `repair` and --skip_existing."""
        return {"output": self.output_dir, "staging": self.staging, "run_id": self.run_id}

    def committed_with(self, output_summary: dict | None) -> bool:
        """Whether the output of that summary was committed together with this events dataset
        as it is now."""
        named = (output_summary or {}).get("events") or {}
        present = read_summary(self.output_dir) or {}
        return named.get("output") == self.output_dir and named.get("run_id") == present.get(
            "run_id"
        )


def write_json(path: str, content: dict) -> None:
    """Write a JSON file, again after a transient failure (pipeline.retries)."""

    def write() -> None:
        with FileSystems.create(path) as file:
            file.write(json.dumps(content, indent=2).encode())

    retries.retrying("write", write)


def write_summary(staging: str, summary: dict) -> None:
    write_json(FileSystems.join(staging, SUMMARY_FILE), summary)


def delete_directory(directory: str) -> None:
    """Delete a directory and all in it, if it exists. A bucket has no directories, only a
    common name prefix: Beam deletes every object under one when the path ends with "/"."""
    if not FileSystems.get_filesystem(directory).has_dirs():
        FileSystems.delete([directory.rstrip("/") + "/"])
    elif FileSystems.exists(directory):
        FileSystems.delete([directory])


def discard(staging: str) -> None:
    delete_directory(staging)


def commit(staging: str, output_dir: str, events: EventsDataset | None = None) -> None:
    """Put the staged dataset in place of the output, and the staged events dataset in place of
    its own, both or neither.

    Local: one atomic exchange of the staging and output directories (Linux renameat2), so a
    reader sees the old or the new dataset, never a mix and never none; then the old one, now
    in staging, is deleted. Where the system cannot exchange, two renames (a crash between them
    leaves no output until the next run repairs it: `repair`). Events go first; if the output
    then fails to move, the old events are put back. A crash between the two leaves the
    output's staged summary naming events that are already in place: `repair` finishes it.
    Buckets have no rename of a prefix. The commit writes a journal in staging (the previous
    summaries' files that the new datasets do not reuse), removes the old `_summary.json`, moves
    the new files in, deletes the journal's files (never a file no summary listed), and writes
    the new `_summary.json` last, events first: an output is complete exactly when it has a
    summary, and the next run finishes a commit that was interrupted (`repair`).
    """
    for scratch in (INPUTS_DIR, PROGRESS_DIR):
        delete_directory(FileSystems.join(staging, scratch))
    tally = FileSystems.join(staging, TALLY_FILE)
    if FileSystems.exists(tally):
        FileSystems.delete([tally])
    if FileSystems.get_scheme(output_dir) is None:
        old_events = None
        if events is not None:
            old_events = _replace_local(events.staging, events.output_dir)
        try:
            old_output = _replace_local(staging, output_dir)
        except BaseException:
            if events is not None:
                _put_back_local(old_events, events.output_dir)
            raise
        for old in (old_output, old_events):
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return
    journal = {"delete": _stale_files(staging, output_dir)}
    if events is not None:
        journal["events"] = {
            **events.as_summary(),
            "delete": _stale_files(events.staging, events.output_dir),
        }
    write_json(FileSystems.join(staging, JOURNAL_FILE), journal)
    retries.retrying("commit", lambda: finish_bucket_commit(staging, output_dir))


def _replace_local(staging: str, output_dir: str) -> str | None:
    """Move a staged local dataset in place of output_dir; returns where the dataset it
    replaced now is (to delete, or to put back), None if there was none."""
    if not os.path.exists(output_dir):
        os.rename(staging, output_dir)
        return None
    if exchange_paths(staging, output_dir):
        return staging
    previous = f"{staging}.previous"
    os.rename(output_dir, previous)
    os.rename(staging, output_dir)
    return previous


def _put_back_local(old: str | None, output_dir: str) -> None:
    """Undo _replace_local: the dataset at `old` goes back to output_dir (none: it is removed)."""
    if old is None:
        shutil.rmtree(output_dir)
    elif not exchange_paths(old, output_dir):
        shutil.rmtree(output_dir)
        os.rename(old, output_dir)


def _stale_files(staging: str, output_dir: str) -> list[str]:
    """The files the output's summary lists that the staged dataset does not reuse."""
    new_names = {os.path.basename(path) for path in parquet_files(staging, "")}
    previous = read_summary(output_dir)
    return [name for name in (previous or {}).get("parquet_files", []) if name not in new_names]


def finish_bucket_commit(staging: str, output_dir: str) -> None:
    """The steps of a bucket commit after its journal is written; each may be redone. The events
    dataset moves first; once the staged summary of the output has moved, the commit is done
    and only staging is left to delete."""
    with FileSystems.open(FileSystems.join(staging, JOURNAL_FILE)) as file:
        journal = json.load(file)
    if "events" in journal:
        events = journal["events"]
        _move_bucket_dataset(events["staging"], events["output"], events["delete"])
    _move_bucket_dataset(staging, output_dir, journal["delete"])


def _move_bucket_dataset(staging: str, output_dir: str, stale: list[str]) -> None:
    if not FileSystems.exists(FileSystems.join(staging, SUMMARY_FILE)):
        delete_directory(staging)
        return
    summary = FileSystems.join(output_dir, SUMMARY_FILE)
    if FileSystems.exists(summary):
        FileSystems.delete([summary])
    staged = parquet_files(staging, "")
    report = FileSystems.join(staging, REPORT_FILE)
    if FileSystems.exists(report):
        staged.append(report)
    FileSystems.rename(staged, [FileSystems.join(output_dir, os.path.basename(p)) for p in staged])
    stale_paths = [FileSystems.join(output_dir, name) for name in stale]
    existing = [path for path in stale_paths if FileSystems.exists(path)]
    if existing:
        FileSystems.delete(existing)
    FileSystems.rename([FileSystems.join(staging, SUMMARY_FILE)], [summary])
    delete_directory(staging)


def exchange_paths(first: str, second: str) -> bool:
    """Swap two local paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where
    the system or the filesystem cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE):
        error = ctypes.get_errno()
        if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            return False
        raise OSError(error, os.strerror(error), first, None, second)
    return True


def read_summary(output_dir: str) -> dict | None:
    path = FileSystems.join(output_dir, SUMMARY_FILE)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as file:
        return json.load(file)


def repair(output_dir: str) -> None:
    """Finish or clear what killed runs left beside the output, before a new run starts.

    A bucket commit that began (its journal is in staging) is finished. Locally, an output lost
    between the two renames of the fallback commit is restored from the newest complete staged
    run, and a staged output whose events dataset is already in place is moved in too. Every
    other staging directory of this output is deleted: one run per output at a time. Call it
    for the output before its events dataset: the output's commit finishes the events' first.
    """
    if FileSystems.get_scheme(output_dir) is None:
        leftovers = sorted(glob.glob(glob.escape(output_dir.rstrip("/")) + ".staging-*"))
        complete = [
            path
            for path in leftovers
            if not path.endswith(".previous") and os.path.exists(os.path.join(path, SUMMARY_FILE))
        ]
        finishing = [path for path in complete if _events_in_place(path)]
        if finishing or (complete and not os.path.exists(output_dir)):
            chosen = (finishing or complete)[-1]
            if finishing:  # its staging now holds the events it replaced
                shutil.rmtree(read_summary(chosen)["events"]["staging"], ignore_errors=True)
            old = _replace_local(chosen, output_dir)
            leftovers.remove(chosen)
            if old is not None and old not in leftovers:
                leftovers.append(old)
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return
    pattern = staging_dir(output_dir, "*")
    journals = FileSystems.match([FileSystems.join(pattern, JOURNAL_FILE)])[0].metadata_list
    for journal in journals:
        finish = functools.partial(finish_bucket_commit, journal.path.rsplit("/", 1)[0], output_dir)
        retries.retrying("commit", finish)
    for match in FileSystems.match([FileSystems.join(pattern, "**")])[0].metadata_list:
        FileSystems.delete([match.path])


def _events_in_place(staging: str) -> bool:
    """Whether a staged local output's events dataset was already committed: its commit stopped
    between the two moves and is to be finished."""
    events = (read_summary(staging) or {}).get("events")
    if not events:
        return False
    return (read_summary(events["output"]) or {}).get("run_id") == events["run_id"]
