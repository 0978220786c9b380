"""One answer everywhere: the same rows on every runner, and a Dask worker lost mid-run loses none.

The Dask scheduler and workers and Beam's worker pool are real processes started here on
127.0.0.1 and stopped by PID. They run from the installed package, away from the checkout.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import progress
from pipeline.cli import main
from tests.helpers import assert_same_rows, read_output, tone, wav_files, write_wav
from tests.servers import START_TIMEOUT_S, free_port, local_server, start, stop, wait_for_port

BIN = Path(sys.executable).parent


class DaskCluster:
    """A scheduler and single-threaded workers (two by default), each a separate process (no
    nanny), on 127.0.0.1; with `pin_cpus`, worker i runs on CPU i only (`taskset`)."""

    def __init__(self, directory: Path, workers: int = 2, pin_cpus: bool = False):
        self.pin_cpus = pin_cpus
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.directory = directory
        self.scheduler = start(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-dashboard"],
            directory / "scheduler.log",
            directory,
        )  # fmt: skip
        wait_for_port(self.port, self.scheduler)
        self.workers = [self.start_worker(index) for index in range(workers)]
        self.wait_for_workers(workers)

    def start_worker(self, index: int) -> subprocess.Popen:
        pinned = ["taskset", "--cpu-list", str(index)] if self.pin_cpus else []
        return start(
            [*pinned, str(BIN / "dask"), "worker", self.address, "--host", "127.0.0.1",
             "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", f"worker-{index}"],
            self.directory / f"worker-{index}.log",
            self.directory,
        )  # fmt: skip

    def wait_for_workers(self, count: int) -> None:
        from distributed import Client

        with Client(self.address, timeout=START_TIMEOUT_S) as client:
            client.wait_for_workers(count, timeout=START_TIMEOUT_S)

    def stop(self) -> None:
        stop([*self.workers, self.scheduler])


@pytest.fixture
def dask_cluster(tmp_path) -> Iterator[DaskCluster]:
    cluster = DaskCluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def worker_pool(tmp_path, monkeypatch) -> Iterator[str]:
    # The pool starts each SDK worker as `python` from PATH: this interpreter's, even where its
    # environment is not activated (another `python` would lack Beam, and the job would wait
    # for the worker forever).
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    port = free_port()
    command = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
               "--service_port", str(port)]  # fmt: skip
    with local_server(command, port, tmp_path / "worker_pool.log", tmp_path):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def reference_rows(recordings, tmp_path_factory) -> list[dict]:
    output = tmp_path_factory.mktemp("reference") / "labels"
    assert main(["--input", str(recordings), "--output", str(output)]) == 0
    return read_output(output)


def check_same_rows_then_a_manifest_rerun(
    recordings: Path, reference_rows: list[dict], output: Path, runner_flags: list[str]
) -> None:
    """A folder gives the reference rows; a --skip_existing rerun from a manifest of the same
    files (the join inside the job) keeps every row but the errors, and labels those again."""
    assert main(["--input", str(recordings), "--output", str(output), *runner_flags]) == 0
    assert_same_rows(read_output(output), reference_rows)
    manifest = output.parent / "manifest.txt"
    manifest.write_text("\n".join(wav_files(recordings)) + "\n")
    argv = ["--input", str(manifest), "--output", str(output), "--skip_existing"]
    assert main([*argv, *runner_flags]) == 0
    assert_same_rows(read_output(output), reference_rows)
    summary = json.loads((output / "_summary.json").read_text())
    errors = sum(row["error"] is not None for row in reference_rows)
    assert summary["files_labelled_this_run"] == errors > 0
    assert summary["files_kept_from_earlier_output"] == len(reference_rows) - errors


def test_portable_runner_with_an_external_worker_pool_gives_the_same_rows(
    recordings, reference_rows, worker_pool, tmp_path
):
    runner_flags = ["--runner", "PortableRunner", "--job_endpoint", "embed",
                    "--environment_type", "EXTERNAL",
                    "--environment_config", worker_pool]  # fmt: skip
    check_same_rows_then_a_manifest_rerun(
        recordings, reference_rows, tmp_path / "portable", runner_flags
    )


def test_dask_with_two_worker_processes_gives_the_same_rows(
    recordings, reference_rows, dask_cluster, tmp_path
):
    runner_flags = ["--runner", "DaskRunner", "--dask_client_address", dask_cluster.address]
    check_same_rows_then_a_manifest_rerun(
        recordings, reference_rows, tmp_path / "dask", runner_flags
    )


def test_killing_a_dask_worker_mid_run_loses_no_row(dask_cluster, tmp_path, capfd, monkeypatch):
    monkeypatch.setitem(progress.REPORT_INTERVAL_S, "log", 0.2)
    folder = tmp_path / "many"
    for index in range(1_200):  # five groups of at least 256 files
        write_wav(folder / f"tone_{index:04d}.wav", tone(200 + index, 1.0, 16_000), 16_000)
    output = tmp_path / "out"
    result: dict[str, int] = {}
    job = threading.Thread(
        target=lambda: result.update(
            code=main(["--input", str(folder), "--output", str(output), "--runner", "DaskRunner",
                       "--dask_client_address", dask_cluster.address])
        )
    )  # fmt: skip
    job.start()
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("out.staging-*/labels-*.parquet")):  # the first group is done
        assert job.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    victim = dask_cluster.workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    job.join(timeout=600)
    assert result == {"code": 0}
    rows = read_output(output)
    assert [row["path"] for row in rows] == wav_files(folder)  # each file exactly once
    assert all(row["error"] is None for row in rows)
    # Progress came from the Dask workers' records while they ran.
    captured = capfd.readouterr().err
    reported = [line for line in captured.splitlines() if "of 1,200 files" in line]
    assert max(int(line.split()[1].replace(",", "")) for line in reported) > 0, captured[-3000:]
