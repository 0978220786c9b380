"""Kill the job at every step of its commit, locally and on S3 (moto's server): a reader sees
the complete old or the complete new dataset, and the next run repairs what was left."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import output
from pipeline.cli import main
from tests.test_buckets import offline_cloud, s3, s3_endpoint, s3_options  # noqa: F401

# Runs the CLI with every filesystem step of `output.commit` counted; the process dies with
# exit code CRASHED just before step argv[1].
CRASH_HARNESS = """
import os, shutil, sys
from pipeline import output
from pipeline.cli import main

crash_at, steps, committing = int(sys.argv[1]), [0], [False]

def counted(function):
    def step(*args, **kwargs):
        if committing[0]:
            steps[0] += 1
            if steps[0] == crash_at:
                os._exit(CRASHED)
        return function(*args, **kwargs)
    return step

real_commit = output.commit
def commit(*args, **kwargs):
    committing[0] = True
    return real_commit(*args, **kwargs)

output.commit = commit
for name in ("create", "delete", "rename"):
    setattr(output.FileSystems, name, counted(getattr(output.FileSystems, name)))
output.exchange_paths = counted(output.exchange_paths)
shutil.rmtree = counted(shutil.rmtree)
os.rename = counted(os.rename)
sys.exit(main(sys.argv[2:]))
"""
CRASHED = 17
MAX_STEPS = 20


def crash_at_every_step(argv: list[str], before_each, check_after_crash, stride: int = 1) -> int:
    """Run argv crashing at step 1, 1 + stride, ... until a run gets through; returns the step
    it got through at, less one (the step count, or with a stride, at most stride - 1 more)."""
    harness = CRASH_HARNESS.replace("CRASHED", str(CRASHED))
    for step in range(1, MAX_STEPS, stride):
        before_each()
        command = [sys.executable, "-c", harness, str(step), *argv]
        result = subprocess.run(command, capture_output=True, text=True, cwd=Path.cwd())
        if result.returncode == 0:
            return step - 1
        assert result.returncode == CRASHED, result.stderr[-2000:]
        check_after_crash(step)
    raise AssertionError(f"the commit did not finish within {MAX_STEPS} steps")


def test_a_local_commit_killed_at_any_step(recordings, data_dir, tmp_path):
    old_input, new_input = str(recordings), str(recordings / "nested")
    out = tmp_path / "out"

    def dataset() -> set[str]:
        return {row["path"] for row in pq.read_table(out).to_pylist()}

    assert main(["--input", new_input, "--output", str(out)]) == 0
    new = dataset()
    assert main(["--input", old_input, "--output", str(out)]) == 0
    old = dataset()
    assert old != new
    shutil.copytree(out, tmp_path / "old")

    def restore_old() -> None:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(tmp_path / "old", out)

    def check(step: int) -> None:
        assert dataset() in (old, new), step  # never a mix, never nothing
        output.repair(str(out))  # what the next run does first
        assert dataset() in (old, new) and not list(tmp_path.glob("out.staging-*")), step

    steps = crash_at_every_step(["--input", new_input, "--output", str(out)], restore_old, check)
    assert steps >= 2 and dataset() == new


def test_a_local_commit_with_events_killed_at_any_step(recordings, data_dir, tmp_path):
    """The labels and their events: after a crash and the next run's repair, both are the old
    run's or both the new run's."""
    out, events = tmp_path / "out", tmp_path / "events"
    argv = ["--output", str(out), "--events", str(events)]
    old_argv = ["--input", str(recordings), *argv]
    new_argv = ["--input", str(recordings / "nested"), *argv]

    def state() -> tuple[frozenset[str], bool]:
        """The files the labels hold, and whether the events are of the same run."""
        paths = frozenset(row["path"] for row in pq.read_table(out).to_pylist())
        labels_run, events_run = (
            output.read_summary(str(directory))["run_id"] for directory in (out, events)
        )
        return paths, labels_run == events_run

    assert main(new_argv) == 0
    new = state()
    assert main(old_argv) == 0
    old = state()
    assert old[1] and new[1] and old != new
    shutil.copytree(out, tmp_path / "old-out")
    shutil.copytree(events, tmp_path / "old-events")

    def restore_old() -> None:
        for directory in (out, events):
            shutil.rmtree(directory, ignore_errors=True)
            shutil.copytree(tmp_path / f"old-{directory.name}", directory)

    def check(step: int) -> None:
        output.repair(str(out))  # what the next run does first: the output, then its events
        output.repair(str(events))
        assert state() in (old, new), step
        assert not list(tmp_path.glob("*.staging-*")), step

    steps = crash_at_every_step(new_argv, restore_old, check)
    assert steps >= 3 and state() == new


def test_an_s3_commit_killed_at_any_step(s3, s3_endpoint):  # noqa: F811
    uri = "s3://labels-out/faults"
    options = [*s3_options(s3_endpoint), "--s3_access_key_id", "testing"]
    options += ["--s3_secret_access_key", "testing"]
    old_argv = ["--input", "s3://audio-in/calls/", "--output", uri, *options]
    new_argv = ["--input", "s3://audio-in/calls/nested/", "--output", uri, *options]

    def keys() -> list[str]:
        listed = s3.list_objects_v2(Bucket="labels-out", Prefix="faults")
        return sorted(item["Key"] for item in listed.get("Contents", []))

    def read_summary() -> dict:
        body = s3.get_object(Bucket="labels-out", Key="faults/_summary.json")["Body"].read()
        return json.loads(body)

    def dataset() -> set[str] | None:
        """What a reader that trusts `_summary.json` sees: the files it lists (None: no summary,
        so no complete dataset; the reader waits)."""
        if "faults/_summary.json" not in keys():
            return None
        summary = json.loads(
            s3.get_object(Bucket="labels-out", Key="faults/_summary.json")["Body"].read()
        )
        rows = []
        for name in summary["parquet_files"]:
            body = s3.get_object(Bucket="labels-out", Key=f"faults/{name}")["Body"].read()
            rows += pq.read_table(io.BytesIO(body)).to_pylist()
        assert len(rows) == summary["files"]
        return {row["path"] for row in rows}

    assert main(new_argv) == 0
    new = dataset()
    assert main(old_argv) == 0
    old = dataset()
    assert old != new
    snapshot = {key: s3.get_object(Bucket="labels-out", Key=key)["Body"].read() for key in keys()}

    def restore_old() -> None:
        for key in keys():
            s3.delete_object(Bucket="labels-out", Key=key)
        for key, body in snapshot.items():
            s3.put_object(Bucket="labels-out", Key=key, Body=body)

    def check(step: int) -> None:
        assert dataset() in (old, new, None), step
        output.repair(uri)
        assert dataset() in (old, new), step
        assert not [key for key in keys() if ".staging-" in key], step

    # Every third step, to keep the suite short: each crash runs the whole job in a new process
    # against moto's server (the local tests above crash at every step).
    steps = crash_at_every_step(new_argv, restore_old, check, stride=3)
    assert steps >= 4 and dataset() == new
    parquet = {key.rsplit("/", 1)[1] for key in keys() if key.endswith(".parquet")}
    assert parquet == set(
        json.loads(s3.get_object(Bucket="labels-out", Key="faults/_summary.json")["Body"].read())[
            "parquet_files"
        ]
    )


@pytest.fixture(autouse=True)
def _filesystem_options():
    """main() sets Beam's filesystem options for the process; the S3 ones must not leak."""
    from apache_beam.io.filesystems import FileSystems

    previous = FileSystems._pipeline_options
    yield
    FileSystems.set_options(previous)
