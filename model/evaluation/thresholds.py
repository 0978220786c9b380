"""Choose the keyword decision on val for false-keyword budgets, and store it in the artifact.

`python -m model.evaluation.thresholds [--artifact DIR] [--data DIR] [--read-speech DIR] [--write]
[--set YES NO] [--table] [--no-context]`

The decision is the context rule (model.context), fitted on the val spoken answers,
continuous speech and long recordings, and a pair of thresholds on its scores.

The pair of thresholds (yes, no) that keeps the most recall on val while every budget in
BUDGETS holds there: 1 s clips of other words and silence, each val word with at least
MIN_WORD_CLIPS clips, non-speech sounds (tones, noise bursts), spoken non-answers, continuous
speech without keywords (occurrences per 10 minutes, and read sentences with a keyword), and the
share of wrong `yes` and of wrong `no` labels. The thresholds are chosen, and the val figures
measured, on cross-fitted scores: each of CONTEXT_FOLDS parts of the recordings scored by the
rule fitted on the others, so neither rests on recordings the rule was fitted to. `--write`
stores the rule (fitted on all of them), the thresholds, the budgets and the val figures under
`decision` in metadata.json, where the pipeline and `model.evaluation.evaluate` read them, and
updates the model version, which covers the decision. Only val is read: test stays for reporting.
"""

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from model.audio import window_starts_s
from model.context import Context, KeywordWindows
from model.contract import CLIP_SAMPLES, DEFAULT_ARTIFACT, LABELS, METADATA_FILE, SAMPLE_RATE
from model.decision import KEYWORD_IDS, KEYWORDS, Decision, keyword_runs
from model.evaluation.eval_sets import (
    READ_SENTENCES,
    EvalRecording,
    LongRecording,
    continuous_speech,
    long_recordings,
    match_events,
    non_speech,
    spoken_answers,
)
from model.evaluation.evaluate import (
    DEFAULT_DATA,
    answers_report,
    classification_metrics,
    continuous_report,
    label_recordings,
    load_eval_set,
    predict_in_batches,
    recording_windows,
)
from model.serving import KeywordModel
from model.training.context_fit import fit_context
from model.training.data import DEFAULT_READ_SPEECH

GRID = np.round(np.arange(0.35, 0.9951, 0.015), 3)
MIN_WORD_CLIPS = 20
CONTEXT_FOLDS = 5
# Val long recordings (model.evaluation.eval_sets.long_recordings: 1-6 min, words 0.3-3 s apart, a
# quarter of them keywords): keywords inside running speech, for the context rule and the recall
# score.
LONG_RECORDINGS = 30
# For both keywords together: share of non-keyword clips labelled yes or no, the same for the
# worst single word and for non-speech clips, share of non-answer files, occurrences per 10
# minutes of continuous speech, share of read sentences (the real read-speech files) labelled
# yes or no, and the larger share of wrong labels among the clips labelled `yes` and among
# those labelled `no`. Each is four fifths of its target (1%, 3%, 1%, 5%, 2 per 10 minutes,
# 1 file in 20, 3%), for new speakers.
BUDGETS = {
    "clips": 0.008,
    "worst_word": 0.024,
    "non_speech": 0.008,
    "wrong_labels": 0.024,
    "non_answers": 0.04,
    "continuous_per_10_min": 1.7,
    "sentences": 0.04,
}


@dataclass(frozen=True)
class ValEvidence:
    """The val probabilities the decision is chosen on (gather_evidence): window probabilities
    [windows, 4] of every clip, non-speech clip and recording, with what each holds."""

    clip_probabilities: np.ndarray  # [clips, 4]: every val clip, one window each
    clip_labels: np.ndarray  # [clips]: label ids
    clip_words: list[str]  # each clip's word
    non_speech_probabilities: np.ndarray  # [sounds, 4]: tones and noise bursts
    answers: list[EvalRecording]  # spoken answers and non-answers
    answer_windows: list[np.ndarray]  # per answer: [windows, 4]
    continuous: list[EvalRecording]  # continuous speech without keywords
    continuous_windows: list[np.ndarray]
    long: list[LongRecording]  # long recordings with placed keywords
    long_windows: list[np.ndarray]


def false_figures(decision: Decision, evidence: ValEvidence) -> dict:
    """The false-keyword figures of both keywords under `decision`, on val `evidence`."""
    clip_labels = decision.clip_labels(evidence.clip_probabilities)
    fired = np.isin(clip_labels, KEYWORD_IDS)
    truth = evidence.clip_labels
    negatives = ~np.isin(truth, KEYWORD_IDS)
    non_speech_labels = decision.clip_labels(evidence.non_speech_probabilities)
    words = np.asarray(evidence.clip_words)
    word_rates = [
        float(np.mean(fired[words == word]))
        for word in set(words[negatives])
        if (words == word).sum() >= MIN_WORD_CLIPS
    ]
    answers = label_recordings(evidence.answers, evidence.answer_windows, decision)
    others = [r for r in answers if r.recording.truth == "none"]
    speech = label_recordings(evidence.continuous, evidence.continuous_windows, decision)
    minutes = sum(len(r.recording.audio) / r.recording.sample_rate for r in speech) / 60
    sentences = [r.label in KEYWORDS for r in speech if r.recording.kind == READ_SENTENCES]
    return {
        "clips": float(np.mean(fired[negatives])),
        "worst_word": max(word_rates, default=0.0),
        "non_speech": float(np.mean(np.isin(non_speech_labels, KEYWORD_IDS))),
        "wrong_labels": max(
            float(np.mean(truth[clip_labels == k] != k)) if (clip_labels == k).any() else 0.0
            for k in KEYWORD_IDS
        ),
        "non_answers": float(np.mean([r.label in KEYWORDS for r in others])),
        "continuous_per_10_min": 10 * sum(r.occurrences for r in speech) / minutes,
        "sentences": float(np.mean(sentences)) if sentences else 0.0,
    }


def words_said(recording: LongRecording, windows: int) -> KeywordWindows:
    """Each keyword said in a long recording, with the windows that hold part of the second
    around its centre."""
    starts = window_starts_s(windows, len(recording.audio) / recording.sample_rate)
    clip_s = CLIP_SAMPLES / SAMPLE_RATE
    return tuple(
        (
            said.label,
            np.flatnonzero(
                (starts < said.centre_s + 0.5) & (starts + clip_s > said.centre_s - 0.5)
            ),
        )
        for said in recording.keywords
    )


def long_occurrences(decision: Decision, evidence: ValEvidence) -> tuple[float, float]:
    """(recall, precision) of the keyword occurrences in the val long recordings, matched as
    bench/bench_long_recordings.py matches the pipeline's events
    (model.evaluation.eval_sets.match_events)."""
    found = events = said = 0
    for recording, windows in zip(evidence.long, evidence.long_windows, strict=True):
        starts = window_starts_s(len(windows), len(recording.audio) / recording.sample_rate)
        runs = keyword_runs(decision.window_labels(windows))
        heard = [
            (LABELS[label], starts[first], starts[last] + CLIP_SAMPLES / SAMPLE_RATE)
            for label, first, last in runs
        ]
        found += len(match_events(heard, recording.keywords)[0])
        events += len(heard)
        said += len(recording.keywords)
    return found / max(said, 1), found / max(events, 1)


def recall_score(decision: Decision, evidence: ValEvidence) -> float:
    """What the thresholds keep: the mean of the lower of the val `yes` and `no` recalls (each
    keyword has its own target), the share of spoken answers labelled right, and the share of
    the keywords in the long recordings found."""
    clip_labels = decision.clip_labels(evidence.clip_probabilities)
    truth = evidence.clip_labels
    recalls = [np.mean(clip_labels[truth == k] == k) for k in KEYWORD_IDS]
    answers = label_recordings(evidence.answers, evidence.answer_windows, decision)
    said = [r for r in answers if r.recording.truth != "none"]
    answers_right = np.mean([r.label == r.recording.truth for r in said])
    return float(np.mean([min(recalls), answers_right, long_occurrences(decision, evidence)[0]]))


def context_recordings(evidence: ValEvidence) -> list[tuple[np.ndarray, KeywordWindows]]:
    """The val recordings the context rule is fitted on, as (window
    probabilities, words said): the spoken answers (the keyword somewhere in the file) and
    non-answers, the continuous speech, and the long recordings (each keyword with the windows
    around its centre)."""
    recordings = []
    for recording, windows in zip(evidence.answers, evidence.answer_windows, strict=True):
        said = ((recording.truth, np.arange(len(windows))),) if recording.truth in KEYWORDS else ()
        recordings.append((windows, said))
    recordings += [(windows, ()) for windows in evidence.continuous_windows]
    for recording, windows in zip(evidence.long, evidence.long_windows, strict=True):
        recordings.append((windows, words_said(recording, len(windows))))
    return recordings


def cross_fitted(evidence: ValEvidence, seed: int = 0) -> ValEvidence:
    """`evidence` with the windows of each recording (context_recordings) replaced by its context
    scores (Context.scores) under the rule fitted on the other CONTEXT_FOLDS - 1 parts of those
    recordings. Clips and non-speech clips are lone windows, which the rule leaves unchanged."""
    recordings = context_recordings(evidence)
    folds = np.random.default_rng(seed).integers(0, CONTEXT_FOLDS, len(recordings))
    scored = [None] * len(recordings)
    for fold in range(CONTEXT_FOLDS):
        training = [r for r, part in zip(recordings, folds, strict=True) if part != fold]
        context = fit_context(training)
        for index in np.flatnonzero(folds == fold):
            scored[index] = context.scores(recordings[index][0])
    answers, continuous = len(evidence.answers), len(evidence.continuous)
    return replace(
        evidence,
        answer_windows=scored[:answers],
        continuous_windows=scored[answers : answers + continuous],
        long_windows=scored[answers + continuous :],
    )


def choose_thresholds(evidence: ValEvidence) -> Decision:
    """The pair of GRID thresholds with the best recall_score among those within every budget;
    the highest pair if none is."""
    best, best_score = Decision(float(GRID[-1]), float(GRID[-1])), -1.0
    for yes in GRID:
        for no in GRID:
            decision = Decision(float(yes), float(no))
            figures = false_figures(decision, evidence)
            if all(figures[name] <= limit for name, limit in BUDGETS.items()):
                score = recall_score(decision, evidence)
                if score > best_score:
                    best, best_score = decision, score
    print(f"chosen {best}: val recall score {best_score:.4f}, false figures"
          f" {false_figures(best, evidence)}")  # fmt: skip
    return best


def gather_evidence(
    keyword_model: KeywordModel, data_dir: Path, read_speech_dir: Path
) -> ValEvidence:
    """Val probabilities: every clip, the non-speech clips, and the windows of the spoken answers
    and continuous speech (model.evaluation.eval_sets)."""
    waveforms, labels, words = load_eval_set(data_dir, "val")
    answers = spoken_answers(data_dir, "val", read_speech_dir=read_speech_dir)
    speech = continuous_speech(data_dir, read_speech_dir, "val")
    long = long_recordings(data_dir, "val", LONG_RECORDINGS)
    return ValEvidence(
        clip_probabilities=predict_in_batches(keyword_model.predict, waveforms),
        clip_labels=labels,
        clip_words=words,
        non_speech_probabilities=predict_in_batches(keyword_model.predict, non_speech("val")),
        answers=answers,
        answer_windows=recording_windows(keyword_model, answers),
        continuous=speech,
        continuous_windows=recording_windows(keyword_model, speech),
        long=long,
        long_windows=recording_windows(keyword_model, long),
    )


def val_figures(decision: Decision, evidence: ValEvidence) -> dict:
    """Recall, precision and false figures of both keywords together under `decision`."""
    clip_labels = decision.clip_labels(evidence.clip_probabilities)
    truth = evidence.clip_labels
    answers = answers_report(label_recordings(evidence.answers, evidence.answer_windows, decision))[
        "all"
    ]
    speech = continuous_report(
        label_recordings(evidence.continuous, evidence.continuous_windows, decision)
    )["all"]
    negatives = ~np.isin(truth, KEYWORD_IDS)
    long_recall, long_precision = long_occurrences(decision, evidence)
    per_class = classification_metrics(truth, clip_labels)["per_class"]
    return {
        **{
            f"{keyword}_{figure}": per_class[keyword][figure]
            for keyword in KEYWORDS
            for figure in ("recall", "precision")
        },
        "false_keyword_rate": float(np.mean(np.isin(clip_labels[negatives], KEYWORD_IDS))),
        "answers_right": answers["answers_right"] / answers["answers"],
        "non_answers_fired": answers["non_answers_fired"] / answers["non_answers"],
        "continuous_files_fired": speech["files_fired"] / speech["files"],
        "continuous_false_per_10_min": speech["false_occurrences_per_10_min"],
        "long_occurrence_recall": long_recall,
        "long_occurrence_precision": long_precision,
    }


def choose_decision(
    evidence: ValEvidence, fixed: Decision | None = None, context: bool = True
) -> tuple[Decision, dict]:
    """The decision for val `evidence`: the context rule fitted on its recordings (unless not
    `context`) and the thresholds chosen on cross-fitted scores (or `fixed` ones); and the
    evidence its val figures are measured on (cross-fitted with the context rule)."""
    scored = cross_fitted(evidence) if context else evidence
    thresholds = fixed or choose_thresholds(scored)
    rule: Context | None = fit_context(context_recordings(evidence)) if context else None
    return Decision(thresholds.yes, thresholds.no, rule), scored


def choose_and_store_thresholds(
    artifact_dir: Path,
    data_dir: Path,
    read_speech_dir: Path,
    fixed: Decision | None = None,
    context: bool = True,
) -> dict:
    """Choose the artifact's decision on val (or take `fixed` thresholds), and store it with its
    val figures in its metadata.json, updating the model version."""
    from model.export.artifact import store_decision  # imports TensorFlow: only when writing

    evidence = gather_evidence(KeywordModel(artifact_dir), data_dir, read_speech_dir)
    decision, scored = choose_decision(evidence, fixed, context)
    thresholds_only = Decision(decision.yes, decision.no)
    stored = {
        **decision.as_metadata(),
        "chosen_on": "set by hand" if fixed else "val: the most recall within the budgets",
        "budgets": BUDGETS,
        "val": val_figures(thresholds_only, scored),
        "val_false_figures": false_figures(thresholds_only, scored),
    }
    version = store_decision(artifact_dir, stored)
    print(f"thresholds {decision} stored in {artifact_dir / METADATA_FILE}, model version now")
    print(f"{version}; val figures {json.dumps(stored['val'])}")
    return stored


def operating_points(evidence: ValEvidence, thresholds: list[float]) -> str:
    """A markdown table of the val figures at equal yes and no thresholds."""
    lines = [
        "| threshold | yes recall | no recall | yes precision | no precision | FKR | answers"
        " right | non-answers fired | continuous false per 10 min | long recordings: keywords"
        " found |",
        "|---" * 10 + "|",
    ]
    for threshold in thresholds:
        figures = val_figures(Decision(threshold, threshold), evidence)
        lines.append(
            f"| {threshold:.2f} | {figures['yes_recall']:.3f} | {figures['no_recall']:.3f}"
            f" | {figures['yes_precision']:.3f} | {figures['no_precision']:.3f}"
            f" | {figures['false_keyword_rate']:.2%} | {figures['answers_right']:.1%}"
            f" | {figures['non_answers_fired']:.1%}"
            f" | {figures['continuous_false_per_10_min']:.2f}"
            f" | {figures['long_occurrence_recall']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--read-speech", type=Path, default=DEFAULT_READ_SPEECH)
    parser.add_argument("--write", action="store_true", help="store them in metadata.json")
    parser.add_argument(
        "--set",
        nargs=2,
        type=float,
        metavar=("YES", "NO"),
        help="with --write: store these thresholds instead of choosing",
    )
    parser.add_argument(
        "--table", action="store_true", help="print val figures at a range of thresholds"
    )
    parser.add_argument(
        "--no-context", action="store_true", help="thresholds on the window probabilities alone"
    )
    args = parser.parse_args()
    fixed = Decision(*args.set) if args.set else None
    context = not args.no_context
    if args.write:
        choose_and_store_thresholds(args.artifact, args.data, args.read_speech, fixed, context)
        return
    evidence = gather_evidence(KeywordModel(args.artifact), args.data, args.read_speech)
    if args.table:
        scored = cross_fitted(evidence) if context else evidence
        print(operating_points(scored, [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]))
        return
    decision, scored = choose_decision(evidence, fixed, context)
    thresholds_only = Decision(decision.yes, decision.no)
    print(f"{decision}; val figures {json.dumps(val_figures(thresholds_only, scored), indent=1)}")


if __name__ == "__main__":
    main()
