"""The context rule: a window's keyword score from its own probabilities and its neighbours'.

The networks judge each 1 s window alone. In running speech, syllables that sound like "yes"
or "no" ("now", "guess") fire a window that a listener would dismiss from the words around it,
while a keyword said on its own, or to open or close an answer, has silence on at least one
side. The rule moves a window's keyword probability by what the windows around it hear:

    logit(score_k[i]) = logit(p_k[i]) + sum over d in OFFSETS of w_k[d] . f_k[i + d]
    f_k[j] = (p_k[j], p_other_keyword[j], p_unknown[j])

A neighbour outside the recording counts as silence, whose features are all zero, so a window
with silence all around (every 1 s file, every isolated word) keeps its probability.

A recording of at most ANSWER_MAX_WINDOWS windows (5 s) is a spoken answer, where the words
around a keyword are the rest of the answer ("no thank you", "yes I do"), not running speech
that a keyword-like syllable hides in: it has weights of its own, fitted on the answers and
non-answers, and longer recordings theirs, fitted on continuous speech and long recordings.
Only a window that is a keyword candidate (the likelier keyword, probability at least
CANDIDATE_FLOOR) gets a score; the others get 0. Applying the rule lives here, in pure NumPy,
for the pipeline and evaluation alike; fitting it (a logistic regression with logit(p_k) as a
fixed offset, on val recordings) in model.training.context_fit.
"""

from dataclasses import dataclass

import numpy as np

from model.contract import LABELS

YES, NO, UNKNOWN = (LABELS.index(label) for label in ("yes", "no", "unknown"))
KEYWORD_COLUMNS = {"yes": YES, "no": NO}
# Neighbours on each side, 0.5 s apart: two seconds of audio before and after the window.
NEIGHBOURS = 4
# The most windows of a recording with the answer weights: 5 s (a file of d > 1 s seconds has
# ceil(2 d) + 1 windows 0.5 s apart, with the 0.5 s of silence read before and after it).
ANSWER_MAX_WINDOWS = 11
OFFSETS = tuple(d for d in range(-NEIGHBOURS, NEIGHBOURS + 1) if d)
FEATURES = ("keyword", "other keyword", "unknown")
CANDIDATE_FLOOR = 0.2
PROBABILITY_EPSILON = 1e-4


Weights = tuple[tuple[float, ...], ...]


def as_tuples(weights: np.ndarray) -> Weights:
    return tuple(map(tuple, np.round(weights, 6).tolist()))


@dataclass(frozen=True)
class Context:
    """Weights [len(OFFSETS)][len(FEATURES)] of each keyword's context rule, for recordings
    longer than ANSWER_MAX_WINDOWS (`yes`, `no`) and for answers (`answer_yes`, `answer_no`)
    (tuples, so a Decision holding them compares and hashes by value)."""

    yes: Weights
    no: Weights
    answer_yes: Weights
    answer_no: Weights

    @classmethod
    def from_weights(
        cls,
        yes: np.ndarray,
        no: np.ndarray,
        answer_yes: np.ndarray | None = None,
        answer_no: np.ndarray | None = None,
    ) -> "Context":
        """The rule of these weights; without answer weights, answers get the others."""
        answer_yes = yes if answer_yes is None else answer_yes
        answer_no = no if answer_no is None else answer_no
        return cls(*(as_tuples(w) for w in (yes, no, answer_yes, answer_no)))

    @classmethod
    def from_metadata(cls, stored: dict) -> "Context":
        """The stored rule; one stored without answer weights applies its weights to all."""
        if tuple(stored["offsets"]) != OFFSETS or tuple(stored["features"]) != FEATURES:
            raise ValueError(
                f"context rule over offsets {stored['offsets']} and features"
                f" {stored['features']}: this version reads {list(OFFSETS)}, {list(FEATURES)}"
            )
        answers = stored.get("answer_weights", stored["weights"])
        if stored.get("answer_max_windows", ANSWER_MAX_WINDOWS) != ANSWER_MAX_WINDOWS:
            raise ValueError(
                f"answer weights for recordings of at most {stored['answer_max_windows']}"
                f" windows: this version applies them up to {ANSWER_MAX_WINDOWS}"
            )
        return cls.from_weights(
            *(np.asarray(stored["weights"][k]) for k in KEYWORD_COLUMNS),
            *(np.asarray(answers[k]) for k in KEYWORD_COLUMNS),
        )

    def as_metadata(self) -> dict:
        return {
            "offsets": list(OFFSETS),
            "features": list(FEATURES),
            "candidate_floor": CANDIDATE_FLOOR,
            "weights": {
                keyword: [list(row) for row in getattr(self, keyword)]
                for keyword in KEYWORD_COLUMNS
            },
            "answer_max_windows": ANSWER_MAX_WINDOWS,
            "answer_weights": {
                keyword: [list(row) for row in getattr(self, f"answer_{keyword}")]
                for keyword in KEYWORD_COLUMNS
            },
        }

    def weights_for(self, windows: int, keyword: str) -> np.ndarray:
        """The flat weights of `keyword` for a recording of `windows` windows."""
        answer = windows <= ANSWER_MAX_WINDOWS
        return np.ravel(getattr(self, f"answer_{keyword}" if answer else keyword))

    def scores(self, probabilities: np.ndarray) -> np.ndarray:
        """One recording's window probabilities [n, 4] (windows in time order) with the `yes`
        and `no` columns replaced by the windows' context scores."""
        if len(probabilities) == 1:
            return self.lone_scores(probabilities)
        scored = probabilities.astype(np.float64)
        for keyword, column in KEYWORD_COLUMNS.items():
            candidates = keyword_candidates(probabilities, column)
            logits = offset_logits(probabilities[:, column])
            weights = self.weights_for(len(probabilities), keyword)
            logits += neighbour_features(probabilities, column) @ weights
            scored[:, column] = np.where(candidates, 1 / (1 + np.exp(-logits)), 0.0)
        return scored

    @staticmethod
    def lone_scores(probabilities: np.ndarray) -> np.ndarray:
        """Each row [n, 4] scored as a recording of that one window: all its neighbours are
        silence, so a keyword candidate's score is its probability, and the others' 0."""
        scored = probabilities.astype(np.float64)
        for column in KEYWORD_COLUMNS.values():
            scored[:, column] = np.where(
                keyword_candidates(probabilities, column), probabilities[:, column], 0.0
            )
        return scored


def other_keyword(column: int) -> int:
    return NO if column == YES else YES


def keyword_candidates(probabilities: np.ndarray, column: int) -> np.ndarray:
    """Windows whose likelier keyword is `column`, at probability CANDIDATE_FLOOR or more."""
    own = probabilities[:, column]
    return (own >= probabilities[:, other_keyword(column)]) & (own >= CANDIDATE_FLOOR)


def offset_logits(probability: np.ndarray) -> np.ndarray:
    clipped = np.clip(probability.astype(np.float64), PROBABILITY_EPSILON, 1 - PROBABILITY_EPSILON)
    return np.log(clipped) - np.log1p(-clipped)


def neighbour_features(probabilities: np.ndarray, column: int) -> np.ndarray:
    """[n, len(OFFSETS) * len(FEATURES)]: each window's neighbours' FEATURES for keyword
    `column`; zeros for a neighbour outside the recording (silence)."""
    n = len(probabilities)
    own = probabilities[:, [column, other_keyword(column), UNKNOWN]].astype(np.float64)
    padded = np.concatenate([np.zeros((NEIGHBOURS, 3)), own, np.zeros((NEIGHBOURS, 3))])
    return np.concatenate([padded[NEIGHBOURS + d : NEIGHBOURS + d + n] for d in OFFSETS], axis=1)


KeywordWindows = tuple[
    tuple[str, np.ndarray], ...
]  # (keyword, the windows that hold it) per word said
