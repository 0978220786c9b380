"""The labelling job as a few named Beam transforms: read a group's paths, label, write.

The launcher splits the input into groups and stores each group's paths in a file; the job
spreads the groups over the workers and labels each group inside one `process` call, batching
its windows there. Nothing is emitted from `finish_bundle` and no sink is used: some runners
(Beam 2.77's DaskRunner) drop what `finish_bundle` emits, and this shape is correct on all.
"""

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.shared import Shared

from model.serving import KeywordModel
from pipeline.labels import make_row
from pipeline.loading import LoadedRecording, load_recording
from pipeline.output import group_file, read_path_list, write_parquet

# Batches scored at once, each by a one-thread onnxruntime call: on 2 cores this labels about 18%
# more files/s than one batch at a time on two onnxruntime threads (bench/README.md).
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


class LabelGroup(FileSystemsDoFn):
    """Load a group's recordings and score their windows in full batches; one row per path.

    The model is loaded once per worker process through `Shared`, and shared by its threads.
    Batches are scored in SCORING_THREADS threads while the next one is decoded: onnxruntime,
    TensorFlow, libsndfile and soxr release the GIL, so every core works, and at most
    SCORING_THREADS + 1 batches are held at once.
    """

    def __init__(
        self,
        filesystem_options: dict,
        model_dir: str | None,
        model_version: str,
        batch_size: int,
        max_duration_s: float,
        runtime: str = "auto",
    ):
        super().__init__(filesystem_options)
        self._model_dir = model_dir
        self._runtime = runtime
        self._model_version = model_version
        self._batch_size = batch_size
        self._max_duration_s = max_duration_s
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

    def process(self, element: tuple[int, list[bytes]]) -> Iterator[tuple[int, list[dict]]]:
        group, encoded_paths = element
        paths = [path_from_bytes(path) for path in encoded_paths]
        rows: list[dict] = []
        scoring: deque[Future] = deque()
        for batch in self._batches(paths, rows):
            if len(scoring) == SCORING_THREADS:
                rows.extend(scoring.popleft().result())
            scoring.append(self._scorer.submit(self._score, batch))
        for pending in scoring:
            rows.extend(pending.result())
        rows.sort(key=lambda row: row["path"])
        yield group, rows

    def _batches(self, paths: list[str], error_rows: list[dict]) -> Iterator[list[LoadedRecording]]:
        """Recordings grouped until they hold at least batch_size windows; a recording that
        cannot be loaded becomes its error row at once."""
        pending: list[LoadedRecording] = []
        pending_windows = 0
        for path in paths:
            recording = load_recording(path, self._max_duration_s)
            if recording.info.error is not None:
                error_rows.append(
                    make_row(recording.info, None, self._model_version, self._model.decision)
                )
                continue
            pending.append(recording)
            pending_windows += len(recording.windows)
            if pending_windows >= self._batch_size:
                yield pending
                pending, pending_windows = [], 0
        if pending:
            yield pending

    def _score(self, recordings: list[LoadedRecording]) -> list[dict]:
        windows = np.concatenate([recording.windows for recording in recordings])
        probabilities = np.concatenate(
            [
                self._model.predict(windows[start : start + self._batch_size])
                for start in range(0, len(windows), self._batch_size)
            ]
        )
        rows, offset = [], 0
        for recording in recordings:
            scores = probabilities[offset : offset + len(recording.windows)]
            rows.append(make_row(recording.info, scores, self._model_version, self._model.decision))
            offset += len(recording.windows)
        return rows


class WriteGroup(FileSystemsDoFn):
    """(group, rows) -> that group's Parquet file in staging; a retry overwrites the same file."""

    def __init__(self, filesystem_options: dict, staging: str, run_id: str):
        super().__init__(filesystem_options)
        self._staging = staging
        self._run_id = run_id

    def process(self, element: tuple[int, list[dict]]) -> Iterator[str]:
        group, rows = element
        path = group_file(self._staging, self._run_id, group)
        write_parquet(path, rows)
        yield path


class LabelGroups(beam.PTransform):
    """(group, path-list file) in, one Parquet file per group out, under `staging`."""

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
    ):
        super().__init__()
        filesystem_options = options.get_all_options(drop_default=True)
        self._read = ReadPathList(filesystem_options)
        self._label = LabelGroup(
            filesystem_options, model_dir, model_version, batch_size, max_duration_s, runtime
        )
        self._write = WriteGroup(filesystem_options, staging, run_id)

    def expand(self, path_lists):
        return (
            path_lists
            | "Redistribute" >> beam.Reshuffle()
            | "ReadPathList" >> beam.ParDo(self._read)
            | "LabelGroup" >> beam.ParDo(self._label)
            | "WriteGroup" >> beam.ParDo(self._write)
        )
