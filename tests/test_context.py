"""The context rule: a keyword window's score moved by the windows around it."""

import numpy as np
import pytest

from model.context import FEATURES, OFFSETS, Context
from model.contract import LABELS
from model.decision import Decision
from model.training.context_fit import fit_context
from pipeline.labels import RecordingInfo, WindowScores, make_rows

#                 yes   no    unknown silence
SILENCE = [0.01, 0.01, 0.08, 0.90]
SPEECH = [0.05, 0.10, 0.80, 0.05]
NO_90 = [0.02, 0.90, 0.06, 0.02]
YES, NO, UNKNOWN, SILENT = range(4)
UNKNOWN_FEATURE = FEATURES.index("unknown")


def distrust_speech_before(weight: float = -4.0) -> Context:
    """A rule that lowers a keyword heard right after speech, and only that."""
    weights = np.zeros((len(OFFSETS), len(FEATURES)))
    weights[OFFSETS.index(-1), UNKNOWN_FEATURE] = weight
    return Context.from_weights(weights, weights)


def test_a_window_with_silence_around_keeps_its_probability():
    context = distrust_speech_before()
    alone = np.array([NO_90], np.float32)
    assert context.scores(alone)[0, NO] == pytest.approx(0.90)
    padded = np.array([SILENCE, NO_90, SILENCE], np.float32)
    assert context.scores(padded)[1, NO] == pytest.approx(0.90, abs=0.05)


def test_speech_before_a_keyword_lowers_its_score_and_the_label():
    windows = np.array([SPEECH, NO_90, SILENCE], np.float32)
    scores = distrust_speech_before().scores(windows)
    assert scores[1, NO] < 0.4
    assert list(scores[:, [UNKNOWN, SILENT]].ravel()) == list(windows[:, [2, 3]].ravel())
    with_context = Decision(yes=0.8, no=0.8, context=distrust_speech_before())
    assert with_context.label_recording(windows)[0] == UNKNOWN
    assert Decision(yes=0.8, no=0.8).label_recording(windows) == (NO, 1)
    # A 1 s clip is a lone window: the context leaves its label to the thresholds.
    assert with_context.clip_labels(np.array([NO_90], np.float32))[0] == NO


def test_only_keyword_candidates_get_a_score():
    scores = distrust_speech_before(0.0).scores(np.array([SPEECH, SILENCE], np.float32))
    assert scores[:, [YES, NO]].max() == 0.0


def test_the_rule_round_trips_through_metadata_and_the_decision():
    decision = Decision(0.7, 0.8, distrust_speech_before())
    stored = {"labels": list(LABELS), "decision": decision.as_metadata()}
    assert Decision.from_metadata(stored) == decision
    stored["decision"]["context"]["offsets"] = [-1, 1]
    with pytest.raises(ValueError, match="offsets"):
        Decision.from_metadata(stored)


def test_fitting_learns_to_distrust_keywords_inside_running_speech():
    """Answers: a `no` with silence before it; running speech: `no`-like windows between
    words. The fitted rule must keep the first and lower the second."""
    rng = np.random.default_rng(0)

    def recording(before: list, level: float) -> np.ndarray:
        """Longer than an answer: the weights of recordings of more than 5 s."""
        keyword = [0.02, level, 0.96 - level, 0.02]
        return np.array([*[SILENCE] * 10, *before, keyword, SPEECH, SILENCE], np.float32)

    levels = rng.uniform(0.5, 1, 40)
    said_no = (("no", np.arange(10, 15)),)
    answers = [(recording([SILENCE, SILENCE], level), said_no) for level in levels]
    speech = [(recording([SPEECH, SPEECH], level), ()) for level in levels]
    context = fit_context(answers + speech)
    assert np.asarray(context.no)[OFFSETS.index(-1), UNKNOWN_FEATURE] < -1
    kept = np.array([context.scores(windows)[12, NO] for windows, _ in answers])
    lowered = np.array([context.scores(windows)[12, NO] for windows, _ in speech])
    assert (kept > lowered).all()
    assert np.mean(kept - lowered) > 0.2


def test_an_answers_words_around_its_keyword_do_not_lower_it_as_running_speech_does():
    """ "no thank you" in a 2 s file is an answer; the same windows inside a minute of running
    speech are not. Fitted on both, the rule keeps the first and lowers the second."""
    rng = np.random.default_rng(1)

    def keyword(level: float) -> list[float]:
        return [0.02, level, 0.96 - level, 0.02]

    levels = rng.uniform(0.5, 1, 40)
    answers = [
        (np.array([keyword(level), SPEECH, SPEECH, SILENCE], np.float32), (("no", np.arange(4)),))
        for level in levels
    ]
    non_answers = [
        (np.array([SPEECH, keyword(level / 2), SPEECH, SILENCE], np.float32), ())
        for level in levels
    ]
    running = [
        (np.array([*[SPEECH] * 8, keyword(level), *[SPEECH] * 8], np.float32), ())
        for level in levels
    ]
    context = fit_context(answers + non_answers + running)
    in_answers = np.array([context.scores(windows)[0, NO] for windows, _ in answers])
    assert (in_answers >= levels - 0.05).all()  # kept, or raised
    in_speech = np.array([context.scores(windows)[8, NO] for windows, _ in running])
    assert (in_speech < levels - 0.2).all()
    stored = {"decision": Decision(0.7, 0.8, context).as_metadata()}
    assert Decision.from_metadata(stored).context == context


def test_a_row_reports_the_score_its_label_came_from():
    windows = np.array([SPEECH, NO_90, SILENCE], np.float32)
    starts = 0.5 * np.arange(len(windows))
    scores = WindowScores(windows, starts, starts + 1.0)
    decision = Decision(yes=0.8, no=0.8, context=distrust_speech_before())
    row, events = make_rows(RecordingInfo("a.wav"), scores, "v1", decision)
    assert (row["label"], row["score_no"], events) == ("unknown", pytest.approx(0.90), [])
    assert row["keyword_score"] == pytest.approx(decision.keyword_scores(windows)[1, NO])
    assert row["keyword_score"] < 0.4
    row, events = make_rows(RecordingInfo("a.wav"), scores, "v1", Decision(yes=0.8, no=0.8))
    assert (row["label"], row["keyword_score"], len(events)) == ("no", pytest.approx(0.90), 1)
