"""The labelling job as a few named Beam transforms: read the input's slices into groups of
files, label each group, write it, and add up what was written.

The launcher plans the input as slices of path lists (`pipeline.sources`); the job reads them
itself, so no process holds every path. Plain runs need no shuffle: a slice's paths are labelled
as they are read, in groups of at most --files_per_group. With --skip_existing the listed paths
and the earlier output's rows meet in a join: both are keyed by a hash of the path into as many
buckets as there are groups, so each bucket is one group that knows which of its files to keep.

Each group is labelled inside one `process` call, batching its windows there. Nothing is emitted
from `finish_bundle` and no sink is used: some runners (Beam 2.77's DaskRunner) drop what
`finish_bundle` emits, and this shape is correct on all. The run's figures are a `Tally` per
group, combined into one and written to staging for the launcher.
"""

import zlib
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.shared import Shared

from model.audio import WindowRun
from model.serving import KeywordModel
from pipeline import retries
from pipeline.labels import (
    EVENT_SCHEMA,
    READ_FAILED,
    ROW_SCHEMA,
    WindowScores,
    display_path,
    make_rows,
)
from pipeline.loading import WindowReader
from pipeline.output import EVENTS_PREFIX, TALLY_FILE, group_file, write_parquet
from pipeline.progress import ProgressRecorder
from pipeline.sources import PathSource, batched, read_source
from pipeline.storage import FETCH_AHEAD, fetch_ahead, share_botocore_models, write_atomically
from pipeline.tally import Tally

# Batches scored at once, each by a one-thread onnxruntime call: on 2 cores this keeps both busy
# with less synchronisation than one batch at a time on two onnxruntime threads.
SCORING_THREADS = 2
# Runs of at least this many consecutive windows (a recording longer than 4.5 s) are scored from
# their samples, each STFT frame once (KeywordModel.predict_run); shorter ones, and the last
# window of each file, are batched as windows with those of other files.
RUN_MIN_WINDOWS = 8


class FileSystemsDoFn(beam.DoFn):
    """A DoFn that configures Beam's FileSystems itself before it runs.

    Runners normally hand the pipeline options to each worker's FileSystems; Beam 2.77's
    DaskRunner does not, and then s3:// (endpoint, keys) fails on its workers. This is the one
    place that works around it: the options travel with the DoFn.
    """

    def __init__(self, filesystem_options: dict):
        self._filesystem_options = filesystem_options

    def setup(self):
        FileSystems.set_options(PipelineOptions.from_dictionary(self._filesystem_options))
        retries.apply(retries.RetryPolicy.from_options(self._filesystem_options))
        share_botocore_models()


def path_to_bytes(path: str) -> bytes:
    """A path as it travels between transforms: a local file name that is not UTF-8 (kept by
    Python as surrogates) cannot pass a runner's string coder, bytes can."""
    return path.encode("utf-8", "surrogateescape")


def path_from_bytes(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


@dataclass
class Group:
    """Files labelled and written together as one Parquet file, and what the launcher checks:
    `received` listed paths arrived here; a slice's last group also carries how many it
    `listed`. With --skip_existing, the earlier rows (and events) this group keeps."""

    name: str
    paths: list[bytes]
    received: int = 0
    listed: int = 0
    slices_done: int = 0
    kept_rows: list[dict] = field(default_factory=list)
    kept_events: list[dict] = field(default_factory=list)


class ReadSlice(FileSystemsDoFn):
    """(index, slice) -> its groups of at most the slice's group_size paths, named
    `<index>-<part>`."""

    def process(self, element: tuple[int, PathSource]) -> Iterator[Group]:
        index, source = element
        listed = 0
        group = Group(f"{index:05d}-0000", [])
        for part, paths in enumerate(batched(read_source(source), source.group_size)):
            if part:
                yield group
            group = Group(f"{index:05d}-{part:04d}", [path_to_bytes(p) for p in paths])
            group.received = len(paths)
            listed += len(paths)
        group.listed, group.slices_done = listed, 1
        yield group


def bucket_of(path: str, buckets: int) -> int:
    """The join bucket of a path as the output stores it: the same in every process."""
    return zlib.crc32(display_path(path).encode()) % buckets


class KeySliceByBucket(FileSystemsDoFn):
    """(index, slice) -> (bucket, ("path", path)) for each path, then (bucket, ("slice", n))."""

    def __init__(self, filesystem_options: dict, buckets: int):
        super().__init__(filesystem_options)
        self._buckets = buckets

    def process(self, element: tuple[int, PathSource]) -> Iterator[tuple[int, tuple]]:
        index, source = element
        listed = 0
        for path in read_source(source):
            listed += 1
            yield bucket_of(path, self._buckets), ("path", path_to_bytes(path))
        yield index % self._buckets, ("slice", listed)


class KeyEarlierRows(FileSystemsDoFn):
    """An earlier output's Parquet file -> (bucket, ("row", row)) for each row a rerun keeps:
    scored by this model version, with this release's columns, and without an error unless
    `keep_errors` (never one whose audio could not be fetched: `read_failed`). The files of
    every other row are labelled again."""

    def __init__(self, filesystem_options: dict, buckets: int, model_version: str, keep_errors):
        super().__init__(filesystem_options)
        self._buckets = buckets
        self._model_version = model_version
        self._keep_errors = keep_errors

    def process(self, path: str) -> Iterator[tuple[int, tuple]]:
        with FileSystems.open(path) as file:
            table = pq.read_table(file)
        if table.schema.names != ROW_SCHEMA.names:
            rows = []  # written with other columns, by another release: labelled again
        else:
            keep = pc.equal(table["model_version"], self._model_version)
            if self._keep_errors:
                fetched = pc.invert(pc.starts_with(table["error"], f"{READ_FAILED}:"))
                keep = pc.and_(keep, pc.fill_null(fetched, True))
            else:
                keep = pc.and_(keep, pc.is_null(table["error"]))
            rows = table.filter(keep).to_pylist()
        for row in rows:
            yield bucket_of(row["path"], self._buckets), ("row", row)


class KeyEarlierEvents(FileSystemsDoFn):
    """An earlier events file -> (bucket, ("event", event)) for each of its events."""

    def __init__(self, filesystem_options: dict, buckets: int):
        super().__init__(filesystem_options)
        self._buckets = buckets

    def process(self, path: str) -> Iterator[tuple[int, tuple]]:
        with FileSystems.open(path) as file:
            for event in pq.read_table(file).to_pylist():
                yield bucket_of(event["path"], self._buckets), ("event", event)


def join_bucket(element: tuple[int, Iterable[tuple]]) -> Group:
    """One bucket's listed paths, earlier rows and events -> its group: the listed paths without
    an earlier row are labelled (once each), the earlier rows are kept with their events."""
    bucket, items = element
    kinds: dict[str, list] = {"path": [], "row": [], "event": [], "slice": []}
    for kind, value in items:
        kinds[kind].append(value)
    kept = {row["path"] for row in kinds["row"]}
    to_label = sorted(
        {path for path in kinds["path"] if display_path(path_from_bytes(path)) not in kept}
    )
    return Group(
        f"b{bucket:05d}",
        to_label,
        received=len(kinds["path"]),
        listed=sum(kinds["slice"]),
        slices_done=len(kinds["slice"]),
        kept_rows=kinds["row"],
        kept_events=[event for event in kinds["event"] if event["path"] in kept],
    )


def load_model(model_dir: str | None, runtime: str) -> KeywordModel:
    return KeywordModel(model_dir, runtime, onnx_threads=1)


@dataclass
class FileInProgress:
    """A file whose windows are being read and scored: its probabilities arrive batch by batch,
    in order; it is done when it is read to the end and no window of it awaits scoring."""

    reader: WindowReader
    probabilities: list[np.ndarray] = field(default_factory=list)
    unscored: int = 0  # runs of windows sent to scoring and not yet back

    @property
    def done(self) -> bool:
        return self.reader.info is not None and self.unscored == 0


# A batch to score: runs of windows, each with the file it belongs to.
Batch = list[tuple[FileInProgress, WindowRun]]


@dataclass(frozen=True)
class JobSettings:
    """What the job's steps need to know of the run: the model, how to read and batch, and
    where to write."""

    model_dir: str | None  # None: the model shipped inside the installed package
    model_version: str
    batch_size: int  # windows per model call
    max_duration_s: float  # longer recordings get an error row
    staging: str  # the run's staging directory: groups' Parquet files, progress ("": none), tally
    run_id: str
    runtime: str = "auto"  # model.serving.RUNTIMES
    events_staging: str | None = None  # where the events dataset is staged, with --events


class LabelGroup(FileSystemsDoFn):
    """Read a group's recordings as streams of windows, score them in full batches, and emit
    the group's rows (one per path) and event rows (one per keyword occurrence).

    A long file spans many batches and a batch holds windows of many short files, so memory
    follows the batch size, not the length of a file. The model is loaded once per worker
    process through `Shared`, and shared by its threads. Batches are scored in SCORING_THREADS
    threads while the next one is decoded: onnxruntime, TensorFlow, libsndfile and soxr release
    the GIL, so every core works, and at most SCORING_THREADS + 1 batches are held at once.
    Bucket recordings are fetched FETCH_AHEAD files ahead (pipeline.storage.fetch_ahead).
    """

    def __init__(self, filesystem_options: dict, job: JobSettings):
        super().__init__(filesystem_options)
        self._job = job
        self._shared_model = Shared()

    def setup(self):
        super().setup()
        model_dir, runtime = self._job.model_dir, self._job.runtime
        self._model = self._shared_model.acquire(
            lambda: load_model(model_dir, runtime),
            tag=f"{model_dir or 'shipped model'} ({runtime})",
        )
        self._scorer = ThreadPoolExecutor(SCORING_THREADS, thread_name_prefix="score")
        self._fetcher = ThreadPoolExecutor(FETCH_AHEAD, thread_name_prefix="fetch")

    def teardown(self):
        self._scorer.shutdown()
        self._fetcher.shutdown(wait=False, cancel_futures=True)  # a stopped run waits for none

    def process(self, group: Group) -> Iterator[tuple[Group, list[dict], list[dict]]]:
        rows: list[dict] = []
        events: list[dict] = []
        in_progress: deque[FileInProgress] = deque()
        recorder = ProgressRecorder(self._job.staging, group.name) if self._job.staging else None
        kept = len(group.kept_rows)
        errors = 0

        def finish_done_files(final: bool = False) -> None:
            nonlocal errors
            while in_progress and in_progress[0].done:
                row, file_events = self._rows(in_progress.popleft())
                rows.append(row)
                events.extend(file_events)
                errors += row["error"] is not None
            if recorder is not None:
                recorder.update(kept + len(rows), errors, final)

        scoring: deque[tuple[Future, Batch]] = deque()
        for batch in self._batches(group.paths, in_progress):
            if len(scoring) == SCORING_THREADS:
                self._collect(*scoring.popleft())
            finish_done_files()
            runs = [run for _, run in batch]
            scoring.append((self._scorer.submit(self._score, runs), batch))
        while scoring:
            self._collect(*scoring.popleft())
            finish_done_files()
        finish_done_files(final=True)
        rows.sort(key=lambda row: row["path"])
        events.sort(key=lambda event: (event["path"], event["start_s"]))
        yield group, rows, events

    def _batches(
        self, encoded_paths: list[bytes], in_progress: deque[FileInProgress]
    ) -> Iterator[Batch]:
        """Runs of the files' windows grouped until they hold at least batch_size windows;
        each file joins `in_progress` as it is opened, in order."""
        pending: Batch = []
        pending_windows = 0
        paths = (path_from_bytes(encoded) for encoded in encoded_paths)
        for path, fetched in fetch_ahead(paths, self._fetcher):
            reader = WindowReader(path, self._job.max_duration_s, self._job.batch_size, fetched)
            file = FileInProgress(reader)
            in_progress.append(file)
            for run in reader.runs():
                file.unscored += 1
                pending.append((file, run))
                pending_windows += run.count
                if pending_windows >= self._job.batch_size:
                    yield pending
                    pending, pending_windows = [], 0
        if pending:
            yield pending

    def _score(self, runs: list[WindowRun]) -> np.ndarray:
        """The probabilities of the runs' windows, in order: a run of RUN_MIN_WINDOWS or more in
        one predict_run call, the others' windows together in batches of batch_size."""
        scored: list[np.ndarray | None] = [
            self._model.predict_run(run.samples) if run.count >= RUN_MIN_WINDOWS else None
            for run in runs
        ]
        short = [index for index, probabilities in enumerate(scored) if probabilities is None]
        if short:
            windows = np.concatenate([runs[index].windows() for index in short])
            probabilities = np.concatenate(
                [
                    self._model.predict(windows[start : start + self._job.batch_size])
                    for start in range(0, len(windows), self._job.batch_size)
                ]
            )
            ends = np.cumsum([runs[index].count for index in short])
            for index, part in zip(short, np.split(probabilities, ends[:-1]), strict=True):
                scored[index] = part
        return np.concatenate(scored)

    @staticmethod
    def _collect(future: Future, batch: Batch) -> None:
        """Hand a scored batch's probabilities back to the files its windows came from."""
        probabilities = future.result()
        offset = 0
        for file, run in batch:
            file.probabilities.append(probabilities[offset : offset + run.count])
            file.unscored -= 1
            offset += run.count

    def _rows(self, file: FileInProgress) -> tuple[dict, list[dict]]:
        info = file.reader.info
        scores = None
        if info.error is None:
            scores = WindowScores(np.concatenate(file.probabilities), *file.reader.spans_s())
        return make_rows(info, scores, self._job.model_version, self._model.decision)


class WriteGroup(FileSystemsDoFn):
    """(group, rows, event rows) -> that group's Parquet file in staging (its new rows and the
    rows it keeps, sorted by path), and its events file in the events staging when there is one;
    a retry overwrites the same files. Emits the group's Tally."""

    def __init__(self, filesystem_options: dict, job: JobSettings):
        super().__init__(filesystem_options)
        self._job = job
        self._files_labelled = Metrics.counter(self.__class__, "files_labelled")
        self._files_kept = Metrics.counter(self.__class__, "files_kept")
        self._events_written = Metrics.counter(self.__class__, "keyword_events")

    def process(self, element: tuple[Group, list[dict], list[dict]]) -> Iterator[Tally]:
        group, rows, events = element
        check_rows_match(group, rows)
        tally = Tally(slices_done=group.slices_done, listed=group.listed, received=group.received)
        all_rows = sorted(rows + group.kept_rows, key=lambda row: row["path"])
        if all_rows:
            tally.add_rows(rows)
            tally.add_rows(group.kept_rows, labelled=False)
            tally.groups = 1
            if self._job.events_staging is not None:
                all_events = sorted(
                    events + group.kept_events, key=lambda event: (event["path"], event["start_s"])
                )
                path = group_file(
                    self._job.events_staging, self._job.run_id, group.name, EVENTS_PREFIX
                )
                write_parquet(path, all_events, EVENT_SCHEMA)
                tally.add_events(all_events, {row["path"]: row["duration_s"] for row in all_rows})
                self._events_written.inc(len(events))
            rows_path = group_file(self._job.staging, self._job.run_id, group.name)
            write_parquet(rows_path, all_rows, ROW_SCHEMA)
        self._files_labelled.inc(len(rows))
        self._files_kept.inc(len(group.kept_rows))
        retried, failures = retries.take_counts()
        tally.add_io_counts(retried, failures)
        retries.add_to_metrics(retried, failures)
        yield tally


def check_rows_match(group: Group, rows: list[dict]) -> None:
    """One row for each path the group was given, and none for another path."""
    expected = Counter(display_path(path_from_bytes(path)) for path in group.paths)
    written = Counter(row["path"] for row in rows)
    if written != expected:
        raise RuntimeError(
            f"group {group.name}: {sum(written.values())} rows for {len(group.paths)} paths"
            f" ({len(expected - written)} paths missing, {len(written - expected)} rows extra)"
        )


class AddUpTallies(beam.CombineFn):
    def create_accumulator(self) -> Tally:
        return Tally()

    def add_input(self, tally: Tally, group_tally: Tally) -> Tally:
        return tally.merge(group_tally)

    def merge_accumulators(self, tallies) -> Tally:
        merged = Tally()
        for tally in tallies:
            merged.merge(tally)
        return merged

    def extract_output(self, tally: Tally) -> Tally:
        return tally


class WriteTally(FileSystemsDoFn):
    """The run's Tally -> `_tally.json` in staging, for the launcher."""

    def __init__(self, filesystem_options: dict, staging: str):
        super().__init__(filesystem_options)
        self._staging = staging

    def process(self, tally: Tally) -> Iterator[str]:
        path = FileSystems.join(self._staging, TALLY_FILE)
        write_atomically(path, tally.to_json().encode())
        yield path


@dataclass(frozen=True)
class SkipExisting:
    """What a --skip_existing run joins its input with: the earlier output's Parquet files (and
    its events files), hashed into `buckets`."""

    label_files: list[str]
    event_files: list[str]
    buckets: int
    model_version: str
    keep_errors: bool


class LabelGroups(beam.PTransform):
    """(index, slice) in; one Parquet file per group out, under the job's staging (and one of
    its keyword events under its events staging, if any); `_tally.json` in staging at the end."""

    def __init__(
        self,
        options: PipelineOptions,
        job: JobSettings,
        skip_existing: SkipExisting | None = None,
    ):
        super().__init__()
        self._options = options.get_all_options(drop_default=True)
        self._skip = skip_existing
        self._label = LabelGroup(self._options, job)
        self._write = WriteGroup(self._options, job)
        self._write_tally = WriteTally(self._options, job.staging)

    def expand(self, slices):
        slices = slices | "Redistribute" >> beam.Reshuffle()
        if self._skip is None:
            groups = slices | "ReadSlice" >> beam.ParDo(ReadSlice(self._options))
        else:
            groups = self._join_with_earlier_output(slices)
        return (
            groups
            | "LabelGroup" >> beam.ParDo(self._label)
            | "WriteGroup" >> beam.ParDo(self._write)
            | "AddUpTallies" >> beam.CombineGlobally(AddUpTallies())
            | "WriteTally" >> beam.ParDo(self._write_tally)
        )

    def _join_with_earlier_output(self, slices):
        skip, options = self._skip, self._options
        pipeline = slices.pipeline
        listed = slices | "KeySliceByBucket" >> beam.ParDo(KeySliceByBucket(options, skip.buckets))
        rows = (
            pipeline
            | "EarlierFiles" >> beam.Create(skip.label_files)
            | "RedistributeFiles" >> beam.Reshuffle()
            | "KeyEarlierRows"
            >> beam.ParDo(
                KeyEarlierRows(options, skip.buckets, skip.model_version, skip.keep_errors)
            )
        )
        events = (
            pipeline
            | "EarlierEventFiles" >> beam.Create(skip.event_files)
            | "KeyEarlierEvents" >> beam.ParDo(KeyEarlierEvents(options, skip.buckets))
        )
        return (
            (listed, rows, events)
            | "Together" >> beam.Flatten()
            | "ByBucket" >> beam.GroupByKey()
            | "JoinBucket" >> beam.Map(join_bucket)
        )
