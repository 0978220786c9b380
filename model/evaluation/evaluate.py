"""Score the exported model on the test split and report the figures the model card quotes.

`python -m model.evaluation.evaluate [--artifact DIR] [--data DIR] [--split val|test]
[--write-metadata] [--robustness [MODE ...]] [--plots DIR] [--errors]`

Loads the artifact exactly as consumers do (model.serving.KeywordModel), scores every speech clip
of the split plus 200 deterministic silence windows from that split's time portion of the noise
recordings. `--robustness` re-scores the same clips under each mode of ROBUSTNESS_MODES (noise,
gain, shift, other sample rates through the pipeline's decode path) and prints the accuracy drop
against clean audio. The metric functions are pure (numpy in, numbers or dicts out) for unit
tests; plotting needs matplotlib, imported only by `--plots`.
"""

import argparse
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from model.audio import read_recording, split_windows
from model.contract import CLIP_SAMPLES, DEFAULT_ARTIFACT, LABELS, METADATA_FILE, SAMPLE_RATE
from model.decision import KEYWORD_IDS, KEYWORDS, NO, YES, Decision, count_occurrences
from model.evaluation.eval_sets import (
    FLITE,
    WITH_SPEECH,
    EvalRecording,
    LongRecording,
    continuous_speech,
    non_speech,
    spoken_answers,
)
from model.serving import KeywordModel
from model.training.data import (
    DEFAULT_READ_SPEECH,
    SHORT_RECORDING_SAMPLES,
    SILENCE_LABEL,
    load_noise,
    load_split,
    read_manifest,
    rms,
    shorten,
    silence_windows,
    time_shift,
)

DEFAULT_DATA = Path("../shared/data/speech_commands")
# Noise files shorter than a second: this split's silence windows cut short and zero-padded.
SHORT_NOISE_CLIPS = 200
SHORT_NOISE_SEED = 31
# The noise sweep: every 1 s window, this far apart, of the split's portion of each noise
# recording, at each of these levels (dBFS RMS).
NOISE_SWEEP_HOP = 4_000
NOISE_SWEEP_LEVELS_DB = (-40.0, -30.0, -20.0)
ECE_BINS = 15
TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.2), np.log(5.0), 401))
CONFUSABLE_WORD = "go"  # the unknown word most easily heard as "no"
BATCH_SIZE = 256


Predict = Callable[[np.ndarray], np.ndarray]
ROBUSTNESS_SEED = 99
ROBUSTNESS_SNR_DB = 10.0
BABBLE_TALKERS = 5
MAX_SHIFT_MS = 300
ROBUSTNESS_MODES = (
    "white-noise-10db",
    "babble-10db",
    "gain-30db",
    "gain-20db",
    "gain-10db",
    "gain0db",
    "shift-300ms",
    "rate-8000",
    "rate-22050",
    "rate-44100",
    "rate-48000",
)


def confusion_matrix(true_labels: np.ndarray, predicted_labels: np.ndarray) -> np.ndarray:
    """int64 [len(LABELS), len(LABELS)] counts; rows are true classes, columns predictions."""
    matrix = np.zeros((len(LABELS), len(LABELS)), np.int64)
    np.add.at(matrix, (true_labels, predicted_labels), 1)
    return matrix


def classification_metrics(true_labels: np.ndarray, predicted_labels: np.ndarray) -> dict:
    """Accuracy, per-class precision / recall / support and the confusion matrix."""
    matrix = confusion_matrix(true_labels, predicted_labels)
    correct = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    per_class = {
        label: {
            "precision": float(correct[i] / predicted[i]) if predicted[i] else 0.0,
            "recall": float(correct[i] / support[i]) if support[i] else 0.0,
            "support": int(support[i]),
        }
        for i, label in enumerate(LABELS)
    }
    recalls = [correct[i] / support[i] for i in range(len(LABELS)) if support[i]]
    return {
        "accuracy": float(correct.sum() / matrix.sum()) if matrix.sum() else 0.0,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0,
        "per_class": per_class,
        "confusion_matrix": {
            "rows_true_columns_predicted": list(LABELS),
            "counts": matrix.tolist(),
        },
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [n, classes] logits, computed stably."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, true_labels: np.ndarray) -> float:
    """Mean -log p(true class)."""
    picked = probabilities[np.arange(len(true_labels)), true_labels]
    return float(-np.mean(np.log(np.maximum(picked, 1e-12))))


def reliability_bins(
    probabilities: np.ndarray, true_labels: np.ndarray, bins: int = ECE_BINS
) -> dict[str, np.ndarray]:
    """Top-score confidence split into `bins` equal-width bins over [0, 1]: per bin the clip
    count, mean confidence and accuracy (0 where a bin is empty)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == true_labels
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    safe = np.maximum(counts, 1)
    return {
        "counts": counts,
        "confidence": np.bincount(index, confidence, minlength=bins) / safe,
        "accuracy": np.bincount(index, correct.astype(np.float64), minlength=bins) / safe,
    }


def expected_calibration_error(
    probabilities: np.ndarray, true_labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE of the top score: count-weighted mean |accuracy - confidence| over the bins."""
    table = reliability_bins(probabilities, true_labels, bins)
    gaps = np.abs(table["accuracy"] - table["confidence"])
    return float(np.sum(table["counts"] * gaps) / max(len(true_labels), 1))


def fit_temperature(logits: np.ndarray, true_labels: np.ndarray) -> float:
    """The temperature T on TEMPERATURE_GRID minimising the NLL of softmax(logits / T)."""
    losses = [negative_log_likelihood(softmax(logits / t), true_labels) for t in TEMPERATURE_GRID]
    return float(TEMPERATURE_GRID[int(np.argmin(losses))])


def keyword_error_metrics(
    true_labels: np.ndarray, predicted_labels: np.ndarray, words: list[str]
) -> dict:
    """How often non-keywords fire a keyword, and how `no` and `go` get mixed up.

    false_keyword_rate: share of unknown + silence clips predicted as yes or no (the error that
    puts a wrong keyword label in the output). words[i] is the spoken word of clip i ("" for
    silence).
    """
    non_keyword = ~np.isin(true_labels, KEYWORD_IDS)
    fired = np.isin(predicted_labels, KEYWORD_IDS)
    words_array = np.asarray(words)
    go_clips = words_array == CONFUSABLE_WORD
    no_clips = true_labels == LABELS.index("no")
    unknown_id = LABELS.index("unknown")
    return {
        "false_keyword_rate": float(fired[non_keyword].mean()) if non_keyword.any() else 0.0,
        "false_keywords": int(fired[non_keyword].sum()),
        "non_keyword_clips": int(non_keyword.sum()),
        "false_keywords_from_unknown": int(fired[true_labels == unknown_id].sum()),
        "false_keywords_from_silence": int(fired[true_labels == SILENCE_LABEL].sum()),
        "no_vs_go": {
            "go_clips": int(go_clips.sum()),
            "go_predicted_no": int((predicted_labels[go_clips] == LABELS.index("no")).sum()),
            "go_predicted_yes": int((predicted_labels[go_clips] == LABELS.index("yes")).sum()),
            "no_clips": int(no_clips.sum()),
            "no_predicted_unknown": int((predicted_labels[no_clips] == unknown_id).sum()),
        },
    }


def load_eval_set(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every clip of a split (its words in the official test set's mix, and its `_silence_`
    clips): waveforms, labels, words (`_silence_` for silence)."""
    waveforms, labels, paths = load_split(data_dir, split)
    return waveforms, labels, [path.split("/")[0] for path in paths]


def predict_in_batches(predict: Predict, waveforms: np.ndarray) -> np.ndarray:
    """Probabilities for all waveforms, BATCH_SIZE at a time, as the labelling pipeline does."""
    batches = [predict(waveforms[i : i + BATCH_SIZE]) for i in range(0, len(waveforms), BATCH_SIZE)]
    return np.concatenate(batches)


def score_metrics(
    probabilities: np.ndarray, labels: np.ndarray, words: list[str], decision: Decision
) -> dict:
    """Classification, keyword-error and calibration figures of [n, 4] probabilities, each clip
    labelled by `decision` as the pipeline labels a 1 s file."""
    predicted = decision.clip_labels(probabilities)
    return {
        **classification_metrics(labels, predicted),
        **keyword_error_metrics(labels, predicted, words),
        "per_word": per_word_table(predicted, words),
        "ece": expected_calibration_error(probabilities, labels),
        "ece_bins": ECE_BINS,
    }


def per_word_table(predicted: np.ndarray, words: list[str]) -> dict[str, dict]:
    """For each spoken word (and `_silence_`): its clips and how many were labelled yes and no."""
    words_array = np.asarray(words)
    return {
        word: {
            "clips": int((words_array == word).sum()),
            "yes": int((predicted[words_array == word] == LABELS.index("yes")).sum()),
            "no": int((predicted[words_array == word] == LABELS.index("no")).sum()),
        }
        for word in sorted(set(words))
    }


def short_noise_clips(data_dir: Path, split: str) -> np.ndarray:
    """A split's noise windows cut shorter than a second and zero-padded the pipeline's way: all
    should come out `silence` (the val and test silence windows are full seconds, so they cannot
    show a model that takes the padding for speech)."""
    clips = silence_windows(data_dir, split, SHORT_NOISE_CLIPS, SHORT_NOISE_SEED)
    return shorten(clips, np.random.default_rng(SHORT_NOISE_SEED))


def noise_sweep_clips(data_dir: Path, split: str) -> np.ndarray:
    """Every 1 s window NOISE_SWEEP_HOP apart of the split's portion of each noise recording, at
    each of NOISE_SWEEP_LEVELS_DB: all should be `silence`. Denser than the 200 random silence
    windows, so a model that hears one stretch of a recording as speech shows up."""
    windows = np.stack(
        [
            segment[start : start + CLIP_SAMPLES]
            for segment in load_noise(data_dir, split)
            for start in range(0, len(segment) - CLIP_SAMPLES + 1, NOISE_SWEEP_HOP)
        ]
    )
    unit = windows / np.maximum(rms(windows), 1e-8)
    return np.concatenate([unit * 10 ** (level / 20) for level in NOISE_SWEEP_LEVELS_DB]).astype(
        np.float32
    )


def silence_check(predict: Predict, clips: np.ndarray, decision: Decision) -> dict:
    """How many of `clips`, all of them noise, come out `silence`, and how many as a keyword."""
    predicted = decision.clip_labels(predict_in_batches(predict, clips))
    return {
        "clips": len(predicted),
        "silence": int((predicted == SILENCE_LABEL).sum()),
        "keyword": int(np.isin(predicted, KEYWORD_IDS).sum()),
    }


def evaluate_probabilities(
    artifact_dir: Path, data_dir: Path, split: str = "test"
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of the exported model on a split, plus its probabilities and the true labels."""
    keyword_model = KeywordModel(artifact_dir)
    waveforms, labels, words = load_eval_set(data_dir, split)
    probabilities = predict_in_batches(keyword_model.predict, waveforms)
    metrics = {
        "split": split,
        "model_version": keyword_model.version,
        "runtime": keyword_model.runtime,
        "speech_clips": int((labels != SILENCE_LABEL).sum()),
        "silence_clips": int((labels == SILENCE_LABEL).sum()),
        "decision": keyword_model.decision.as_metadata(),
        **score_metrics(probabilities, labels, words, keyword_model.decision),
        "short_noise": silence_check(
            keyword_model.predict, short_noise_clips(data_dir, split), keyword_model.decision
        ),
        "noise_sweep": silence_check(
            keyword_model.predict, noise_sweep_clips(data_dir, split), keyword_model.decision
        ),
        "non_speech": silence_check(
            keyword_model.predict, non_speech(split), keyword_model.decision
        ),
    }
    return metrics, probabilities, labels


def evaluate_artifact(artifact_dir: Path, data_dir: Path, split: str = "test") -> dict:
    """All metrics of the exported model on a split, as stored under metadata.json's `metrics`."""
    return evaluate_probabilities(artifact_dir, data_dir, split)[0]


def add_noise(
    waveforms: np.ndarray, noise: np.ndarray, snr_db: float = ROBUSTNESS_SNR_DB
) -> np.ndarray:
    """Each clip plus its noise row rescaled to `snr_db` below the clip's RMS, clipped."""
    scale = rms(waveforms) / 10 ** (snr_db / 20) / np.maximum(rms(noise), 1e-8)
    return np.clip(waveforms + noise * scale, -1.0, 1.0).astype(np.float32)


def babble_noise(talkers: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n babble clips, each the sum of BABBLE_TALKERS random talker clips at equal RMS."""
    picked = talkers[rng.integers(len(talkers), size=(n, BABBLE_TALKERS))]
    return (picked / np.maximum(rms(picked), 1e-8)).sum(axis=1).astype(np.float32)


def through_pipeline_at_rate(
    predict: Predict, waveforms: np.ndarray, rate: int, decision: Decision
) -> np.ndarray:
    """Probabilities [n, 4] after writing each clip as a `rate` Hz 16-bit WAV and reading it back
    with the pipeline's decode + resample + window path, keeping the pipeline's chosen window."""
    windows, owners = [], []
    for index, clip in enumerate(waveforms):
        buffer = io.BytesIO()
        soundfile.write(buffer, soxr.resample(clip, SAMPLE_RATE, rate), rate, format="WAV")
        clip_windows = split_windows(read_recording(buffer).mono)
        windows.append(clip_windows)
        owners += [index] * len(clip_windows)
    probabilities = predict_in_batches(predict, np.concatenate(windows))
    owners_array = np.asarray(owners)
    picked = []
    for index in range(len(waveforms)):
        rows = probabilities[owners_array == index]
        picked.append(rows[decision.label_recording(rows)[1]])
    return np.stack(picked)


def robustness_probabilities(
    predict: Predict, mode: str, waveforms: np.ndarray, labels: np.ndarray, decision: Decision
) -> np.ndarray:
    """Probabilities of every clip under one mode of ROBUSTNESS_MODES (seeded, repeatable)."""
    rng = np.random.default_rng(ROBUSTNESS_SEED)
    if mode == "white-noise-10db":
        changed = add_noise(waveforms, rng.standard_normal(waveforms.shape).astype(np.float32))
    elif mode == "babble-10db":
        talkers = waveforms[labels == LABELS.index("unknown")]
        changed = add_noise(waveforms, babble_noise(talkers, len(waveforms), rng))
    elif mode.startswith("gain"):
        gain = 10 ** (float(mode.removeprefix("gain").removesuffix("db")) / 20)
        changed = np.clip(waveforms * gain, -1.0, 1.0)
    elif mode == "shift-300ms":
        changed = time_shift(waveforms, rng, MAX_SHIFT_MS * SAMPLE_RATE // 1000)
    elif mode.startswith("rate-"):
        rate = int(mode.removeprefix("rate-"))
        return through_pipeline_at_rate(predict, waveforms, rate, decision)
    else:
        raise ValueError(f"unknown robustness mode {mode!r}")
    return predict_in_batches(predict, changed)


def robustness_report(artifact_dir: Path, data_dir: Path, split: str, modes: list[str]) -> dict:
    """Accuracy, keyword recall and false keyword rate per mode, with the drop against clean."""
    keyword_model = KeywordModel(artifact_dir)
    waveforms, labels, words = load_eval_set(data_dir, split)
    clean = predict_in_batches(keyword_model.predict, waveforms)
    results = {}
    for mode in ["clean", *modes]:
        probabilities = (
            clean
            if mode == "clean"
            else robustness_probabilities(
                keyword_model.predict, mode, waveforms, labels, keyword_model.decision
            )
        )
        figures = score_metrics(probabilities, labels, words, keyword_model.decision)
        results[mode] = {
            "accuracy": figures["accuracy"],
            "yes_recall": figures["per_class"]["yes"]["recall"],
            "no_recall": figures["per_class"]["no"]["recall"],
            "false_keyword_rate": figures["false_keyword_rate"],
        }
    for figures in results.values():
        figures["drop_points"] = 100 * (results["clean"]["accuracy"] - figures["accuracy"])
    return results


def robust_accuracy(results: dict) -> float:
    """Mean accuracy over robustness_report's modes, clean included: the figure that model
    selection ranks candidates by (model/README.md)."""
    return float(np.mean([figures["accuracy"] for figures in results.values()]))


def format_robustness(results: dict) -> str:
    """One line per robustness mode, then their mean accuracy."""
    lines = [
        f"{'mode':<17} {'accuracy':>8} {'drop pts':>8} {'yes rec':>7} {'no rec':>7} {'FKR':>6}"
    ]
    for mode, figures in results.items():
        lines.append(
            f"{mode:<17} {figures['accuracy']:>8.4f} {figures['drop_points']:>8.2f}"
            f" {figures['yes_recall']:>7.4f} {figures['no_recall']:>7.4f}"
            f" {figures['false_keyword_rate']:>6.4f}"
        )
    lines.append(f"mean accuracy over these {len(results)} modes: {robust_accuracy(results):.4f}")
    return "\n".join(lines)


@dataclass(frozen=True)
class RecordingResult:
    """How the pipeline's decision labels one evaluation recording."""

    recording: EvalRecording
    label: str
    occurrences: int  # runs of consecutive windows labelled a keyword
    windows: int
    deciding_window: int
    keyword_peaks: tuple[float, float]  # the highest p(yes) and p(no) over its windows


def recording_windows(
    keyword_model: KeywordModel, recordings: list[EvalRecording] | list[LongRecording]
) -> list[np.ndarray]:
    """Each recording's window probabilities [windows, 4], as the pipeline computes them: the
    recording written as a 16-bit WAV at its own rate, decoded, resampled, cut into 1 s windows
    every 0.5 s and scored."""
    window_sets = []
    for recording in recordings:
        buffer = io.BytesIO()
        soundfile.write(buffer, recording.audio, recording.sample_rate, "PCM_16", format="WAV")
        mono = read_recording(buffer, max_duration_s=float("inf")).mono
        window_sets.append(split_windows(mono))
    probabilities = predict_in_batches(keyword_model.predict, np.concatenate(window_sets))
    bounds = np.cumsum([len(windows) for windows in window_sets])[:-1]
    return np.split(probabilities, bounds)


def label_recordings(
    recordings: list[EvalRecording], probabilities: list[np.ndarray], decision: Decision
) -> list[RecordingResult]:
    """The pipeline's decision on each recording's window probabilities."""
    results = []
    for recording, rows in zip(recordings, probabilities, strict=True):
        decided = decision.decide(rows)
        occurrences = count_occurrences(decided.window_labels)
        results.append(
            RecordingResult(
                recording,
                LABELS[decided.label],
                occurrences,
                len(rows),
                decided.window,
                (float(rows[:, YES].max()), float(rows[:, NO].max())),
            )
        )
    return results


def answers_report(results: list[RecordingResult]) -> dict:
    """Answers labelled right (yes as yes, no as no) and non-answers labelled yes or no, overall
    and by kind (synthetic, assembled, with speech, flite) and condition."""

    def figures(subset: list[RecordingResult]) -> dict:
        answers = [r for r in subset if r.recording.truth != "none"]
        others = [r for r in subset if r.recording.truth == "none"]
        return {
            "answers": len(answers),
            "answers_right": sum(r.label == r.recording.truth for r in answers),
            "non_answers": len(others),
            "non_answers_fired": sum(r.label in KEYWORDS for r in others),
        }

    def condition(result: RecordingResult) -> str:
        return result.recording.name.rsplit(" ", 1)[-1]

    groups = {
        "all": results,
        **{
            f"kind {k}": [r for r in results if r.recording.kind == k]
            for k in ("synthetic", "assembled", WITH_SPEECH, FLITE)
        },
        **{
            f"condition {c}": [r for r in results if condition(r) == c]
            for c in ("clean", "noise", "telephone")
        },
    }
    return {
        **{name: figures(subset) for name, subset in groups.items()},
        "wrong": [
            f"{r.recording.name}: {r.label}"
            f" (peak p(yes) {r.keyword_peaks[0]:.2f}, p(no) {r.keyword_peaks[1]:.2f})"
            for r in results
            if (
                r.label != r.recording.truth if r.recording.truth != "none" else r.label in KEYWORDS
            )
        ],
    }


def continuous_report(results: list[RecordingResult]) -> dict:
    """Files labelled yes or no, and keyword occurrences per 10 minutes, by kind of speech."""
    report = {}
    for kind in ["all", *sorted({r.recording.kind for r in results})]:
        subset = [r for r in results if kind in ("all", r.recording.kind)]
        minutes = sum(len(r.recording.audio) / r.recording.sample_rate for r in subset) / 60
        occurrences = sum(r.occurrences for r in subset)
        report[kind] = {
            "files": len(subset),
            "files_fired": sum(r.label in KEYWORDS for r in subset),
            "minutes": minutes,
            "false_occurrences": occurrences,
            "false_occurrences_per_10_min": 10 * occurrences / max(minutes, 1e-9),
        }
    report["fired"] = [
        f"{r.recording.name}: {r.label} ({r.occurrences} occurrences)"
        for r in results
        if r.occurrences
    ]
    return report


def part_of(part: int, whole: int) -> str:
    """`part/whole (percent)`."""
    return f"{part}/{whole} ({part / max(whole, 1):.1%})"


def format_answers(report: dict) -> str:
    lines = [f"{'spoken answers':<22} {'answers right':>20} {'non-answers -> yes/no':>22}"]
    for name, figures in report.items():
        if name != "wrong":
            answers = part_of(figures["answers_right"], figures["answers"])
            fired = part_of(figures["non_answers_fired"], figures["non_answers"])
            lines.append(f"{name:<22} {answers:>20} {fired:>22}")
    return "\n".join([*lines, "wrong:", *(f"  {line}" for line in report["wrong"])])


def format_continuous(report: dict) -> str:
    header = f"{'continuous speech':<18} {'files -> yes/no':>18} {'minutes':>8} {'false occ.':>10}"
    lines = [header + f" {'per 10 min':>10}"]
    for name, figures in report.items():
        if name != "fired":
            files = part_of(figures["files_fired"], figures["files"])
            lines.append(
                f"{name:<18} {files:>18} {figures['minutes']:>8.1f}"
                f" {figures['false_occurrences']:>10}"
                f" {figures['false_occurrences_per_10_min']:>10.2f}"
            )
    return "\n".join([*lines, "fired:", *(f"  {line}" for line in report["fired"])])


def format_per_word(per_word: dict[str, dict]) -> str:
    """The non-keyword words, most often labelled a keyword first: clips, -> yes, -> no."""
    rows = sorted(
        ((word, counts) for word, counts in per_word.items() if word not in KEYWORDS),
        key=lambda item: (-(item[1]["yes"] + item[1]["no"]) / item[1]["clips"], item[0]),
    )
    lines = [f"{'word':<10} {'clips':>5} {'-> yes':>6} {'-> no':>6} {'rate':>6}"]
    for word, counts in rows:
        rate = (counts["yes"] + counts["no"]) / counts["clips"]
        lines.append(
            f"{word:<10} {counts['clips']:>5} {counts['yes']:>6} {counts['no']:>6} {rate:>6.1%}"
        )
    return "\n".join(lines)


def format_report(metrics: dict) -> str:
    """Human-readable summary of evaluate_artifact's dict."""
    lines = [
        f"model {metrics['model_version']} on {metrics['split']}: {metrics['speech_clips']} speech"
        f" clips + {metrics['silence_clips']} silence clips"
        f", runtime {metrics.get('runtime', 'tensorflow')}",
        f"4-class accuracy: {metrics['accuracy']:.4f}"
        f" (balanced {metrics['balanced_accuracy']:.4f})",
        f"{'class':<8} {'precision':>9} {'recall':>7} {'support':>7}",
    ]
    for label, figures in metrics["per_class"].items():
        lines.append(
            f"{label:<8} {figures['precision']:>9.4f} {figures['recall']:>7.4f}"
            f" {figures['support']:>7d}"
        )
    lines.append("confusion matrix (rows true, columns predicted):")
    lines.append(" " * 9 + "".join(f"{label:>8}" for label in LABELS))
    for label, row in zip(LABELS, metrics["confusion_matrix"]["counts"], strict=True):
        lines.append(f"{label:<9}" + "".join(f"{count:>8d}" for count in row))
    no_vs_go = metrics["no_vs_go"]
    lines += [
        f"false keyword rate (unknown+silence -> yes/no): {metrics['false_keyword_rate']:.4f}"
        f" ({metrics['false_keywords']}/{metrics['non_keyword_clips']};"
        f" from unknown {metrics['false_keywords_from_unknown']},"
        f" from silence {metrics['false_keywords_from_silence']})",
        f"no vs go: go -> no {no_vs_go['go_predicted_no']}/{no_vs_go['go_clips']},"
        f" go -> yes {no_vs_go['go_predicted_yes']}/{no_vs_go['go_clips']},"
        f" no -> unknown {no_vs_go['no_predicted_unknown']}/{no_vs_go['no_clips']}",
        f"expected calibration error (top score, {metrics['ece_bins']} bins): {metrics['ece']:.4f}",
    ]
    lines.append(format_per_word(metrics["per_word"]))
    if "short_noise" in metrics:  # absent from the metadata of models scored before it existed
        short = metrics["short_noise"]
        low, high = (samples / SAMPLE_RATE for samples in SHORT_RECORDING_SAMPLES)
        lines.append(
            f"short noise files ({short['clips']} noise windows cut to {low:.2f}-{high:.2f} s,"
            f" zero-padded): silence {short['silence']}/{short['clips']},"
            f" yes or no {short['keyword']}/{short['clips']}"
        )
    if "noise_sweep" in metrics:
        sweep = metrics["noise_sweep"]
        levels = "/".join(f"{level:.0f}" for level in NOISE_SWEEP_LEVELS_DB)
        lines.append(
            f"noise sweep ({sweep['clips']} windows of the noise recordings at {levels} dBFS):"
            f" silence {sweep['silence']}/{sweep['clips']},"
            f" yes or no {sweep['keyword']}/{sweep['clips']}"
        )
    if "non_speech" in metrics:
        sounds = metrics["non_speech"]
        lines.append(
            f"non-speech sounds ({sounds['clips']} clips of hiss with tones and noise bursts):"
            f" yes or no {sounds['keyword']}/{sounds['clips']}"
        )
    return "\n".join(lines)


def format_errors(
    data_dir: Path, split: str, probabilities: np.ndarray, labels: np.ndarray, decision: Decision
) -> str:
    """One line per clip the decision labels wrong: path, speaker, level, true label, label
    given, and the probabilities of yes and no."""
    waveforms = load_eval_set(data_dir, split)[0]
    rows = [row for row in read_manifest(data_dir) if row.split == split]
    level_db = 20 * np.log10(np.maximum(rms(waveforms)[:, 0], 1e-10))
    predicted = decision.clip_labels(probabilities)
    lines = [f"labelled wrong on {split}: {int((predicted != labels).sum())}"]
    for i in np.flatnonzero(predicted != labels):
        lines.append(
            f"{rows[i].path:<28} speaker {rows[i].speaker or '-':<9} rms {level_db[i]:6.1f} dBFS"
            f" {LABELS[labels[i]]:>7} -> {LABELS[predicted[i]]:<7}"
            f" p(yes) {probabilities[i, 0]:.2f} p(no) {probabilities[i, 1]:.2f}"
        )
    return "\n".join(lines)


def precision_recall_curve(
    probabilities: np.ndarray, labels: np.ndarray, keyword: str, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) of the keyword decision for `keyword` at each threshold: a clip is
    that keyword when its probability is the larger of the two keywords' and reaches it."""
    column = LABELS.index(keyword)
    other = LABELS.index("no" if keyword == "yes" else "yes")
    said = labels == column
    precision, recall = [], []
    for threshold in thresholds:
        fired = (probabilities[:, column] >= threshold) & (
            probabilities[:, column] >= probabilities[:, other]
        )
        precision.append((fired & said).sum() / max(fired.sum(), 1))
        recall.append((fired & said).sum() / max(said.sum(), 1))
    return np.asarray(precision), np.asarray(recall)


def save_plots(
    out_dir: Path,
    metrics: dict,
    probabilities: np.ndarray,
    labels: np.ndarray,
    decision: Decision,
) -> None:
    """reliability.png (top-score reliability diagram), confusion.png and
    precision_recall.png (the keyword decision at every threshold) in out_dir."""
    import matplotlib  # optional: only this command needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for figure, name in (
        (plot_reliability(plt, metrics, probabilities, labels), "reliability.png"),
        (plot_confusion(plt, metrics), "confusion.png"),
        (
            plot_precision_recall(plt, metrics, probabilities, labels, decision),
            "precision_recall.png",
        ),
    ):
        figure.tight_layout()
        figure.savefig(out_dir / name, dpi=120)
        plt.close(figure)


def plot_reliability(plt, metrics: dict, probabilities: np.ndarray, labels: np.ndarray):
    """The top-score reliability diagram, with the ECE."""
    table = reliability_bins(probabilities, labels)
    centres = (np.arange(ECE_BINS) + 0.5) / ECE_BINS
    used = table["counts"] > 0
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    axis.bar(centres[used], table["accuracy"][used], width=1 / ECE_BINS, alpha=0.7,
             edgecolor="black", label="accuracy per bin")  # fmt: skip
    axis.plot(table["confidence"][used], table["accuracy"][used], "o", color="C3",
              label="(mean confidence, accuracy)")  # fmt: skip
    axis.set(xlabel="top-class probability", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
             title=f"{metrics['split']}: ECE {metrics['ece']:.4f} ({ECE_BINS} bins)")  # fmt: skip
    axis.legend(loc="upper left", fontsize=8)
    return figure


def plot_confusion(plt, metrics: dict):
    """The confusion matrix: counts, shaded by the share of each true label."""
    counts = np.asarray(metrics["confusion_matrix"]["counts"])
    figure, axis = plt.subplots(figsize=(4.8, 4.2))
    axis.imshow(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1), cmap="Blues")
    for (row, column), count in np.ndenumerate(counts):
        axis.text(column, row, str(count), ha="center", va="center")
    axis.set_xticks(range(len(LABELS)), LABELS)
    axis.set_yticks(range(len(LABELS)), LABELS)
    axis.set(xlabel="predicted", ylabel="true",
             title=f"{metrics['split']}: accuracy {metrics['accuracy']:.4f}")  # fmt: skip
    return figure


def plot_precision_recall(
    plt, metrics: dict, probabilities: np.ndarray, labels: np.ndarray, decision: Decision
):
    """Each keyword's precision and recall at every threshold, and at the decision's."""
    thresholds = np.linspace(0.3, 0.999, 300)
    figure, axis = plt.subplots(figsize=(4.8, 4.5))
    lowest_recall = 1.0
    for index, keyword in enumerate(KEYWORDS):
        precision, recall = precision_recall_curve(probabilities, labels, keyword, thresholds)
        axis.plot(recall, precision, color=f"C{index}", label=f"{keyword} (thresholds 0.3-0.999)")
        chosen = getattr(decision, keyword)
        point = precision_recall_curve(probabilities, labels, keyword, np.array([chosen]))
        axis.plot(point[1], point[0], "o", color=f"C{index}",
                  label=f"{keyword} at its threshold {chosen:.3f}")  # fmt: skip
        lowest_recall = min(lowest_recall, float(point[1][0]))
    # Recall from 0.8, or from below the lowest operating point, so that both points show.
    left = min(0.8, np.floor((lowest_recall - 0.05) * 20) / 20)
    axis.set(xlabel="recall", ylabel="precision", xlim=(left, 1.0), ylim=(0.8, 1.0),
             title=f"{metrics['split']}: keyword decision")  # fmt: skip
    axis.legend(loc="lower left", fontsize=8)
    return figure


def store_metrics(artifact_dir: Path, metrics: dict) -> None:
    """Put metrics into metadata.json; the SavedModel files, and so model_version, are untouched."""
    metadata_path = artifact_dir / METADATA_FILE
    metadata = json.loads(metadata_path.read_text())
    if metadata["model_version"] != metrics["model_version"]:
        raise ValueError("metrics were measured on a different model version")
    metadata["metrics"] = metrics
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument(
        "--write-metadata", action="store_true", help="store the test figures in metadata.json"
    )
    parser.add_argument(
        "--robustness",
        nargs="*",
        choices=ROBUSTNESS_MODES,
        help="score under these modes (all when none are named) and print the drop vs clean",
    )
    parser.add_argument("--plots", type=Path, help="write reliability.png and confusion.png here")
    parser.add_argument("--errors", action="store_true", help="list the misclassified clips")
    parser.add_argument(
        "--answers",
        action="store_true",
        help="label the split's spoken answers and non-answers (model.evaluation.eval_sets;"
        " needs espeak-ng and flite)",
    )
    parser.add_argument(
        "--continuous",
        action="store_true",
        help="label the split's continuous speech without keywords (read, synthetic, chains)",
    )
    parser.add_argument("--read-speech", type=Path, default=DEFAULT_READ_SPEECH)
    args = parser.parse_args()
    metrics, probabilities, labels = evaluate_probabilities(args.artifact, args.data, args.split)
    keyword_model = KeywordModel(args.artifact)
    print(format_report(metrics))
    if args.write_metadata:
        if args.split != "test":
            parser.error("--write-metadata stores test figures; use --split test")
        store_metrics(args.artifact, metrics)
        print(f"metrics written to {args.artifact / METADATA_FILE}")
    if args.plots:
        save_plots(args.plots, metrics, probabilities, labels, keyword_model.decision)
        print(
            f"plots written to {args.plots}: reliability.png, confusion.png, precision_recall.png"
        )
    if args.errors:
        print(format_errors(args.data, args.split, probabilities, labels, keyword_model.decision))
    if args.answers:
        answers = spoken_answers(args.data, args.split, read_speech_dir=args.read_speech)
        windows = recording_windows(keyword_model, answers)
        results = label_recordings(answers, windows, keyword_model.decision)
        print(format_answers(answers_report(results)))
    if args.continuous:
        speech = continuous_speech(args.data, args.read_speech, args.split)
        windows = recording_windows(keyword_model, speech)
        results = label_recordings(speech, windows, keyword_model.decision)
        print(format_continuous(continuous_report(results)))
    if args.robustness is not None:
        modes = args.robustness or list(ROBUSTNESS_MODES)
        print(format_robustness(robustness_report(args.artifact, args.data, args.split, modes)))


if __name__ == "__main__":
    main()
