"""Score the exported model on the test split and report the figures the model card quotes.

`python -m model.evaluate [--artifact DIR] [--data DIR] [--write-metadata]`

Loads the artifact exactly as consumers do (model.serving.KeywordModel), scores every test speech
clip plus TEST_SILENCE_WINDOWS deterministic silence windows from the test time portion of the
noise recordings. The metric functions are pure (numpy in, dict out) for unit tests.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from model.contract import DEFAULT_ARTIFACT, LABELS, METADATA_FILE
from model.data import SILENCE_LABEL, load_split, silence_windows

DEFAULT_DATA = Path("../shared/data/speech_commands")
TEST_SILENCE_WINDOWS = 200
TEST_SILENCE_SEED = 20_240_601
KEYWORDS = ("yes", "no")
CONFUSABLE_WORD = "go"  # the unknown word most easily heard as "no"
BATCH_SIZE = 256


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
    return {
        "accuracy": float(correct.sum() / matrix.sum()) if matrix.sum() else 0.0,
        "per_class": per_class,
        "confusion_matrix": {
            "rows_true_columns_predicted": list(LABELS),
            "counts": matrix.tolist(),
        },
    }


def keyword_error_metrics(
    true_labels: np.ndarray, predicted_labels: np.ndarray, words: list[str]
) -> dict:
    """How often non-keywords fire a keyword, and how `no` and `go` get mixed up.

    false_keyword_rate: share of unknown + silence clips predicted as yes or no (the error that
    puts a wrong keyword label in the output). words[i] is the spoken word of clip i ("" for
    silence).
    """
    keyword_ids = [LABELS.index(word) for word in KEYWORDS]
    non_keyword = ~np.isin(true_labels, keyword_ids)
    fired = np.isin(predicted_labels, keyword_ids)
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


def load_test_set(data_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Test speech clips followed by the fixed test silence windows: waveforms, labels, words."""
    speech, labels, paths = load_split(data_dir, "test")
    silence = silence_windows(data_dir, "test", TEST_SILENCE_WINDOWS, TEST_SILENCE_SEED)
    waveforms = np.concatenate([speech, silence])
    all_labels = np.concatenate([labels, np.full(len(silence), SILENCE_LABEL, np.int64)])
    words = [path.split("/")[0] for path in paths] + [""] * len(silence)
    return waveforms, all_labels, words


def predict_in_batches(predict, waveforms: np.ndarray) -> np.ndarray:
    """Probabilities for all waveforms, BATCH_SIZE at a time, as the labelling pipeline does."""
    batches = [predict(waveforms[i : i + BATCH_SIZE]) for i in range(0, len(waveforms), BATCH_SIZE)]
    return np.concatenate(batches)


def evaluate_artifact(artifact_dir: Path, data_dir: Path) -> dict:
    """All test metrics of the exported model, as stored under metadata.json's `metrics`."""
    from model.serving import KeywordModel  # loads TensorFlow, which the pure metrics don't need

    keyword_model = KeywordModel(artifact_dir)
    waveforms, labels, words = load_test_set(data_dir)
    predicted = predict_in_batches(keyword_model.predict, waveforms).argmax(axis=1)
    return {
        "split": "test",
        "model_version": keyword_model.version,
        "speech_clips": int((labels != SILENCE_LABEL).sum()),
        "silence_windows": TEST_SILENCE_WINDOWS,
        "silence_seed": TEST_SILENCE_SEED,
        **classification_metrics(labels, predicted),
        **keyword_error_metrics(labels, predicted, words),
    }


def format_report(metrics: dict) -> str:
    """Human-readable summary of evaluate_artifact's dict."""
    lines = [
        f"model {metrics['model_version']} on {metrics['split']}: {metrics['speech_clips']} speech"
        f" clips + {metrics['silence_windows']} silence windows (seed {metrics['silence_seed']})",
        f"4-class accuracy: {metrics['accuracy']:.4f}",
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
    ]
    return "\n".join(lines)


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
    parser.add_argument(
        "--write-metadata", action="store_true", help="store the figures in metadata.json"
    )
    args = parser.parse_args()
    metrics = evaluate_artifact(args.artifact, args.data)
    print(format_report(metrics))
    if args.write_metadata:
        store_metrics(args.artifact, metrics)
        print(f"metrics written to {args.artifact / METADATA_FILE}")


if __name__ == "__main__":
    main()
