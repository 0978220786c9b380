"""Choosing the thresholds: the most recall within every false-keyword budget."""

import json

import numpy as np
import pytest

from model.decision import Decision
from model.evaluation.eval_sets import EvalRecording, LongRecording, PlacedKeyword
from model.evaluation.thresholds import (
    ValEvidence,
    choose_decision,
    choose_thresholds,
    false_figures,
    long_occurrences,
    operating_points,
    val_figures,
    words_said,
)

#              yes   no    unknown silence
YES_95 = [0.95, 0.01, 0.03, 0.01]
NO_90 = [0.02, 0.90, 0.07, 0.01]
UNKNOWN_AS_YES_70 = [0.70, 0.05, 0.24, 0.01]
UNKNOWN_AS_NO_60 = [0.05, 0.60, 0.34, 0.01]
SPEECH = [0.05, 0.05, 0.85, 0.05]
TONE = [0.01, 0.02, 0.07, 0.90]
TONE_AS_NO_80 = [0.01, 0.80, 0.09, 0.10]


def evidence() -> ValEvidence:
    clips = [YES_95] * 50 + [NO_90] * 50 + [UNKNOWN_AS_YES_70] * 25 + [UNKNOWN_AS_NO_60] * 25
    clips += [SPEECH] * 400
    labels = [0] * 50 + [1] * 50 + [2] * 450
    words = ["yes"] * 50 + ["no"] * 50 + ["down"] * 25 + ["go"] * 25 + ["cat"] * 400
    answer = EvalRecording("a", np.zeros(16_000, np.float32), 16_000, "yes", "synthetic")
    other = EvalRecording("b", np.zeros(16_000, np.float32), 16_000, "none", "synthetic")
    ten_minutes = EvalRecording("c", np.zeros(9_600_000, np.float32), 16_000, "none", "chain")
    sentence = EvalRecording("d", np.zeros(48_000, np.float32), 16_000, "none", "read speech")
    return ValEvidence(
        clip_probabilities=np.array(clips, np.float32),
        clip_labels=np.array(labels),
        clip_words=words,
        non_speech_probabilities=np.array([TONE] * 90 + [TONE_AS_NO_80] * 10, np.float32),
        answers=[answer, other],
        answer_windows=[np.array([SPEECH, YES_95], np.float32), np.array([SPEECH], np.float32)],
        continuous=[ten_minutes, sentence, sentence],
        continuous_windows=[
            np.array([SPEECH, UNKNOWN_AS_YES_70, SPEECH], np.float32),
            np.array([SPEECH, SPEECH, UNKNOWN_AS_NO_60, SPEECH, SPEECH], np.float32),
            np.array([SPEECH] * 5, np.float32),
        ],
        # 3 s: windows start at -0.5, 0, ..., 2.5 s; a `no` centred at 1.5 s, heard in window 4.
        long=[LongRecording("e", np.zeros(48_000, np.float32), 16_000, (THREE_S_NO,))],
        long_windows=[np.array([SPEECH] * 4 + [NO_90] + [SPEECH] * 2, np.float32)],
    )


THREE_S_NO = PlacedKeyword("no", 1.5)


def test_a_long_recording_keyword_is_held_by_the_windows_around_its_centre():
    recording = evidence().long[0]
    ((label, windows),) = words_said(recording, 7)
    assert label == "no" and list(windows) == [2, 3, 4]
    assert long_occurrences(Decision(0.5, 0.5), evidence()) == (1.0, 1.0)
    assert long_occurrences(Decision(0.5, 0.95), evidence()) == (0.0, 0.0)


def test_false_figures_count_both_keywords_on_every_kind_of_evidence():
    figures = false_figures(Decision(0.5, 0.5), evidence())
    assert figures["clips"] == 50 / 450
    assert figures["worst_word"] == 1.0  # every down and go clip fires
    assert figures["non_speech"] == 0.1
    assert figures["wrong_labels"] == 25 / 75  # labelled `yes`: 50 yes clips, 25 down clips
    assert figures["non_answers"] == 0.0
    assert figures["continuous_per_10_min"] == pytest.approx(2 / 1.01)  # 10 min + two 3 s files
    assert figures["sentences"] == 0.5


def test_a_keyword_labelled_nowhere_has_precision_zero_rather_than_nan():
    figures = val_figures(Decision(0.5, 0.99), evidence())  # no `no` reaches 0.99
    assert figures["no_recall"] == 0.0 and figures["no_precision"] == 0.0  # as test figures do
    assert figures["yes_precision"] == 50 / 75  # 50 yes clips and 25 down clips labelled yes
    assert figures["yes_recall"] == 1.0
    json.loads(json.dumps(figures), parse_constant=pytest.fail)  # no NaN in metadata.json
    row = operating_points(evidence(), [0.99]).splitlines()[-1]  # nothing labelled a keyword
    assert row.split(" | ")[3:5] == ["0.000", "0.000"]


def test_the_chosen_thresholds_sit_just_above_the_false_keywords():
    chosen = choose_thresholds(evidence())
    assert 0.70 < chosen.yes <= 0.95 and 0.80 < chosen.no <= 0.90  # tones reach 0.80 for no
    figures = false_figures(chosen, evidence())
    assert figures["clips"] == figures["non_speech"] == figures["wrong_labels"] == 0.0


def test_the_decision_is_fitted_and_measured_on_cross_fitted_scores():
    decision, scored = choose_decision(evidence())
    assert decision.context is not None
    assert np.array_equal(scored.clip_probabilities, evidence().clip_probabilities)
    for windows_of in ("answer_windows", "continuous_windows", "long_windows"):
        before_all, after_all = getattr(evidence(), windows_of), getattr(scored, windows_of)
        for before, after in zip(before_all, after_all, strict=True):
            assert after.shape == before.shape
            # unknown and silence are kept; only the keyword columns become scores
            assert after[:, 2:] == pytest.approx(before[:, 2:])
    plain, unscored = choose_decision(evidence(), context=False)
    assert plain.context is None and unscored is not None
