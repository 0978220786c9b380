"""Throughput benchmark: yesno-label against simpler ways of running the same model.

Every method runs as its own subprocess on the same generated recordings (1 s, 16 kHz, 16-bit
mono WAV), at two input sizes, so start-up cost, CPU time and peak RSS are whole-process figures
(os.wait4 of the child, which includes its waited-for descendants). Run from the repository:

    python bench/bench_throughput.py

The same file is also the worker that the benchmark starts: `bench_throughput.py worker ...`.
"""

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from model.contract import (
    CLIP_SAMPLES,
    DEFAULT_ARTIFACT,
    INPUT_NAME,
    LABELS,
    OUTPUT_NAME,
    SAMPLE_RATE,
    SIGNATURE,
)
from model.evaluation.eval_sets import sound_events

BATCH_SIZE = 256
SEED = 20_260_601
DEFAULT_SIZES = (2_000, 20_000)
DEFAULT_NAIVE_SIZES = (100, 500)
RSS_FLAT_TOLERANCE = 0.10
RSS_LIMIT_MB = 1_536
# Clip-length scaling: (name, seconds, sample rate, channels, files); about 500 windows each.
CLIP_SETS = (
    ("1 s", 1, SAMPLE_RATE, 1, 512),
    ("10 s", 10, SAMPLE_RATE, 1, 27),
    ("60 s", 60, SAMPLE_RATE, 1, 4),
    ("60 s 44.1 kHz stereo", 60, 44_100, 2, 4),
)
METHODS = {
    "naive": "TensorFlow tutorial way: soundfile read, then keras Model(TFSMLayer).predict(x[None])"
    ", one call per file",
    "plain": f"plain loop: soundfile read, KeywordModel.predict on batches of {BATCH_SIZE}",
    "runinference": "Beam RunInference, TFModelHandlerTensor subclass (load_model overridden to "
    "tf.saved_model.load, inference_fn calls the serving signature: Keras 3 cannot reload a "
    f"SavedModel), batches fixed at {BATCH_SIZE}, in-process FnApiRunner; decode Map, argmax Map",
    "runinference-default": "the same RunInference with the handler's default batching "
    "(BatchElements adapts the batch size), as Beam's examples and the issue's figures use it",
    "pipeline": "our pipeline, in-process: python -m pipeline.cli --input DIR --output OUT",
    "pipeline-mp": "our pipeline, multi-process: the same plus --direct_num_workers=2 "
    "--direct_running_mode=multi_processing",
}


# ---------------------------------------------------------------------------------------------
# Test recordings


def write_clip(path: Path, index: int, seconds: float, sample_rate: int, channels: int) -> None:
    """One deterministic 16-bit WAV per index, so a smaller set is a prefix of a larger one."""
    if path.exists():
        return
    rng = np.random.default_rng([SEED, index, int(seconds), sample_rate, channels])
    audio = np.stack(
        [sound_events(rng, seconds, sample_rate, SEED) for _ in range(channels)], axis=1
    )
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with wave.open(str(partial), "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(2)
        file.setframerate(sample_rate)
        file.writeframes((np.clip(audio, -1.0, 1.0) * 32_767).astype("<i2").tobytes())
    partial.rename(path)


def prepare_sets(data_dir: Path, sizes: Sequence[int]) -> dict[int, Path]:
    """Generate max(sizes) clips once; each size is a directory of hard links to a prefix."""
    pool = data_dir / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    paths = [pool / f"clip-{index:06d}.wav" for index in range(max(sizes))]
    started = time.perf_counter()
    for index, path in enumerate(paths):
        write_clip(path, index, 1, SAMPLE_RATE, 1)
    print(f"test set: {len(paths):,} clips in {pool} ({time.perf_counter() - started:.1f} s)")
    sets = {}
    for size in sorted(set(sizes)):
        directory = data_dir / f"n{size}"
        directory.mkdir(exist_ok=True)
        for path in paths[:size]:
            if not (directory / path.name).exists():
                os.link(path, directory / path.name)
        sets[size] = directory
    return sets


def prepare_clip_sets(data_dir: Path) -> Path:
    root = data_dir / "lengths"
    for name, seconds, sample_rate, channels, files in CLIP_SETS:
        directory = root / name.replace(" ", "_")
        directory.mkdir(parents=True, exist_ok=True)
        for index in range(files):
            write_clip(directory / f"clip-{index:03d}.wav", index, seconds, sample_rate, channels)
    return root


# ---------------------------------------------------------------------------------------------
# Workers: each runs in a fresh process and prints one JSON line


def wav_paths(directory: str) -> list[str]:
    return sorted(entry.path for entry in os.scandir(directory) if entry.name.endswith(".wav"))


def read_clip(path: str) -> np.ndarray:
    return soundfile.read(path, dtype="float32")[0]


def worker_naive(input_dir: str, model_dir: str) -> Counter:
    import keras

    inputs = keras.Input(shape=(CLIP_SAMPLES,), dtype="float32")
    outputs = keras.layers.TFSMLayer(model_dir, call_endpoint=SIGNATURE)(inputs)[OUTPUT_NAME]
    model = keras.Model(inputs, outputs)
    labels: Counter = Counter()
    for path in wav_paths(input_dir):
        probabilities = model.predict(read_clip(path)[None], verbose=0)
        labels[LABELS[int(np.argmax(probabilities[0]))]] += 1
    return labels


def worker_plain(input_dir: str, model_dir: str) -> Counter:
    from model.serving import KeywordModel

    model = KeywordModel(model_dir)
    paths = wav_paths(input_dir)
    labels: Counter = Counter()
    for start in range(0, len(paths), BATCH_SIZE):
        batch = np.stack([read_clip(path) for path in paths[start : start + BATCH_SIZE]])
        labels.update(LABELS[index] for index in np.argmax(model.predict(batch), axis=1))
    return labels


def worker_runinference(input_dir: str, model_dir: str, fixed_batches: bool = True) -> Counter:
    """RunInference on the same SavedModel; batches fixed at BATCH_SIZE, or Beam's adaptive
    default (BatchElements grows and shrinks batches by their measured cost)."""
    import apache_beam as beam
    import tensorflow as tf
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import PredictionResult, RunInference
    from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerTensor
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    class SavedModelHandler(TFModelHandlerTensor):
        """Keras 3 cannot load a SavedModel (the handler's default): load it with plain TF."""

        def load_model(self) -> tf.Module:
            return tf.saved_model.load(self._model_uri)

    def call_signature(
        model: tf.Module, batch: Sequence[tf.Tensor], inference_args: dict, model_id: str | None
    ) -> list[PredictionResult]:
        outputs = model.signatures[SIGNATURE](**{INPUT_NAME: tf.stack(batch)}, **inference_args)
        probabilities = outputs[OUTPUT_NAME].numpy()
        return [PredictionResult(x, y, model_id) for x, y in zip(batch, probabilities, strict=True)]

    def argmax_label(result: PredictionResult) -> str:
        label = LABELS[int(np.argmax(result.inference))]
        Metrics.counter("labels", label).inc()
        return label

    batching = {"min_batch_size": BATCH_SIZE, "max_batch_size": BATCH_SIZE} if fixed_batches else {}
    handler = SavedModelHandler(model_dir, inference_fn=call_signature, **batching)
    pipeline = beam.Pipeline(runner=FnApiRunner())
    _ = (
        pipeline
        | "Paths" >> beam.Create(wav_paths(input_dir))
        | "Decode" >> beam.Map(lambda path: tf.constant(read_clip(path)))
        | "RunInference" >> RunInference(handler)
        | "Argmax" >> beam.Map(argmax_label)
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace("labels"))["counters"]
    return Counter({counter.key.metric.name: counter.committed for counter in counters})


def worker_lengths(lengths_dir: str, model_dir: str) -> list[dict]:
    """Per clip length: decode + window time and model time per file, as the pipeline does it."""
    from model.audio import read_recording, split_windows
    from model.serving import KeywordModel

    model = KeywordModel(model_dir)
    model.predict(np.zeros((BATCH_SIZE, CLIP_SAMPLES), np.float32))  # warm-up
    rows = []
    for name, *_ in CLIP_SETS:
        paths = wav_paths(os.path.join(lengths_dir, name.replace(" ", "_")))
        started = time.perf_counter()
        windows = []
        for path in paths:
            with open(path, "rb") as file:
                windows.append(split_windows(read_recording(file).mono))
        decoded = time.perf_counter()
        batch = np.concatenate(windows)
        for start in range(0, len(batch), BATCH_SIZE):
            model.predict(batch[start : start + BATCH_SIZE])
        scored = time.perf_counter()
        rows.append(
            {
                "name": name,
                "files": len(paths),
                "windows": len(batch),
                "decode_s": decoded - started,
                "score_s": scored - decoded,
            }
        )
    return rows


WORKERS: dict[str, Callable[[str, str], object]] = {
    "naive": worker_naive,
    "plain": worker_plain,
    "runinference": worker_runinference,
    "runinference-default": functools.partial(worker_runinference, fixed_batches=False),
    "lengths": worker_lengths,
}


def run_worker(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_throughput.py worker")
    parser.add_argument("method", choices=sorted(WORKERS))
    parser.add_argument("input_dir")
    parser.add_argument("model_dir")
    args = parser.parse_args(argv)
    print(json.dumps(WORKERS[args.method](args.input_dir, args.model_dir)))
    return 0


# ---------------------------------------------------------------------------------------------
# Driver: run each method as a child process and measure it


@dataclass(frozen=True)
class Measurement:
    wall_s: float
    cpu_s: float  # user + sys of the child and its waited-for descendants
    peak_rss_mb: float  # largest resident set of any process in that tree
    load: float  # the machine's 1-minute load average when the child started
    stdout: str


@dataclass(frozen=True)
class Run:
    size: int
    measurement: Measurement
    labels: Counter


def measure(command: list[str], log_stem: Path, cwd: Path | None = None) -> Measurement:
    """Run a child to completion (in `cwd`, where `python -m` finds the code to run); wall time,
    rusage (os.wait4) and its standard output."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    out_path, err_path = log_stem.with_suffix(".out"), log_stem.with_suffix(".err")
    load = os.getloadavg()[0]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        wall_s = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = err_path.read_text(errors="replace")[-3_000:]
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{tail}")
    return Measurement(
        wall_s=wall_s,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,  # kilobytes on Linux
        load=load,
        stdout=out_path.read_text(),
    )


def worker_command(method: str, input_dir: Path, model_dir: str) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "worker",
        method,
        str(input_dir),
        model_dir,
    ]


def run_method(
    method: str,
    input_dir: Path,
    size: int,
    model_dir: str,
    work_dir: Path,
    code_dir: Path | None = None,
) -> Run:
    """One run of a method as a fresh process, checked to have labelled every file; a pipeline
    method runs the code of `code_dir` (a checkout of this repository) when given."""
    log_stem = work_dir / f"{method}-{size}"
    if method.startswith("pipeline"):
        output_dir = work_dir / f"out-{method}-{size}"
        command = [sys.executable, "-m", "pipeline.cli", "--input", str(input_dir)]
        command += ["--output", str(output_dir), "--model", model_dir]
        if method == "pipeline-mp":
            command += ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
        measurement = measure(command, log_stem, code_dir or Path(__file__).resolve().parents[1])
        summary = json.loads((output_dir / "_summary.json").read_text())
        shutil.rmtree(output_dir)
        files, labels = summary["files"], Counter(summary["labels"])
    else:
        measurement = measure(worker_command(method, input_dir, model_dir), log_stem)
        labels = Counter(json.loads(measurement.stdout.splitlines()[-1]))
        files = sum(labels.values())
    if files != size:
        raise RuntimeError(f"{method} labelled {files} files of {size}")
    return Run(size, measurement, labels)


def fastest_run(
    method: str, input_dir: Path, size: int, model_dir: str, work_dir: Path, repeat: int
) -> Run:
    """The run with the shortest wall time out of `repeat`: the one least slowed by other load."""
    runs = [run_method(method, input_dir, size, model_dir, work_dir) for _ in range(repeat)]
    return min(runs, key=lambda run: run.measurement.wall_s)


def versions() -> Iterator[str]:
    yield f"python {platform.python_version()} ({sys.executable})"
    providers = importlib.metadata.packages_distributions()
    for module in ("tensorflow", "apache_beam", "numpy", "keras"):
        for distribution in providers.get(module, []):
            yield f"{distribution} {importlib.metadata.version(distribution)}"
    yield (
        f"CPUs: os.cpu_count() {os.cpu_count()}, usable by this process "
        f"{len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f} (1 min)"
    )


@dataclass(frozen=True)
class Scaling:
    """Two runs of one method: the fixed start-up cost and the marginal cost per file."""

    small: Run
    large: Run

    @property
    def marginal_s(self) -> float:
        extra_time = self.large.measurement.wall_s - self.small.measurement.wall_s
        return extra_time / (self.large.size - self.small.size)

    @property
    def marginal_files_per_s(self) -> float:
        return 1 / self.marginal_s if self.marginal_s > 0 else float("inf")

    @property
    def marginal_cpu_s(self) -> float:
        extra_cpu = self.large.measurement.cpu_s - self.small.measurement.cpu_s
        return extra_cpu / (self.large.size - self.small.size)

    @property
    def startup_s(self) -> float:
        return self.small.measurement.wall_s - self.small.size * self.marginal_s

    @property
    def rss_growth(self) -> float:
        return self.large.measurement.peak_rss_mb / self.small.measurement.peak_rss_mb - 1

    def describe(self) -> str:
        cpu_ms = 1_000 * self.large.measurement.cpu_s / self.large.size
        flat = "flat" if abs(self.rss_growth) <= RSS_FLAT_TOLERANCE else "NOT flat"
        noisy = " (negative: the two runs saw different load)" if self.startup_s < 0 else ""
        return (
            f"  marginal {1_000 * self.marginal_s:.2f} ms/file = "
            f"{self.marginal_files_per_s:,.0f} files/s; start-up {self.startup_s:.1f} s{noisy}\n"
            f"  CPU {cpu_ms:.2f} ms/file at N={self.large.size:,}, marginal CPU "
            f"{1_000 * self.marginal_cpu_s:.2f} ms/file (whole process tree)\n"
            f"  peak RSS {self.rss_growth:+.1%} from N={self.small.size:,} to "
            f"N={self.large.size:,} ({flat})"
        )


def format_labels(labels: Counter) -> str:
    return "/".join(str(labels[label]) for label in LABELS)


def format_run(run: Run) -> str:
    m = run.measurement
    return (
        f"  {run.size:>8,} {m.wall_s:>9.2f} {run.size / m.wall_s:>9.1f} {m.cpu_s:>8.1f} "
        f"{m.cpu_s / m.wall_s:>8.2f} {m.peak_rss_mb:>12.0f} {m.load:>6.1f}   "
        f"{format_labels(run.labels)}"
    )


def verdict(met: bool) -> str:
    return "met" if met else "NOT MET"


def print_throughput_targets(ours: Scaling, scalings: dict[str, Scaling]) -> None:
    targets = (
        ("plain", 0.9),
        ("naive", 100.0),
        ("runinference", 3.0),
        ("runinference-default", 3.0),
    )
    for baseline, target in targets:
        if baseline in scalings:
            ratio = ours.marginal_files_per_s / scalings[baseline].marginal_files_per_s
            cpu_ratio = scalings[baseline].marginal_cpu_s / ours.marginal_cpu_s
            print(
                f"  marginal files/s, pipeline / {baseline:<20} {ratio:>8.2f}   "
                f"target >= {target:g}   {verdict(ratio >= target)}   "
                f"(by marginal CPU time: {cpu_ratio:.2f})"
            )
    if "pipeline-mp" in scalings:
        ratio = scalings["pipeline-mp"].marginal_files_per_s / ours.marginal_files_per_s
        print(f"  (for information) marginal files/s, pipeline-mp / pipeline {ratio:.2f}")
    print(
        "  (CPU-time ratios are less sensitive to other load on a shared machine, but miss the "
        "wall-time gain of work that runs on several cores at once)"
    )


def print_targets(scalings: dict[str, Scaling]) -> None:
    """Our in-process pipeline's marginal throughput against each baseline, and its memory."""
    print("\n== Targets")
    ours = scalings.get("pipeline")
    if ours is None:
        print("  (the in-process pipeline was not run: no throughput targets)")
    else:
        print_throughput_targets(ours, scalings)
    for method in ("pipeline", "pipeline-mp"):
        if method in scalings:
            scaling = scalings[method]
            small, large = scaling.small.measurement, scaling.large.measurement
            met = abs(scaling.rss_growth) <= RSS_FLAT_TOLERANCE and large.peak_rss_mb < RSS_LIMIT_MB
            print(
                f"  peak RSS per worker, {method}: N={scaling.small.size:,} "
                f"{small.peak_rss_mb:.0f} MB, N={scaling.large.size:,} {large.peak_rss_mb:.0f} MB "
                f"({scaling.rss_growth:+.1%})   target within "
                f"{RSS_FLAT_TOLERANCE:.0%} and < {RSS_LIMIT_MB} MB   {verdict(met)}"
            )


def print_label_agreement(scalings: dict[str, Scaling]) -> None:
    by_size: dict[int, dict[str, Counter]] = {}
    for method, scaling in scalings.items():
        for run in (scaling.small, scaling.large):
            by_size.setdefault(run.size, {})[method] = run.labels
    print(f"\n== Label counts ({'/'.join(LABELS)}) per N")
    for size, labels in sorted(by_size.items()):
        distinct = {format_labels(counts) for counts in labels.values()}
        agreement = "DIFFER" if len(distinct) > 1 else "agree" if len(labels) > 1 else "one method"
        details = ", ".join(f"{method} {format_labels(c)}" for method, c in labels.items())
        print(f"  N={size:,}: {agreement}: {details}")


def print_lengths(rows: list[dict]) -> None:
    print(
        "\n== Cost by clip length: model.audio read_recording + split_windows, then "
        f"KeywordModel.predict in batches of {BATCH_SIZE} (warm model, one process)"
    )
    print(
        f"  {'clip':<22} {'files':>5} {'windows/file':>12} {'decode ms/file':>14} "
        f"{'score ms/file':>13} {'total ms/file':>13} {'x 1 s file':>10} {'ms/window':>9}"
    )
    one_second = None
    for row in rows:
        decode_ms = 1_000 * row["decode_s"] / row["files"]
        score_ms = 1_000 * row["score_s"] / row["files"]
        total_ms = decode_ms + score_ms
        one_second = one_second or total_ms
        per_window = 1_000 * (row["decode_s"] + row["score_s"]) / row["windows"]
        print(
            f"  {row['name']:<22} {row['files']:>5} {row['windows'] / row['files']:>12.0f} "
            f"{decode_ms:>14.2f} {score_ms:>13.2f} {total_ms:>13.2f} "
            f"{total_ms / one_second:>10.0f} {per_window:>9.2f}"
        )


def parse_sizes(text: str) -> tuple[int, int]:
    sizes = tuple(int(part.replace("_", "")) for part in text.split(","))
    if len(sizes) != 2 or not 0 < sizes[0] < sizes[1]:
        raise argparse.ArgumentTypeError(f"expected two ascending sizes like 2000,20000: {text}")
    return sizes


def parse_methods(text: str) -> list[str]:
    methods = [part.strip() for part in text.split(",")]
    unknown = set(methods) - {*METHODS, "lengths"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown methods: {', '.join(sorted(unknown))}")
    return methods


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default=str(DEFAULT_ARTIFACT),
        help="exported model directory (default: the shipped model, %(default)s)",
    )
    parser.add_argument(
        "--baseline-model",
        help="also run the pipeline with this model directory, alternating with --model, and"
        " print the ratio of their files/s",
    )
    parser.add_argument(
        "--baseline-code",
        type=Path,
        help="also run the pipeline from this checkout of another commit (a git worktree),"
        " alternating with this one, on the same model, and print the ratio of their files/s",
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=DEFAULT_SIZES,
        help="the two input sizes, N1,N2 (default 2000,20000)",
    )
    parser.add_argument(
        "--naive-sizes",
        type=parse_sizes,
        default=DEFAULT_NAIVE_SIZES,
        help="the two sizes for the slow naive method (default 100,500)",
    )
    parser.add_argument(
        "--methods",
        type=parse_methods,
        default=[*METHODS, "lengths"],
        help=f"comma-separated subset of {','.join(METHODS)},lengths (lengths: the cost by clip "
        "length); default all",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each method and size this many times and keep the fastest (default 1)",
    )
    parser.add_argument(
        "--keep-dir",
        type=Path,
        help="generate the recordings (and logs) here and keep them; a later run reuses them "
        "(default: a temporary directory, removed at the end)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


# One side of a comparison: its name, the model directory and the checkout to run (None: this).
Variant = tuple[str, str, Path | None]


def compare_pipelines(
    args: argparse.Namespace, sets: dict[int, Path], log_dir: Path, variants: list[Variant]
) -> None:
    """The pipeline of two variants in turn (A B A B ..., --repeat rounds), so both see the
    same load: marginal files/s of each and their ratio per round."""
    (first, _, _), (second, _, _) = variants
    print(f"\n== pipeline: {first} against {second}")
    for round_number in range(1, args.repeat + 1):
        rates = []
        for _, model, code_dir in variants:
            runs = [
                run_method("pipeline", sets[size], size, model, log_dir, code_dir)
                for size in args.sizes
            ]
            rates.append(Scaling(*runs).marginal_files_per_s)
            print(format_run(runs[-1]), flush=True)
        print(
            f"  round {round_number}: {first} {rates[0]:,.0f} files/s, {second}"
            f" {rates[1]:,.0f} files/s, ratio {rates[0] / rates[1]:.2f}"
        )


def benchmark(args: argparse.Namespace, data_dir: Path) -> None:
    methods = [method for method in args.methods if method in METHODS]
    sizes = [*(args.naive_sizes if "naive" in methods else ()), *args.sizes]
    sets = prepare_sets(data_dir, sizes)
    log_dir = Path(tempfile.mkdtemp(prefix="logs-", dir=data_dir))  # own dir: runs may overlap
    print(f"child logs: {log_dir}")
    scalings: dict[str, Scaling] = {}
    for method in methods:
        print(f"\n== {method}: {METHODS[method]}")
        if method.startswith("runinference") and importlib.util.find_spec("tensorflow_hub") is None:
            print(
                "  SKIPPED: Beam's TensorFlow handler imports tensorflow_hub, which is not "
                "installed (pip install tensorflow_hub)"
            )
            continue
        method_sizes = args.naive_sizes if method == "naive" else args.sizes
        if method == "naive":
            print(
                f"  (smaller sizes, --naive-sizes {method_sizes[0]},{method_sizes[1]}: "
                "one Keras predict call per file is slow)"
            )
        print(
            f"  {'N':>8} {'wall s':>9} {'files/s':>9} {'CPU s':>8} {'CPU/wall':>8} "
            f"{'peak RSS MB':>12} {'load':>6}   labels {'/'.join(LABELS)}"
        )
        runs = []
        for size in method_sizes:
            runs.append(fastest_run(method, sets[size], size, args.model, log_dir, args.repeat))
            print(format_run(runs[-1]), flush=True)
        scalings[method] = Scaling(*runs)
        print(scalings[method].describe())
    if scalings:
        print_targets(scalings)
        print_label_agreement(scalings)
    model = str(Path(args.model).resolve())
    if args.baseline_model:
        baseline = str(Path(args.baseline_model).resolve())
        compare_pipelines(args, sets, log_dir, [(model, model, None), (baseline, baseline, None)])
    if args.baseline_code:
        code = args.baseline_code.resolve()
        compare_pipelines(
            args, sets, log_dir, [("this checkout", model, None), (str(code), model, code)]
        )
    if "lengths" in args.methods:
        lengths_dir = prepare_clip_sets(data_dir)
        measurement = measure(
            worker_command("lengths", lengths_dir, args.model), log_dir / "lengths"
        )
        print_lengths(json.loads(measurement.stdout.splitlines()[-1]))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["worker"]:
        return run_worker(argv[1:])
    args = parse_args(argv)
    print("yesno-label throughput benchmark")
    for line in versions():
        print(f"  {line}")
    print(f"  model: {args.model}")
    print(
        "  each method is a fresh child process; wall time from start to exit; CPU = user+sys "
        "and peak RSS = max RSS, both from os.wait4 (the child plus its waited-for descendants)"
    )
    data_dir = args.keep_dir or Path(tempfile.mkdtemp(prefix="yesno-bench-"))
    started = time.perf_counter()
    try:
        benchmark(args, data_dir)
    finally:
        if args.keep_dir is None:
            shutil.rmtree(data_dir)
    print(f"\ntotal benchmark wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
