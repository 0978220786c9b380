"""The row that carries a file's label, decided by the model's keyword thresholds, and its
keyword events."""

import numpy as np
import pyarrow as pa

from model.decision import Decision
from pipeline.labels import EVENT_SCHEMA, ROW_SCHEMA, RecordingInfo, WindowScores, make_rows

#                     yes   no    unknown silence
SILENCE = [0.01, 0.01, 0.08, 0.90]
WEAK_YES = [0.40, 0.05, 0.50, 0.05]
CONFIDENT_YES = [0.93, 0.02, 0.04, 0.01]
CONFIDENT_NO = [0.02, 0.88, 0.09, 0.01]


def make_row(info: RecordingInfo, probabilities, version: str, decision: Decision) -> dict:
    return make_rows(info, scores(probabilities), version, decision)[0]


def scores(probabilities) -> WindowScores | None:
    """Windows every 0.5 s, each 1 s long, as the pipeline cuts a recording."""
    if probabilities is None:
        return None
    starts = 0.5 * np.arange(len(probabilities))
    return WindowScores(np.asarray(probabilities, np.float32), starts, starts + 1.0)


def test_the_schema_is_the_published_contract():
    assert [(field.name, field.type) for field in ROW_SCHEMA] == [
        ("path", pa.string()),
        ("label", pa.string()),
        ("score_yes", pa.float32()),
        ("score_no", pa.float32()),
        ("score_unknown", pa.float32()),
        ("score_silence", pa.float32()),
        ("duration_s", pa.float32()),
        ("sample_rate", pa.int32()),
        ("channels", pa.int32()),
        ("error", pa.string()),
        ("model_version", pa.string()),
        ("keyword_start_s", pa.float32()),
        ("keyword_end_s", pa.float32()),
        ("yes_count", pa.int32()),
        ("no_count", pa.int32()),
        ("window_start_s", pa.float32()),
        ("keyword_score", pa.float32()),
    ]
    assert [(field.name, field.type) for field in EVENT_SCHEMA] == [
        ("path", pa.string()),
        ("label", pa.string()),
        ("start_s", pa.float32()),
        ("end_s", pa.float32()),
        ("score", pa.float32()),
        ("model_version", pa.string()),
    ]


def test_a_keyword_anywhere_in_the_file_labels_it():
    probabilities = np.array([SILENCE, WEAK_YES, CONFIDENT_YES, SILENCE], np.float32)
    row = make_row(RecordingInfo("a.wav", 2.5, 16_000, 1), probabilities, "v1", Decision())
    assert row["label"] == "yes"
    assert row["score_yes"] == np.float32(0.93)
    assert row["score_silence"] == np.float32(0.01)


def test_the_most_confident_keyword_window_wins():
    probabilities = np.array([CONFIDENT_NO, CONFIDENT_YES], np.float32)
    assert make_row(RecordingInfo("a.wav"), probabilities, "v1", Decision())["label"] == "yes"


def test_a_file_without_keyword_windows_reports_its_most_keyword_like_window():
    probabilities = np.array([SILENCE, WEAK_YES, SILENCE], np.float32)
    row = make_row(RecordingInfo("a.wav"), probabilities, "v1", Decision())
    assert row["label"] == "unknown"
    assert row["score_yes"] == np.float32(0.40)


def test_an_error_row_has_no_label_nor_scores_and_keeps_the_error():
    info = RecordingInfo("bad.wav", error="empty_file: the file has 0 bytes")
    row = make_row(info, None, "v1", Decision())
    assert row["label"] is None
    assert all(row[f"score_{label}"] is None for label in ("yes", "no", "unknown", "silence"))
    assert row["error"] == "empty_file: the file has 0 bytes"
    assert set(row) == set(ROW_SCHEMA.names)
    pa.Table.from_pylist([row], schema=ROW_SCHEMA)  # the row fits the schema


def test_a_keyword_below_its_threshold_is_not_a_label():
    probabilities = np.array([SILENCE, CONFIDENT_YES], np.float32)
    row = make_row(RecordingInfo("a.wav"), probabilities, "v1", Decision(yes=0.95, no=0.5))
    assert row["label"] == "unknown"
    assert row["score_yes"] == np.float32(0.93)


def test_events_are_runs_of_keyword_windows_and_agree_with_the_label():
    #   window:     0        1              2              3        4             5
    probabilities = [SILENCE, CONFIDENT_YES, CONFIDENT_YES, SILENCE, CONFIDENT_NO, SILENCE]
    probabilities[2] = [0.97, 0.01, 0.01, 0.01]
    row, events = make_rows(RecordingInfo("a.wav"), scores(probabilities), "v1", Decision())
    assert [(e["label"], e["start_s"], e["end_s"]) for e in events] == [
        ("yes", 0.5, 2.0),  # windows 1 and 2 overlap: one occurrence
        ("no", 2.0, 3.0),
    ]
    assert events[0]["score"] == np.float32(0.97)
    assert (row["label"], row["yes_count"], row["no_count"]) == ("yes", 1, 1)
    assert (row["keyword_start_s"], row["keyword_end_s"]) == (0.5, 2.0)
    assert row["window_start_s"] == 1.0  # the deciding window, 0.97
    pa.Table.from_pylist(events, schema=EVENT_SCHEMA)  # the events fit their schema


def test_a_file_without_keywords_has_no_events_and_zero_counts():
    row, events = make_rows(RecordingInfo("a.wav"), scores([SILENCE, WEAK_YES]), "v1", Decision())
    assert events == []
    assert (row["yes_count"], row["no_count"], row["keyword_start_s"]) == (0, 0, None)


def test_an_error_row_has_no_counts():
    row, events = make_rows(RecordingInfo("bad.wav", error="x: y"), None, "v1", Decision())
    assert events == [] and row["yes_count"] is None and row["no_count"] is None
