"""The labelling job as a few named Beam transforms: read paths, group, label, write.

Batching is done inside `LabelGroup.process` over a GroupByKey of paths, not with BatchElements
or a sink that emits in `finish_bundle`: some runners (Beam 2.77's DaskRunner) drop elements
emitted there, and this shape is correct on every runner.
"""

import zlib
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.utils.shared import Shared

from model.serving import KeywordModel
from pipeline.labels import make_row
from pipeline.loading import LoadedRecording, load_recording
from pipeline.output import group_file, read_path_list, write_parquet

FILES_PER_GROUP_RANGE = (256, 4_096)  # a group is at least one full batch, at most one file
TARGET_GROUPS = 16  # enough groups to keep a few workers busy when there is enough work


def groups_for(file_count: int) -> int:
    """How many groups to split the files into: few for small inputs, more for large ones."""
    low, high = FILES_PER_GROUP_RANGE
    files_per_group = min(max(file_count // TARGET_GROUPS, low), high)
    return max(1, -(-file_count // files_per_group))


def group_of(path: str, num_groups: int) -> int:
    """A stable group for a path: the same in every worker process and on every retry."""
    return zlib.crc32(path.encode("utf-8", "surrogateescape")) % num_groups


class ReadPaths(beam.PTransform):
    """The paths stored in the launcher's path-list files."""

    def __init__(self, path_lists: list[str]):
        super().__init__()
        self._path_lists = path_lists

    def expand(self, pbegin):
        return (
            pbegin
            | "PathLists" >> beam.Create(self._path_lists)
            | "ReadPathList" >> beam.FlatMap(read_path_list)
        )


def load_model(model_dir: str) -> KeywordModel:
    return KeywordModel(model_dir)


class LabelGroup(beam.DoFn):
    """Load a group's recordings and score their windows in full batches; one row per path.

    The model is loaded once per worker process through `Shared`, and shared by its threads.
    """

    def __init__(self, model_dir: str, model_version: str, batch_size: int, max_duration_s: float):
        self._model_dir = model_dir
        self._model_version = model_version
        self._batch_size = batch_size
        self._max_duration_s = max_duration_s
        self._shared_model = Shared()

    def setup(self):
        self._model = self._shared_model.acquire(
            lambda: load_model(self._model_dir), tag=self._model_dir
        )

    def process(self, element: tuple[int, Iterable[str]]) -> Iterator[tuple[int, list[dict]]]:
        group, paths = element
        rows: list[dict] = []
        pending: list[LoadedRecording] = []
        pending_windows = 0
        for path in sorted(paths):
            recording = load_recording(path, self._max_duration_s)
            if recording.info.error is not None:
                rows.append(make_row(recording.info, None, self._model_version))
                continue
            pending.append(recording)
            pending_windows += len(recording.windows)
            if pending_windows >= self._batch_size:
                rows.extend(self._score(pending))
                pending, pending_windows = [], 0
        rows.extend(self._score(pending))
        yield group, rows

    def _score(self, recordings: list[LoadedRecording]) -> Iterator[dict]:
        if not recordings:
            return
        windows = np.concatenate([recording.windows for recording in recordings])
        probabilities = np.concatenate(
            [
                self._model.predict(windows[start : start + self._batch_size])
                for start in range(0, len(windows), self._batch_size)
            ]
        )
        offset = 0
        for recording in recordings:
            count = len(recording.windows)
            yield make_row(
                recording.info, probabilities[offset : offset + count], self._model_version
            )
            offset += count


class LabelRecordings(beam.PTransform):
    """Paths in, (group, rows) out: every path in exactly one row, labelled or with an error."""

    def __init__(
        self,
        model_dir: str,
        model_version: str,
        batch_size: int,
        max_duration_s: float,
        num_groups: int,
    ):
        super().__init__()
        self._label_group = LabelGroup(model_dir, model_version, batch_size, max_duration_s)
        self._num_groups = num_groups

    def expand(self, paths):
        num_groups = self._num_groups
        return (
            paths
            | "KeyByGroup" >> beam.Map(lambda path: (group_of(path, num_groups), path))
            | "GroupPaths" >> beam.GroupByKey()  # also spreads the work across workers
            | "LabelGroup" >> beam.ParDo(self._label_group)
        )


class WriteGroups(beam.PTransform):
    """Each group's rows to its own Parquet file in the staging directory; emits the file."""

    def __init__(self, staging: str, run_id: str):
        super().__init__()
        self._staging = staging
        self._run_id = run_id

    def expand(self, grouped_rows):
        return grouped_rows | "WriteParquet" >> beam.MapTuple(self._write)

    def _write(self, group: int, rows: list[dict]) -> str:
        path = group_file(self._staging, self._run_id, group)
        write_parquet(path, rows)
        return path
