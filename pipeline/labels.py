"""From window probabilities to a file's output row and its event rows: the Parquet contracts
live here."""

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from model.contract import LABELS
from model.decision import KEYWORD_IDS, NO, YES, Decision, find_occurrences

SCORE_COLUMNS = tuple(f"score_{label}" for label in LABELS)
# The error kind of a file whose bytes could not be fetched, after the retries, for a reason
# that may pass (throttling, a dropped connection): --skip_existing always tries it again.
READ_FAILED = "read_failed"

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
        # Where the keyword that decided a yes or no label was heard, and the file's occurrences.
        pa.field("keyword_start_s", pa.float32()),
        pa.field("keyword_end_s", pa.float32()),
        pa.field("yes_count", pa.int32()),
        pa.field("no_count", pa.int32()),
        # Start of the window whose scores the row carries: where to listen (the report does).
        pa.field("window_start_s", pa.float32()),
        # That window's keyword score after the context rule: what the thresholds apply to.
        pa.field("keyword_score", pa.float32()),
    ]
)

# One row per keyword occurrence (`--events`): where in the file it was heard.
EVENT_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("start_s", pa.float32(), nullable=False),
        pa.field("end_s", pa.float32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
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


def error_kind(error: str) -> str:
    """The short stable tag of an error row's `error` (`<kind>: <what went wrong>`)."""
    return error.split(":", 1)[0]


def display_path(path: str) -> str:
    """A path as the output stores it: a file name's bytes that are not UTF-8 (which Python keeps
    as surrogates) written as `\\xNN` escapes, so every name can be stored and still be found."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class WindowScores:
    """A recording's window probabilities [n, 4] and the span of audio each window holds."""

    probabilities: np.ndarray
    starts_s: np.ndarray
    ends_s: np.ndarray


def make_rows(
    info: RecordingInfo, scores: WindowScores | None, model_version: str, decision: Decision
) -> tuple[dict, list[dict]]:
    """A file's output row and its event rows; `scores` is None for a file that failed.

    The label is the model's `decision` (its context rule and thresholds) on the file's windows,
    and the events are the runs of windows that decision labels a keyword, so a file's label
    and its events never disagree: a `yes` file has a `yes` event where its deciding window is.
    """
    path = display_path(info.path)
    row = {
        "path": path,
        "duration_s": info.duration_s,
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "error": info.error,
        "model_version": model_version,
        "label": None,
        **dict.fromkeys(SCORE_COLUMNS),
        "keyword_start_s": None,
        "keyword_end_s": None,
        "yes_count": None,
        "no_count": None,
        "window_start_s": None,
        "keyword_score": None,
    }
    if scores is None:
        return row, []
    probabilities = scores.probabilities
    decided = decision.decide(probabilities)
    label, window = decided.label, decided.window
    occurrences = find_occurrences(decided.window_labels, probabilities)
    row["label"] = LABELS[label]
    row.update(
        {
            column: float(score)
            for column, score in zip(SCORE_COLUMNS, probabilities[window], strict=True)
        }
    )
    row["window_start_s"] = float(scores.starts_s[window])
    row["keyword_score"] = float(decided.scores[window, [YES, NO]].max())
    row["yes_count"] = sum(occurrence.label == YES for occurrence in occurrences)
    row["no_count"] = sum(occurrence.label == NO for occurrence in occurrences)
    events = []
    for occurrence in occurrences:
        start_s = float(scores.starts_s[occurrence.first_window])
        end_s = float(scores.ends_s[occurrence.last_window])
        events.append(
            {
                "path": path,
                "label": LABELS[occurrence.label],
                "start_s": start_s,
                "end_s": end_s,
                "score": occurrence.score,
                "model_version": model_version,
            }
        )
        if label in KEYWORD_IDS and occurrence.first_window <= window <= occurrence.last_window:
            row["keyword_start_s"], row["keyword_end_s"] = start_s, end_s
    return row, events
