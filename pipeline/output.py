"""The output dataset: staged while the job runs, committed in place only when it succeeded.

Layout of --output: `labels-<run>-<group>.parquet` files and `_summary.json` (pyarrow's dataset
reader skips names that start with `_` or `.`). A run writes into a sibling staging directory,
`<output>.staging-<run>`, and only a finished run replaces the output, so a failed run leaves the
previous output as it was and a rerun replaces it completely.
"""

import ctypes
import errno
import glob
import io
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.labels import ROW_SCHEMA
from pipeline.storage import is_bucket_root

PARQUET_PREFIX = "labels-"
SUMMARY_FILE = "_summary.json"
INPUTS_DIR = "_inputs"
JOURNAL_FILE = "_commit.json"  # in staging, on buckets: written when a commit begins
AT_FDCWD = -100
RENAME_EXCHANGE = 2


def staging_dir(output_dir: str, run_id: str) -> str:
    """Beside the output; a whole bucket has no beside, so there a hidden prefix inside it."""
    if is_bucket_root(output_dir):
        return FileSystems.join(output_dir, f".staging-{run_id}")
    return f"{output_dir.rstrip('/')}.staging-{run_id}"


def run_prefix(run_id: str) -> str:
    return f"{PARQUET_PREFIX}{run_id}-"


def group_file(staging: str, run_id: str, group: int) -> str:
    """One file per group; the name is fixed, so a retried group overwrites its own file."""
    return FileSystems.join(staging, f"{run_prefix(run_id)}{group:05d}.parquet")


def check_output_dir(output_dir: str) -> None:
    """Refuse an existing local --output that holds anything but an earlier run's output,
    since committing a run replaces that directory."""
    if FileSystems.get_scheme(output_dir) is not None or not os.path.exists(output_dir):
        return
    if not os.path.isdir(output_dir):
        raise FileExistsError(f"--output {output_dir} is a file, not a directory")
    foreign = [
        name
        for name in os.listdir(output_dir)
        if name != SUMMARY_FILE
        and not (name.startswith(PARQUET_PREFIX) and name.endswith(".parquet"))
    ]
    if foreign:
        raise FileExistsError(
            f"--output {output_dir} holds other files ({', '.join(sorted(foreign)[:3])}); "
            "it is replaced by each run, so give a new or earlier output directory"
        )


def write_path_lists(staging: str, groups: list[list[str]]) -> list[str]:
    """Store each group's paths as JSON lines in staging, so the pipeline graph stays small."""
    path_lists = []
    for group, paths in enumerate(groups):
        path_list = FileSystems.join(staging, INPUTS_DIR, f"group-{group:05d}.jsonl")
        with FileSystems.create(path_list) as file:
            file.write(b"".join(json.dumps(path).encode() + b"\n" for path in paths))
        path_lists.append(path_list)
    return path_lists


def read_path_list(path_list: str) -> Iterable[str]:
    with FileSystems.open(path_list) as file:
        for line in io.TextIOWrapper(file, encoding="utf-8"):
            yield json.loads(line)


def write_parquet(path: str, rows: list[dict]) -> None:
    """Write rows as one Parquet file, atomically: to a temporary name, then renamed."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), buffer)
    temporary = f"{path}.tmp"
    with FileSystems.create(temporary) as file:
        file.write(buffer.getvalue())
    FileSystems.rename([temporary], [path])


def parquet_files(directory: str, name_prefix: str = PARQUET_PREFIX) -> list[str]:
    pattern = FileSystems.join(directory, f"{name_prefix}*.parquet")
    return sorted(match.path for match in FileSystems.match([pattern])[0].metadata_list)


def read_columns(
    directory: str, columns: list[str], name_prefix: str = PARQUET_PREFIX
) -> Iterable[dict]:
    for path in parquet_files(directory, name_prefix):
        with FileSystems.open(path) as file:
            yield from pq.read_table(file, columns=columns).to_pylist()


def carry_over(output_dir: str, staging: str, model_version: str, keep_errors: bool) -> set[str]:
    """Copy into staging the rows of an earlier output that a rerun keeps: those scored by this
    model version, and without an error unless `keep_errors`. Returns their paths; the files of
    every other row are labelled again."""
    if FileSystems.get_filesystem(output_dir).has_dirs() and not FileSystems.exists(output_dir):
        return set()
    kept_paths: set[str] = set()
    for path in parquet_files(output_dir):
        with FileSystems.open(path) as file:
            table = pq.read_table(file)
        keep = pc.equal(table["model_version"], model_version)
        if not keep_errors:
            keep = pc.and_(keep, pc.is_null(table["error"]))
        kept = table.filter(keep)
        if kept.num_rows:
            buffer = io.BytesIO()
            pq.write_table(kept, buffer)
            with FileSystems.create(FileSystems.join(staging, os.path.basename(path))) as file:
                file.write(buffer.getvalue())
            kept_paths.update(kept["path"].to_pylist())
    return kept_paths


def count_rows(directory: str, name_prefix: str = PARQUET_PREFIX) -> tuple[Counter, Counter]:
    """Files per label, and errors per kind (the error text up to its first colon)."""
    labels: Counter = Counter()
    errors: Counter = Counter()
    for row in read_columns(directory, ["label", "error"], name_prefix):
        labels[row["label"]] += 1
        if row["error"] is not None:
            errors[row["error"].split(":", 1)[0]] += 1
    return labels, errors


def write_summary(staging: str, summary: dict) -> None:
    with FileSystems.create(FileSystems.join(staging, SUMMARY_FILE)) as file:
        file.write(json.dumps(summary, indent=2).encode())


def delete_directory(directory: str) -> None:
    """Delete a directory and all in it, if it exists. A bucket has no directories, only a
    common name prefix: Beam deletes every object under one when the path ends with "/"."""
    if not FileSystems.get_filesystem(directory).has_dirs():
        FileSystems.delete([directory.rstrip("/") + "/"])
    elif FileSystems.exists(directory):
        FileSystems.delete([directory])


def discard(staging: str) -> None:
    delete_directory(staging)


def commit(staging: str, output_dir: str) -> None:
    """Put the staged dataset in place of the output.

    Local: one atomic exchange of the staging and output directories (Linux renameat2), so a
    reader sees the old or the new dataset, never a mix and never none; then the old one, now
    in staging, is deleted. Where the system cannot exchange, two renames (a crash between them
    leaves no output until the next run repairs it: `repair`).
    Buckets have no rename of a prefix. The commit writes a journal in staging (the previous
    summary's files that the new dataset does not reuse), removes the old `_summary.json`, moves
    the new files in, deletes the journal's files (never a file no summary listed), and writes
    the new `_summary.json` last: an output is complete exactly when it has a summary, and the
    next run finishes a commit that was interrupted (`repair`).
    """
    delete_directory(FileSystems.join(staging, INPUTS_DIR))
    if FileSystems.get_scheme(output_dir) is None:
        if not os.path.exists(output_dir):
            os.rename(staging, output_dir)
        elif exchange_paths(staging, output_dir):
            shutil.rmtree(staging)
        else:
            previous = f"{staging}.previous"
            os.rename(output_dir, previous)
            os.rename(staging, output_dir)
            shutil.rmtree(previous, ignore_errors=True)
        return
    new_names = {os.path.basename(path) for path in parquet_files(staging)}
    previous = read_summary(output_dir)
    stale = [name for name in (previous or {}).get("parquet_files", []) if name not in new_names]
    with FileSystems.create(FileSystems.join(staging, JOURNAL_FILE)) as file:
        file.write(json.dumps({"delete": stale}).encode())
    finish_bucket_commit(staging, output_dir)


def finish_bucket_commit(staging: str, output_dir: str) -> None:
    """The steps of a bucket commit after its journal is written; each may be redone. Once the
    staged summary has moved, the commit is done and only staging is left to delete."""
    with FileSystems.open(FileSystems.join(staging, JOURNAL_FILE)) as file:
        stale = json.load(file)["delete"]
    if not FileSystems.exists(FileSystems.join(staging, SUMMARY_FILE)):
        delete_directory(staging)
        return
    summary = FileSystems.join(output_dir, SUMMARY_FILE)
    if FileSystems.exists(summary):
        FileSystems.delete([summary])
    staged = parquet_files(staging)
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
    run. Every other staging directory of this output is deleted: one run per output at a time.
    """
    if FileSystems.get_scheme(output_dir) is None:
        leftovers = sorted(glob.glob(glob.escape(output_dir.rstrip("/")) + ".staging-*"))
        complete = [
            path
            for path in leftovers
            if not path.endswith(".previous") and os.path.exists(os.path.join(path, SUMMARY_FILE))
        ]
        if complete and not os.path.exists(output_dir):
            os.rename(complete[-1], output_dir)
            leftovers.remove(complete[-1])
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return
    pattern = staging_dir(output_dir, "*")
    journals = FileSystems.match([FileSystems.join(pattern, JOURNAL_FILE)])[0].metadata_list
    for journal in journals:
        finish_bucket_commit(journal.path.rsplit("/", 1)[0], output_dir)
    for match in FileSystems.match([FileSystems.join(pattern, "**")])[0].metadata_list:
        FileSystems.delete([match.path])
