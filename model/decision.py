"""The keyword decision: from a recording's window probabilities to its label.

One rule, used by the labelling pipeline and by `model.evaluation.evaluate`, so the figures measured
are those of the labels users get. A window says `yes` (or `no`) only when that keyword's score
reaches its threshold: its calibrated probability moved by the windows around it
(`model.context`; unchanged for a window with silence around, such as a 1 s file). The
thresholds and the context weights are chosen on val for false-keyword budgets
(`model.evaluation.thresholds`) and stored in the artifact's `metadata.json` under `decision`.
"""

from dataclasses import dataclass

import numpy as np

from model.context import Context
from model.contract import LABELS

KEYWORDS = ("yes", "no")
YES, NO, UNKNOWN, SILENCE = (LABELS.index(label) for label in ("yes", "no", "unknown", "silence"))
KEYWORD_IDS = (YES, NO)
# Thresholds of an artifact that stores none: the plain argmax of two classes at most.
DEFAULT_THRESHOLDS = {"yes": 0.5, "no": 0.5}


@dataclass(frozen=True)
class Decision:
    """Per-keyword score thresholds, and the context rule that makes the scores (None: a
    window's score is its probability)."""

    yes: float = DEFAULT_THRESHOLDS["yes"]
    no: float = DEFAULT_THRESHOLDS["no"]
    context: Context | None = None

    @classmethod
    def from_metadata(cls, metadata: dict) -> "Decision":
        stored = metadata.get("decision", {})
        thresholds = stored.get("thresholds", DEFAULT_THRESHOLDS)
        context = Context.from_metadata(stored["context"]) if "context" in stored else None
        return cls(float(thresholds["yes"]), float(thresholds["no"]), context)

    def as_metadata(self) -> dict:
        context = {"context": self.context.as_metadata()} if self.context else {}
        return {"thresholds": {"yes": self.yes, "no": self.no}, **context}

    def keyword_scores(self, probabilities: np.ndarray) -> np.ndarray:
        """One recording's windows [n, 4] (in time order) with the `yes` and `no` columns
        replaced by the scores the thresholds apply to."""
        return self.context.scores(probabilities) if self.context else probabilities

    def window_labels(self, probabilities: np.ndarray) -> np.ndarray:
        """Label index of each window of one recording [n, 4], windows in time order: the
        keyword whose score (keyword_scores) reaches its threshold; otherwise `unknown` or
        `silence`, whichever is likelier."""
        return self.threshold_labels(self.keyword_scores(probabilities))

    def clip_labels(self, probabilities: np.ndarray) -> np.ndarray:
        """Label index of each row [n, 4] as a recording of that one window (a 1 s clip), as
        window_labels gives it: with silence around, a window's score is its probability."""
        lone = self.context.lone_scores(probabilities) if self.context else probabilities
        return self.threshold_labels(lone)

    def threshold_labels(self, scores: np.ndarray) -> np.ndarray:
        """Label index of each window from its scores [n, 4] (keyword_scores): the keyword
        whose score is the larger of the two and reaches its threshold; otherwise `unknown` or
        `silence`, whichever is likelier."""
        keyword = np.where(scores[:, YES] >= scores[:, NO], YES, NO)
        keyword_score = scores[np.arange(len(scores)), keyword]
        threshold = np.where(keyword == YES, self.yes, self.no)
        other = np.where(scores[:, UNKNOWN] >= scores[:, SILENCE], UNKNOWN, SILENCE)
        return np.where(keyword_score >= threshold, keyword, other)

    def decide(self, probabilities: np.ndarray) -> "RecordingDecision":
        """The decision on a recording's windows [n, 4], in time order.

        A recording is `yes` or `no` when some window is: of the windows labelled a keyword, the
        one with the highest keyword score decides. With none, the window with the highest
        keyword probability decides, and the label is its likelier of `unknown` and `silence`.
        The row reports the probabilities and the keyword score of the deciding window.
        """
        scores = self.keyword_scores(probabilities)
        labels = self.threshold_labels(scores)
        fired = np.isin(labels, KEYWORD_IDS)
        keyword_scores = (scores if fired.any() else probabilities)[:, list(KEYWORD_IDS)].max(1)
        window = int(
            np.argmax(np.where(fired, keyword_scores, -1.0) if fired.any() else keyword_scores)
        )
        return RecordingDecision(int(labels[window]), window, labels, scores)

    def label_recording(self, probabilities: np.ndarray) -> tuple[int, int]:
        """(label index, deciding window) of a recording's windows [n, 4] (decide)."""
        decided = self.decide(probabilities)
        return decided.label, decided.window


@dataclass(frozen=True)
class RecordingDecision:
    """What the decision made of one recording: its label index, the deciding window, each
    window's label index [n] and keyword scores [n, 4] (Decision.keyword_scores)."""

    label: int
    window: int
    window_labels: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class Occurrence:
    """One keyword heard: a run of consecutive windows labelled the same keyword (overlapping
    windows hear the same word); `score` is the highest keyword probability in the run."""

    label: int
    first_window: int
    last_window: int
    score: float


def keyword_runs(window_labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(keyword, first window, last window) of each run of consecutive windows labelled the
    same keyword: one occurrence, since overlapping windows hear the same word."""
    boundaries = np.flatnonzero(np.diff(window_labels)) + 1
    firsts = np.concatenate([[0], boundaries]).astype(int)
    lasts = np.concatenate([boundaries, [len(window_labels)]]).astype(int) - 1
    return [
        (int(window_labels[first]), int(first), int(last))
        for first, last in zip(firsts, lasts, strict=True)
        if window_labels[first] in KEYWORD_IDS
    ]


def find_occurrences(window_labels: np.ndarray, probabilities: np.ndarray) -> list[Occurrence]:
    """The keyword occurrences of a recording, from its window labels and probabilities [n, 4]."""
    return [
        Occurrence(label, first, last, float(probabilities[first : last + 1, label].max()))
        for label, first, last in keyword_runs(window_labels)
    ]


def count_occurrences(window_labels: np.ndarray) -> int:
    """Keyword occurrences in a recording's window labels (keyword_runs)."""
    return len(keyword_runs(window_labels))
