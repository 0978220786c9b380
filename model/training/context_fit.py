"""Fitting the context rule (model.context) on val recordings: a logistic regression with
logit(p_k) as a fixed offset, answers and longer recordings apart. Pure NumPy."""

import numpy as np

from model.context import (
    ANSWER_MAX_WINDOWS,
    FEATURES,
    KEYWORD_COLUMNS,
    OFFSETS,
    Context,
    KeywordWindows,
    keyword_candidates,
    neighbour_features,
    offset_logits,
)

L2_PENALTY = 1.0


def training_windows(
    recordings: list[tuple[np.ndarray, KeywordWindows]], keyword: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, offsets, targets) of the `keyword` candidates of recordings of several windows,
    each given as (window probabilities, the words said in it).

    For each `keyword` said, the most `keyword`-like candidate among the windows that hold it is
    a positive and its other windows are left out (which of them hold enough of the word is
    not known); every candidate outside the windows of any word said is a negative.
    """
    column = KEYWORD_COLUMNS[keyword]
    features, offsets, targets = [], [], []
    for probabilities, said in recordings:
        candidates = keyword_candidates(probabilities, column)
        if len(probabilities) < 2 or not candidates.any():
            continue
        target = np.where(candidates, 0.0, np.nan)
        for word, windows in said:
            held = windows[candidates[windows]]
            target[windows] = np.nan
            if word == keyword and len(held):
                target[held[np.argmax(probabilities[held, column])]] = 1.0
        windows = np.flatnonzero(~np.isnan(target))
        features.append(neighbour_features(probabilities, column)[windows])
        offsets.append(offset_logits(probabilities[windows, column]))
        targets.append(target[windows])
    if not features:
        return np.zeros((0, len(OFFSETS) * len(FEATURES))), np.zeros(0), np.zeros(0)
    return tuple(np.concatenate(parts) for parts in (features, offsets, targets))


def fit_weights(features: np.ndarray, offsets: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Logistic regression without intercept and with fixed `offsets` (Newton's method, L2
    penalty L2_PENALTY): the weights [len(OFFSETS), len(FEATURES)]."""
    weights = np.zeros(features.shape[1])
    for _ in range(100):
        predicted = 1 / (1 + np.exp(-(features @ weights + offsets)))
        gradient = features.T @ (predicted - targets) + L2_PENALTY * weights
        curvature = (features * (predicted * (1 - predicted))[:, None]).T @ features
        step = np.linalg.solve(curvature + L2_PENALTY * np.eye(len(weights)), gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights.reshape(len(OFFSETS), len(FEATURES))


def fit_context(recordings: list[tuple[np.ndarray, KeywordWindows]]) -> Context:
    """The context rule fitted on recordings given as (window probabilities, words said): the
    answer weights on those of at most ANSWER_MAX_WINDOWS windows, the others on the rest."""
    answers = [r for r in recordings if len(r[0]) <= ANSWER_MAX_WINDOWS]
    longer = [r for r in recordings if len(r[0]) > ANSWER_MAX_WINDOWS]
    return Context.from_weights(
        *(fit_weights(*training_windows(longer, keyword)) for keyword in KEYWORD_COLUMNS),
        *(fit_weights(*training_windows(answers, keyword)) for keyword in KEYWORD_COLUMNS),
    )
