"""Scale benchmark: what a run costs per file outside the model, and how Dask workers add up.

    python bench/bench_scale.py bookkeeping [--sizes 10000,100000,1000000] [--baseline DIR]
    python bench/bench_scale.py dask [--files 20000]

- bookkeeping: N empty `.wav` files on local disk (each an error row, so the cost measured is
  the run's own: listing, planning, writing rows, adding up, committing), in folders of 1,000.
  For each N, a fresh process lists the folder (`pipeline.sources.plan_input`: wall time and
  peak RSS), and a fresh `yesno-label` process labels it (wall time, peak RSS, rows checked
  against N); the largest N is also labelled from a text manifest of its paths. With
  `--baseline DIR` (a checkout of an earlier version, e.g. `git worktree add /tmp/old REV`), its
  `yesno-label` labels the same folders in the same run, for a ratio against it.
- dask: 20,000 one-second 16 kHz WAV files of synthetic sound (bench_throughput's recordings)
  labelled on a local Dask cluster (scheduler and single-threaded workers on 127.0.0.1, no
  nanny, stopped by PID) with 1 worker, then 2, each worker pinned to a CPU of its own (a worker
  scores in two threads, so an unpinned one already uses both cores of this machine), then
  in-process; files/s of each, the ratio 2 workers / 1 worker, and the output's bytes per row.

Peak RSS is the process's own VmHWM. Every figure is measured in this run, with the machine's
load beside the timings.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench_long_recordings import CLI_REPORTING_PEAK_RSS
from bench_throughput import prepare_sets

FOLDER_SIZE = 1_000
LISTING_REPORTING_PEAK_RSS = """
import json, sys, time
from pipeline.sources import plan_input
started = time.monotonic()
plan = plan_input(sys.argv[1], sys.argv[2])
elapsed = time.monotonic() - started
with open("/proc/self/status") as status:
    rss = next(line for line in status if line.startswith("VmHWM")).split()[1]
print(json.dumps({"files": plan.files, "seconds": elapsed, "rss_kb": int(rss)}))
"""


def make_empty_files(folder: Path, count: int) -> None:
    """count empty `.wav` files in sub-folders of FOLDER_SIZE (made once, then reused)."""
    done = folder / ".complete"
    if done.exists() and int(done.read_text()) == count:
        return
    for index in range(count):
        sub = folder / f"{index // FOLDER_SIZE:05d}"
        if index % FOLDER_SIZE == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{index:08d}.wav").touch()
    done.write_text(str(count))


def write_manifest(folder: Path, count: int, manifest: Path) -> None:
    with manifest.open("w") as file:
        for index in range(count):
            file.write(f"{folder}/{index // FOLDER_SIZE:05d}/{index:08d}.wav\n")


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def label_in_child(
    input_path: Path, output: Path, extra: Sequence[str] = (), pythonpath: str | None = None
) -> dict:
    """Wall time, peak RSS and the summary of one `yesno-label` process."""
    rss_file = output.with_name(output.name + ".rss")
    command = [sys.executable, "-c", CLI_REPORTING_PEAK_RSS, str(rss_file)]
    command += ["--input", str(input_path), "--output", str(output), "--max_error_rate", "1"]
    command += ["--quiet", *extra]
    environment = dict(os.environ)
    if pythonpath:
        environment["PYTHONPATH"] = pythonpath
    started_load = load()
    started = time.monotonic()
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True, env=environment)
    elapsed = time.monotonic() - started
    summary = json.loads((output / "_summary.json").read_text())
    return {
        "seconds": elapsed,
        "rss_mb": int(rss_file.read_text()) / 1024,
        "files": summary["files"],
        "load": started_load,
    }


def list_in_child(folder: Path, staging: Path) -> dict:
    command = [sys.executable, "-c", LISTING_REPORTING_PEAK_RSS, str(folder), str(staging)]
    started_load = load()
    result = json.loads(subprocess.run(command, capture_output=True, check=True).stdout)
    return {**result, "rss_mb": result["rss_kb"] / 1024, "load": started_load}


def bookkeeping(sizes: list[int], baseline: str | None, work: Path) -> None:
    print("| N | input | listing s | listing RSS MB | run s | run RSS MB | RSS / smallest | "
          "rows | load |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    smallest: dict[str, float] = {}
    for size in sizes:
        folder = work / f"empty-{size}"
        make_empty_files(folder, size)
        listing = list_in_child(folder, work / f"listing-{size}")
        inputs = [("folder", folder, None)]
        if size == max(sizes):
            manifest = work / f"manifest-{size}.txt"
            write_manifest(folder, size, manifest)
            inputs.append(("manifest", manifest, None))
        if baseline:
            inputs.append(("folder, baseline", folder, baseline))
        for name, input_path, pythonpath in inputs:
            output = work / f"out-{size}-{name.replace(', ', '-')}"
            run = label_in_child(input_path, output, pythonpath=pythonpath)
            assert run["files"] == size, (name, size, run["files"])
            key = "baseline" if pythonpath else "new"
            smallest.setdefault(key, run["rss_mb"])
            listed = (
                f"{listing['seconds']:.1f} | {listing['rss_mb']:.0f}"
                if name == "folder"
                else "- | -"
            )
            print(
                f"| {size:,} | {name} | {listed} | {run['seconds']:.1f} | {run['rss_mb']:.0f} |"
                f" {run['rss_mb'] / smallest[key]:.2f}x | {run['files']:,} | {run['load']} |",
                flush=True,
            )


def dask_throughput(files: int, work: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.test_runners import DaskCluster

    folder = prepare_sets(work / "recordings", [files])[files]
    results = {}
    for workers in (1, 2):
        cluster = DaskCluster(work, workers, pin_cpus=True)
        try:
            flags = ["--runner", "DaskRunner", "--dask_client_address", cluster.address]
            name = f"dask, {workers} worker{'s' * (workers > 1)}"
            results[name] = label_in_child(folder, work / f"out-dask-{workers}", flags)
        finally:
            cluster.stop()
    results["in-process (DirectRunner)"] = label_in_child(folder, work / "out-in-process")
    out = work / "out-in-process"
    parquet_bytes = sum(path.stat().st_size for path in out.glob("labels-*.parquet"))
    print("| runner | files | wall s | files/s | launcher RSS MB | load |")
    print("|---|---|---|---|---|---|")
    for name, run in results.items():
        assert run["files"] == files
        print(
            f"| {name} | {files:,} | {run['seconds']:.1f} | {files / run['seconds']:.0f} |"
            f" {run['rss_mb']:.0f} | {run['load']} |"
        )
    one, two = (results[f"dask, {n}"]["seconds"] for n in ("1 worker", "2 workers"))
    print(f"\n2 workers / 1 worker throughput: {one / two:.2f}x")
    print(f"output: {parquet_bytes / files:.0f} bytes per row of Parquet")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["bookkeeping", "dask"])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--baseline", help="a checkout of an earlier version to compare with")
    parser.add_argument("--keep-dir", type=Path, help="keep (and reuse) the generated files here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        for stale in work.glob("out-*"):
            subprocess.run(["rm", "-rf", str(stale)], check=True)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load {load()}\n")
        if args.part == "bookkeeping":
            sizes = sorted(int(size) for size in args.sizes.split(","))
            bookkeeping(sizes, args.baseline and str(Path(args.baseline).resolve()), work)
        else:
            dask_throughput(args.files, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
