"""From window probabilities to one output row per file: the Parquet contract lives here."""

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from model.contract import LABELS
from model.decision import Decision

SCORE_COLUMNS = tuple(f"score_{label}" for label in LABELS)

ROW_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        *(pa.field(column, pa.float32()) for column in SCORE_COLUMNS),
        pa.field("duration_s", pa.float32()),
        pa.field("sample_rate", pa.int32()),
        pa.field("channels", pa.int32()),
        pa.field("error", pa.string()),
        pa.field("model_version", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class RecordingInfo:
    """What is known about a file before scoring; everything but `path` may be unknown."""

    path: str
    duration_s: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    error: str | None = None


def display_path(path: str) -> str:
    """A path as the output stores it: a file name's bytes that are not UTF-8 (which Python keeps
    as surrogates) written as `\\xNN` escapes, so every name can be stored and still be found."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def make_row(
    info: RecordingInfo,
    probabilities: np.ndarray | None,
    model_version: str,
    decision: Decision,
) -> dict:
    """One output row; `probabilities` is [windows, 4], or None for a file that failed. The
    label is the model's `decision` (its keyword thresholds) on the file's windows."""
    row = {
        "path": display_path(info.path),
        "duration_s": info.duration_s,
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "error": info.error,
        "model_version": model_version,
        "label": None,
        **dict.fromkeys(SCORE_COLUMNS),
    }
    if probabilities is not None:
        label, window = decision.label_recording(probabilities)
        scores = probabilities[window]
        row["label"] = LABELS[label]
        row.update(
            {column: float(score) for column, score in zip(SCORE_COLUMNS, scores, strict=True)}
        )
    return row
