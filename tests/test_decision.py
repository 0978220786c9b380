"""The keyword decision: thresholds per keyword, the deciding window, occurrences."""

import numpy as np
import pytest

from model.contract import LABELS
from model.decision import Decision, Occurrence, count_occurrences, find_occurrences

#                 yes   no    unknown silence
SILENCE = [0.01, 0.01, 0.08, 0.90]
SPEECH = [0.05, 0.10, 0.80, 0.05]
YES_80 = [0.80, 0.05, 0.10, 0.05]
NO_90 = [0.02, 0.90, 0.06, 0.02]
YES, NO, UNKNOWN, SILENT = range(4)


def test_a_window_is_a_keyword_only_at_or_above_its_threshold():
    windows = np.array([YES_80, NO_90, SPEECH, SILENCE], np.float32)
    assert list(Decision(yes=0.8, no=0.89).window_labels(windows)) == [YES, NO, UNKNOWN, SILENT]
    assert list(Decision(yes=0.81, no=0.91).window_labels(windows)) == [UNKNOWN] * 3 + [SILENT]


def test_a_keyword_window_below_threshold_does_not_hide_one_above_it():
    # The `no` window has the higher keyword score, but only the `yes` window clears its bar.
    windows = np.array([SILENCE, NO_90, YES_80], np.float32)
    assert Decision(yes=0.7, no=0.95).label_recording(windows) == (YES, 2)
    assert Decision(yes=0.7, no=0.85).label_recording(windows) == (NO, 1)


def test_without_a_keyword_the_most_keyword_like_window_decides():
    windows = np.array([SILENCE, SPEECH, SILENCE], np.float32)
    assert Decision().label_recording(windows) == (UNKNOWN, 1)
    assert Decision().label_recording(np.array([SILENCE], np.float32)) == (SILENT, 0)


def test_consecutive_windows_of_one_keyword_are_one_occurrence():
    labels = np.array([UNKNOWN, YES, YES, UNKNOWN, YES, NO, NO, SILENT, NO])
    assert count_occurrences(labels) == 4
    assert count_occurrences(np.array([UNKNOWN, SILENT])) == 0


def test_an_occurrence_spans_its_run_of_windows_and_keeps_its_best_score():
    probabilities = np.array([SPEECH, YES_80, YES_80, NO_90, SILENCE, NO_90], np.float32)
    probabilities[2, YES] = 0.85
    labels = Decision().window_labels(probabilities)
    assert find_occurrences(labels, probabilities) == [
        Occurrence(YES, 1, 2, pytest.approx(0.85)),
        Occurrence(NO, 3, 3, pytest.approx(0.90)),  # right after a yes: another word
        Occurrence(NO, 5, 5, pytest.approx(0.90)),  # apart from the first no: a second one
    ]
    assert find_occurrences(np.array([UNKNOWN, SILENT]), probabilities[:2]) == []


def test_the_thresholds_round_trip_through_metadata():
    decision = Decision(yes=0.83, no=0.91)
    assert Decision.from_metadata({"labels": list(LABELS), "decision": decision.as_metadata()}) == (
        decision
    )
    assert Decision.from_metadata({}) == Decision()
