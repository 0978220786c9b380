"""The row that carries a file's label, decided by the model's keyword thresholds."""

import numpy as np
import pyarrow as pa

from model.decision import Decision
from pipeline.labels import ROW_SCHEMA, RecordingInfo, make_row

#                     yes   no    unknown silence
SILENCE = [0.01, 0.01, 0.08, 0.90]
WEAK_YES = [0.40, 0.05, 0.50, 0.05]
CONFIDENT_YES = [0.93, 0.02, 0.04, 0.01]
CONFIDENT_NO = [0.02, 0.88, 0.09, 0.01]


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
