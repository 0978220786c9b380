"""The labelling job as a few named Beam transforms: match, load, score, write."""

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet
from apache_beam.utils.shared import Shared

from model.audio import AudioError, decode, split_windows, to_model_rate
from model.contract import CLIP_SAMPLES
from model.serving import KeywordModel
from pipeline.labels import ROW_SCHEMA, RecordingInfo, make_row

GLOB_CHARACTERS = "*?["
OUTPUT_PREFIX = "labels"


@dataclass(frozen=True)
class LoadedRecording:
    info: RecordingInfo
    windows: np.ndarray  # float32 [n, CLIP_SAMPLES]; no windows when info.error is set


def is_wav(path: str) -> bool:
    return path.lower().endswith(".wav")


def list_input(input_path: str) -> Iterator[str]:
    """Every file an --input names: a glob as given, or a directory's `.wav` files, recursively.

    Local directories are walked here rather than through Beam's listing, which silently skips
    entries it cannot stat (a broken symlink would otherwise lose its row).
    """
    if any(char in input_path for char in GLOB_CHARACTERS):
        for match in FileSystems.match([input_path])[0].metadata_list:
            yield match.path
    elif os.path.isdir(input_path):
        for directory, _, files in os.walk(input_path):
            yield from (os.path.join(directory, name) for name in sorted(files) if is_wav(name))
    elif FileSystems.exists(input_path) and not input_path.endswith("/"):
        yield input_path
    else:
        prefix = input_path.rstrip("/") + "/**"
        for match in FileSystems.match([prefix])[0].metadata_list:
            if is_wav(match.path):
                yield match.path


class MatchWavFiles(beam.PTransform):
    """Paths of the input files, spread across workers (listing happens on one of them)."""

    def __init__(self, input_path: str):
        super().__init__()
        self._input_path = input_path

    def expand(self, pbegin):
        return (
            pbegin
            | "Input" >> beam.Create([self._input_path])
            | "List" >> beam.FlatMap(list_input)
            | "Redistribute" >> beam.Reshuffle()
        )


class LoadAudio(beam.DoFn):
    """Read, decode and window one file; a file that fails becomes a recording with an error."""

    def process(self, path: str) -> Iterator[LoadedRecording]:
        no_windows = np.zeros((0, CLIP_SAMPLES), np.float32)
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as file:
                data = file.read()
        except Exception as error:  # noqa: BLE001 - any filesystem failure to read is a row
            message = f"unreadable_file: {type(error).__name__}: {error}"
            yield LoadedRecording(RecordingInfo(path, error=message), no_windows)
            return
        try:
            audio = decode(data)
        except AudioError as error:
            yield LoadedRecording(RecordingInfo(path, error=str(error)), no_windows)
            return
        info = RecordingInfo(
            path,
            duration_s=audio.duration_s,
            sample_rate=audio.sample_rate,
            channels=audio.channels,
        )
        yield LoadedRecording(info, split_windows(to_model_rate(audio)))


def load_model(model_dir: str) -> KeywordModel:
    return KeywordModel(model_dir)


class ScoreWindows(beam.DoFn):
    """Score a batch of recordings' windows with one model per worker process.

    The model is loaded once per process through `Shared`, so all threads of a worker use it.
    """

    def __init__(self, model_dir: str, batch_size: int):
        self._model_dir = model_dir
        self._batch_size = batch_size
        self._shared_model = Shared()

    def setup(self):
        self._model = self._shared_model.acquire(
            lambda: load_model(self._model_dir), tag=self._model_dir
        )

    def process(self, batch: list[LoadedRecording]) -> Iterator[tuple[RecordingInfo, np.ndarray]]:
        windows = np.concatenate([recording.windows for recording in batch])
        probabilities = np.concatenate(
            [
                self._model.predict(windows[start : start + self._batch_size])
                for start in range(0, max(len(windows), 1), self._batch_size)
            ]
        )
        offset = 0
        for recording in batch:
            count = len(recording.windows)
            yield recording.info, probabilities[offset : offset + count]
            offset += count


class LabelRecordings(beam.PTransform):
    """Paths in, one output row per path out: labelled, or with an error."""

    def __init__(self, model_dir: str, model_version: str, batch_size: int):
        super().__init__()
        self._model_dir = model_dir
        self._model_version = model_version
        self._batch_size = batch_size

    def expand(self, paths):
        return (
            paths
            | "LoadAudio" >> beam.ParDo(LoadAudio())
            | "Batch"
            >> beam.BatchElements(
                min_batch_size=self._batch_size,
                max_batch_size=self._batch_size,
                element_size_fn=lambda recording: max(1, len(recording.windows)),
            )
            | "ScoreWindows" >> beam.ParDo(ScoreWindows(self._model_dir, self._batch_size))
            | "MakeRow" >> beam.MapTuple(self._row)
        )

    def _row(self, info: RecordingInfo, probabilities: np.ndarray) -> dict:
        return make_row(info, probabilities if info.error is None else None, self._model_version)


class WriteLabels(beam.PTransform):
    """Rows to a Parquet dataset: `<file_prefix>-SSSSS-of-NNNNN.parquet` under `output_dir`."""

    def __init__(self, output_dir: str, file_prefix: str = OUTPUT_PREFIX):
        super().__init__()
        self._output_dir = output_dir
        self._file_prefix = file_prefix

    def expand(self, rows):
        prefix = FileSystems.join(self._output_dir, self._file_prefix)
        return rows | "WriteParquet" >> WriteToParquet(
            prefix, ROW_SCHEMA, file_name_suffix=".parquet"
        )


def label_pipeline(
    pipeline: beam.Pipeline,
    input_path: str,
    output_dir: str,
    model_dir: str | Path,
    model_version: str,
    batch_size: int,
    output_prefix: str = OUTPUT_PREFIX,
) -> Iterable:
    """Wire the whole job onto `pipeline`; returns the rows, for tests to assert on."""
    rows = (
        pipeline
        | "MatchWavFiles" >> MatchWavFiles(input_path)
        | "LabelRecordings" >> LabelRecordings(str(model_dir), model_version, batch_size)
    )
    rows | "WriteLabels" >> WriteLabels(output_dir, output_prefix)
    return rows
