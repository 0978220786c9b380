"""Long recordings benchmark: keyword events at known times, false alarms, speed and memory.

    python bench/bench_long_recordings.py [--files 30] [--false-alarm-minutes 60]

- Accuracy: `model.evaluation.eval_sets.long_recordings` of the test split (1-6 min, words 0.3-3 s
  apart over a noise floor, a quarter of them `yes` or `no`, stored at 8, 16 and 44.1 kHz), labelled
  with `yesno-label --events`; each event is matched to the keyword whose centre it holds
  (`match_events`): recall and precision of occurrences, and the error of their centres.
- False alarms per hour: the same kind of recordings with no keyword at all.
- Speed: a 1-hour 16 kHz mono file and a 1 s file, each labelled by a fresh `yesno-label`
  process, in --speed-rounds rounds; real time factor = 3600 s / (median wall time of the
  hour - median wall time of the 1 s file, which is the start-up), and the same of the fastest
  runs. Each round also labels the hour with the model's windows scored one by one (no
  stream.onnx): the ratio of the two walls, round by round.
- Memory: peak RSS of a fresh `yesno-label` process labelling one 44.1 kHz stereo file of
  1 min, 20 min and 2 h.

Every figure is measured in this run; the machine's load is printed beside the timings.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile

from model.contract import DEFAULT_ARTIFACT
from model.evaluation.eval_sets import long_recordings, match_events
from model.evaluation.evaluate import DEFAULT_DATA
from model.serving import STREAM_FILE

SPEED_SECONDS = 3_600
MEMORY_MINUTES = (1, 20, 120)
MEMORY_RATE = 44_100


# yesno-label, reporting the peak RSS of its own process image (VmHWM): os.wait4's figure would
# also count the benchmark's memory, which a forked child holds until it executes Python.
CLI_REPORTING_PEAK_RSS = """
import sys
from pipeline.cli import main
code = main(sys.argv[2:])
with open("/proc/self/status") as status, open(sys.argv[1], "w") as out:
    out.write(next(line for line in status if line.startswith("VmHWM")).split()[1])
sys.exit(code)
"""


@dataclass(frozen=True)
class Labelling:
    wall_s: float
    cpu_s: float  # user + system: steadier than wall time on a machine shared with other work
    peak_rss_mb: int


def label(
    folder: Path, out: Path, events: Path | None = None, model: Path | None = None
) -> Labelling:
    """Wall and CPU seconds and peak RSS of one `yesno-label` process labelling `folder`."""
    rss_file = out.with_name(out.name + ".rss")
    command = [sys.executable, "-c", CLI_REPORTING_PEAK_RSS, str(rss_file), "--input", str(folder)]
    command += ["--output", str(out)] + (["--events", str(events)] if events else [])
    command += ["--model", str(model)] if model else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Labelling(elapsed, cpu, int(rss_file.read_text()) // 1024)


def write_recordings(folder: Path, recordings) -> dict[str, tuple]:
    folder.mkdir(parents=True)
    truth = {}
    for recording in recordings:
        path = folder / f"{recording.name}.wav"
        soundfile.write(path, recording.audio, recording.sample_rate, "PCM_16")
        truth[str(path)] = recording.keywords
    return truth


def accuracy(work: Path, files: int) -> None:
    recordings = long_recordings(DEFAULT_DATA, "test", files)
    truth = write_recordings(work / "accuracy", recordings)
    minutes = sum(len(r.audio) / r.sample_rate for r in recordings) / 60
    wall = label(work / "accuracy", work / "accuracy-labels", work / "accuracy-events").wall_s
    events = pq.read_table(work / "accuracy-events").to_pylist()
    errors, false_alarms, missed = [], 0, 0
    for path, keywords in truth.items():
        found = [(e["label"], e["start_s"], e["end_s"]) for e in events if e["path"] == path]
        file_errors, file_false, file_missed = match_events(found, keywords)
        errors += file_errors
        false_alarms += file_false
        missed += file_missed
    said = sum(len(keywords) for keywords in truth.values())
    print(f"== Accuracy: {files} recordings, {minutes:.1f} min, {said} keywords (test split)")
    print(f"  events {len(events)}, matched {len(errors)}, false {false_alarms}, missed {missed}")
    print(f"  recall {len(errors) / said:.3f}, precision {len(errors) / max(len(events), 1):.3f}")
    print(
        f"  centre error: median {np.median(errors):.3f} s, 90th percentile"
        f" {np.percentile(errors, 90):.3f} s, max {max(errors):.3f} s"
    )
    print(f"  labelled in {wall:.1f} s")


def false_alarms(work: Path, minutes: float) -> None:
    count = max(1, round(minutes / 5.5))
    recordings = long_recordings(DEFAULT_DATA, "test", count, minutes=(5.0, 6.0), keyword_share=0)
    write_recordings(work / "quiet", recordings)
    total = sum(len(r.audio) / r.sample_rate for r in recordings) / 3600
    label(work / "quiet", work / "quiet-labels", work / "quiet-events")
    events = pq.read_table(work / "quiet-events").num_rows
    print(f"== False alarms: {count} recordings, {60 * total:.1f} min without a keyword")
    print(f"  {events} events = {events / total:.2f} per hour")


def speed(work: Path, rounds: int) -> None:
    """Real-time factor of a 1-hour file. Each round labels the 1 s file, then the hour, then
    the hour again with a copy of the model without stream.onnx (every window scored alone by
    model.onnx), in fresh processes. The median over the rounds is the figure; the fastest is
    printed too (other load on a shared machine only ever adds time)."""
    hour, second = work / "hour", work / "second"
    for folder, seconds in ((hour, SPEED_SECONDS), (second, 1)):
        folder.mkdir()
        (recording,) = long_recordings(
            DEFAULT_DATA, "val", 1, minutes=(seconds / 60, seconds / 60), rates=(16_000,)
        )
        soundfile.write(folder / "a.wav", recording.audio, 16_000, "PCM_16")
    windows_model = work / "windows-model"
    shutil.copytree(DEFAULT_ARTIFACT, windows_model, ignore=shutil.ignore_patterns(STREAM_FILE))
    print(f"== Speed: one {SPEED_SECONDS / 3600:.0f} h 16 kHz mono file; load {load()}")
    runs: dict[str, list[Labelling]] = {"start-up": [], "hour": [], "window by window": []}
    for index in range(rounds):
        runs["start-up"].append(label(second, work / f"second-labels-{index}"))
        runs["hour"].append(label(hour, work / f"hour-labels-{index}"))
        runs["window by window"].append(
            label(hour, work / f"window-labels-{index}", model=windows_model)
        )
        print(
            f"  round {index + 1}: "
            + ", ".join(
                f"{name} {r[-1].wall_s:.2f} s ({r[-1].cpu_s:.2f} s CPU)" for name, r in runs.items()
            )
        )
    print(f"  peak RSS {max(r.peak_rss_mb for r in runs['hour'])} MB; load {load()}")
    walls = {name: [r.wall_s for r in labellings] for name, labellings in runs.items()}
    for name, pick in (("median", np.median), ("fastest", min)):
        start_up = pick(walls["start-up"])
        factors = [
            SPEED_SECONDS / max(pick(walls[kind]) - start_up, 1e-3)
            for kind in ("hour", "window by window")
        ]
        print(
            f"  {name}: start-up {start_up:.2f} s, hour {pick(walls['hour']):.2f} s:"
            f" {factors[0]:,.0f}x real time after start-up (window by window"
            f" {pick(walls['window by window']):.2f} s, {factors[1]:,.0f}x)"
        )
    for measure in ("wall_s", "cpu_s"):
        ratios = [
            getattr(stream, measure) / getattr(windows, measure)
            for stream, windows in zip(runs["hour"], runs["window by window"], strict=True)
        ]
        print(
            f"  hour with stream.onnx / window by window, {measure[:-2]} time round by round:"
            f" median {np.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})"
        )


def memory(work: Path) -> None:
    """Peak RSS for ever longer 44.1 kHz stereo files: one minute of audio written again and
    again, so the file is long without building it in memory."""
    (minute,) = long_recordings(DEFAULT_DATA, "val", 1, minutes=(1, 1), rates=(MEMORY_RATE,))
    stereo = np.repeat(minute.audio[: 60 * MEMORY_RATE, np.newaxis], 2, axis=1)
    print(f"== Memory: one {MEMORY_RATE / 1000:.1f} kHz stereo 16-bit file per run; load {load()}")
    for minutes in MEMORY_MINUTES:
        folder = work / f"memory-{minutes}"
        folder.mkdir()
        with soundfile.SoundFile(folder / "a.wav", "w", MEMORY_RATE, 2, "PCM_16") as file:
            for _ in range(minutes):
                file.write(stereo)
        run = label(folder, work / f"memory-{minutes}-labels")
        size_mb = (folder / "a.wav").stat().st_size / 2**20
        print(
            f"  {minutes:>4} min ({size_mb:,.0f} MB): peak RSS {run.peak_rss_mb} MB,"
            f" wall {run.wall_s:.1f} s"
        )
        (folder / "a.wav").unlink()


def load() -> str:
    return f"{os.getloadavg()[0]:.2f} (1 min)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=30, help="long recordings to match")
    parser.add_argument("--false-alarm-minutes", type=float, default=60.0)
    parser.add_argument(
        "--speed-rounds",
        type=int,
        default=7,
        help="labellings of the 1-hour file (the median counts)",
    )
    parser.add_argument(
        "--only", choices=("accuracy", "false-alarms", "speed", "memory"), action="append"
    )
    args = parser.parse_args()
    parts = args.only or ["accuracy", "false-alarms", "speed", "memory"]
    model = json.loads(Path("model/artifacts/yesno/metadata.json").read_text())
    print(f"model {model['model_version']}, thresholds {model['decision']['thresholds']}")
    print(f"CPUs {os.cpu_count()}; each labelling is a fresh process: wall time and its peak RSS")
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        if "accuracy" in parts:
            accuracy(work, args.files)
        if "false-alarms" in parts:
            false_alarms(work, args.false_alarm_minutes)
        if "speed" in parts:
            speed(work, args.speed_rounds)
        if "memory" in parts:
            memory(work)


if __name__ == "__main__":
    main()
