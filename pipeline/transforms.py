"""The labelling job as a few named Beam transforms: read a group's paths, label, write.

The launcher splits the input into groups and stores each group's paths in a file; the job
spreads the groups over the workers and labels each group inside one `process` call, batching
its windows there. Nothing is emitted from `finish_bundle` and no sink is used: some runners
(Beam 2.77's DaskRunner) drop what `finish_bundle` emits, and this shape is correct on all.
"""

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.shared import Shared

from model.serving import KeywordModel
from pipeline.labels import EVENT_SCHEMA, ROW_SCHEMA, WindowScores, make_rows
from pipeline.loading import WindowReader
from pipeline.output import EVENTS_PREFIX, group_file, read_path_list, write_parquet
from pipeline.progress import ProgressRecorder

# Batches scored at once, each by a one-thread onnxruntime call: on 2 cores this keeps both busy
# with less synchronisation than one batch at a time on two onnxruntime threads.
SCORING_THREADS = 2


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


def path_to_bytes(path: str) -> bytes:
    """A path as it travels between transforms: a local file name that is not UTF-8 (kept by
    Python as surrogates) cannot pass a runner's string coder, bytes can."""
    return path.encode("utf-8", "surrogateescape")


def path_from_bytes(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class ReadPathList(FileSystemsDoFn):
    """(group, path-list file) -> (group, paths as bytes)."""

    def process(self, element: tuple[int, str]) -> Iterator[tuple[int, list[bytes]]]:
        group, path_list = element
        yield group, [path_to_bytes(path) for path in read_path_list(path_list)]


def load_model(model_dir: str | None, runtime: str) -> KeywordModel:
    return KeywordModel(model_dir, runtime, onnx_threads=1)


@dataclass
class FileInProgress:
    """A file whose windows are being read and scored: its probabilities arrive batch by batch,
    in order; it is done when it is read to the end and no window of it awaits scoring."""

    reader: WindowReader
    probabilities: list[np.ndarray] = field(default_factory=list)
    unscored: int = 0  # chunks of windows sent to scoring and not yet back

    @property
    def done(self) -> bool:
        return self.reader.info is not None and self.unscored == 0


# A batch to score: chunks of windows, each with the file it belongs to.
Batch = list[tuple[FileInProgress, np.ndarray]]


class LabelGroup(FileSystemsDoFn):
    """Read a group's recordings as streams of windows, score them in full batches, and emit
    the group's rows (one per path) and event rows (one per keyword occurrence).

    A long file spans many batches and a batch holds windows of many short files, so memory
    follows the batch size, not the length of a file. The model is loaded once per worker
    process through `Shared`, and shared by its threads. Batches are scored in SCORING_THREADS
    threads while the next one is decoded: onnxruntime, TensorFlow, libsndfile and soxr release
    the GIL, so every core works, and at most SCORING_THREADS + 1 batches are held at once.
    """

    def __init__(
        self,
        filesystem_options: dict,
        model_dir: str | None,
        model_version: str,
        batch_size: int,
        max_duration_s: float,
        runtime: str = "auto",
        staging: str | None = None,
    ):
        super().__init__(filesystem_options)
        self._model_dir = model_dir
        self._runtime = runtime
        self._model_version = model_version
        self._batch_size = batch_size
        self._max_duration_s = max_duration_s
        self._staging = staging  # where to record progress (pipeline.progress), if anywhere
        self._shared_model = Shared()

    def setup(self):
        super().setup()
        self._model = self._shared_model.acquire(
            lambda: load_model(self._model_dir, self._runtime),
            tag=f"{self._model_dir or 'shipped model'} ({self._runtime})",
        )
        self._scorer = ThreadPoolExecutor(SCORING_THREADS, thread_name_prefix="score")

    def teardown(self):
        self._scorer.shutdown()

    def process(
        self, element: tuple[int, list[bytes]]
    ) -> Iterator[tuple[int, list[dict], list[dict]]]:
        group, encoded_paths = element
        rows: list[dict] = []
        events: list[dict] = []
        in_progress: deque[FileInProgress] = deque()
        recorder = ProgressRecorder(self._staging, group) if self._staging else None
        errors = 0

        def finish_done_files(final: bool = False) -> None:
            nonlocal errors
            while in_progress and in_progress[0].done:
                row, file_events = self._rows(in_progress.popleft())
                rows.append(row)
                events.extend(file_events)
                errors += row["error"] is not None
            if recorder is not None:
                recorder.update(len(rows), errors, final)

        scoring: deque[tuple[Future, Batch]] = deque()
        for batch in self._batches(encoded_paths, in_progress):
            if len(scoring) == SCORING_THREADS:
                self._collect(*scoring.popleft())
            finish_done_files()
            windows = np.concatenate([chunk for _, chunk in batch])
            scoring.append((self._scorer.submit(self._score, windows), batch))
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
        """Chunks of the files' windows grouped until they hold at least batch_size windows;
        each file joins `in_progress` as it is opened, in order."""
        pending: Batch = []
        pending_windows = 0
        for encoded in encoded_paths:
            file = FileInProgress(WindowReader(path_from_bytes(encoded), self._max_duration_s))
            in_progress.append(file)
            for chunk in file.reader.chunks():
                file.unscored += 1
                pending.append((file, chunk))
                pending_windows += len(chunk)
                if pending_windows >= self._batch_size:
                    yield pending
                    pending, pending_windows = [], 0
        if pending:
            yield pending

    def _score(self, windows: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                self._model.predict(windows[start : start + self._batch_size])
                for start in range(0, len(windows), self._batch_size)
            ]
        )

    @staticmethod
    def _collect(future: Future, batch: Batch) -> None:
        """Hand a scored batch's probabilities back to the files its windows came from."""
        probabilities = future.result()
        offset = 0
        for file, chunk in batch:
            file.probabilities.append(probabilities[offset : offset + len(chunk)])
            file.unscored -= 1
            offset += len(chunk)

    def _rows(self, file: FileInProgress) -> tuple[dict, list[dict]]:
        info = file.reader.info
        scores = None
        if info.error is None:
            scores = WindowScores(np.concatenate(file.probabilities), *file.reader.spans_s())
        return make_rows(info, scores, self._model_version, self._model.decision)


class WriteGroup(FileSystemsDoFn):
    """(group, rows, event rows) -> that group's Parquet file in staging, and its events file in
    the events staging when there is one; a retry overwrites the same files."""

    def __init__(
        self, filesystem_options: dict, staging: str, events_staging: str | None, run_id: str
    ):
        super().__init__(filesystem_options)
        self._staging = staging
        self._events_staging = events_staging
        self._run_id = run_id
        self._events_written = Metrics.counter(self.__class__, "keyword_events")

    def process(self, element: tuple[int, list[dict], list[dict]]) -> Iterator[str]:
        group, rows, events = element
        if self._events_staging is not None:
            events_path = group_file(self._events_staging, self._run_id, group, EVENTS_PREFIX)
            write_parquet(events_path, events, EVENT_SCHEMA)
            self._events_written.inc(len(events))
        path = group_file(self._staging, self._run_id, group)
        write_parquet(path, rows, ROW_SCHEMA)
        yield path


class LabelGroups(beam.PTransform):
    """(group, path-list file) in, one Parquet file per group out, under `staging` (and one of
    its keyword events under `events_staging`, if given)."""

    def __init__(
        self,
        options: PipelineOptions,
        model_dir: str | None,
        model_version: str,
        batch_size: int,
        max_duration_s: float,
        staging: str,
        run_id: str,
        runtime: str = "auto",
        events_staging: str | None = None,
    ):
        super().__init__()
        filesystem_options = options.get_all_options(drop_default=True)
        self._read = ReadPathList(filesystem_options)
        self._label = LabelGroup(
            filesystem_options,
            model_dir,
            model_version,
            batch_size,
            max_duration_s,
            runtime,
            staging,
        )
        self._write = WriteGroup(filesystem_options, staging, events_staging, run_id)

    def expand(self, path_lists):
        return (
            path_lists
            | "Redistribute" >> beam.Reshuffle()
            | "ReadPathList" >> beam.ParDo(self._read)
            | "LabelGroup" >> beam.ParDo(self._label)
            | "WriteGroup" >> beam.ParDo(self._write)
        )
