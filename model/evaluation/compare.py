"""Compare exported candidate models on the same val and test clips in one run.

`python -m model.evaluation.compare --data ../shared/data/speech_commands ARTIFACT_DIR...`

Prints a markdown table: parameters, multiply-adds per window, training epochs, val and test
accuracy, false keyword rate, ECE, val robust accuracy (model.evaluation.evaluate.robust_accuracy),
the val short-noise files labelled silence and val noise-sweep windows labelled a keyword, and
throughput (windows/s through KeywordModel.predict at batch 256, best of THROUGHPUT_REPEATS timed
passes after a warm-up). Only val figures may pick the model to ship; test figures are reported.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from model.evaluation.evaluate import (
    BATCH_SIZE,
    DEFAULT_DATA,
    ROBUSTNESS_MODES,
    Predict,
    load_eval_set,
    noise_sweep_clips,
    predict_in_batches,
    robust_accuracy,
    robustness_report,
    score_metrics,
    short_noise_clips,
    silence_check,
)

THROUGHPUT_WINDOWS = 2048
THROUGHPUT_REPEATS = 3


def windows_per_second(predict: Predict, waveforms: np.ndarray) -> float:
    """Best-of-THROUGHPUT_REPEATS rate of predict over `waveforms` in batches of BATCH_SIZE."""
    predict(waveforms[:BATCH_SIZE])  # warm-up
    best = float("inf")
    for _ in range(THROUGHPUT_REPEATS):
        started = time.perf_counter()
        predict_in_batches(predict, waveforms)
        best = min(best, time.perf_counter() - started)
    return len(waveforms) / best


def compare(artifacts: list[Path], data_dir: Path) -> list[dict]:
    """One row of figures per artifact, all measured on the same clips in this process."""
    from model.serving import KeywordModel

    sets = {split: load_eval_set(data_dir, split) for split in ("val", "test")}
    noise_checks = {
        "val_short_noise": short_noise_clips(data_dir, "val"),
        "val_noise_sweep": noise_sweep_clips(data_dir, "val"),
    }
    timing = np.resize(sets["test"][0], (THROUGHPUT_WINDOWS, sets["test"][0].shape[1]))
    rows = []
    for artifact in artifacts:
        keyword_model = KeywordModel(artifact)
        predict = keyword_model.predict
        figures = {
            split: score_metrics(
                predict_in_batches(predict, waveforms), labels, words, keyword_model.decision
            )
            for split, (waveforms, labels, words) in sets.items()
        }
        architecture = keyword_model.metadata["architecture"]
        rows.append(
            {
                "artifact": str(artifact),
                "name": architecture["name"],
                "epochs": keyword_model.metadata["training"]["epochs"],
                "parameters": architecture["parameters"],
                "macs_per_window": architecture["macs_per_window"],
                "temperature": keyword_model.metadata.get("calibration", {}).get("temperature"),
                "val": figures["val"],
                "val_robust_accuracy": robust_accuracy(
                    robustness_report(artifact, data_dir, "val", list(ROBUSTNESS_MODES))
                ),
                **{
                    name: silence_check(predict, clips, keyword_model.decision)
                    for name, clips in noise_checks.items()
                },
                "test": figures["test"],
                "windows_per_second": windows_per_second(predict, timing),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of compare's rows."""
    lines = [
        "| candidate | epochs | params | MACs/window | T | val acc | val bal acc | val FKR |"
        " val ECE | val robust acc | val short noise -> silence | val sweep -> yes/no | test acc"
        " | test bal acc | test FKR | test go->no | test ECE | windows/s |",
        "|---" * 18 + "|",
    ]
    for row in rows:
        val, test = row["val"], row["test"]
        temperature = "-" if row["temperature"] is None else f"{row['temperature']:.3f}"
        lines.append(
            f"| {row['name']} (`{row['artifact']}`) | {row['epochs']} | {row['parameters']:,}"
            f" | {row['macs_per_window'] / 1e6:.2f} M | {temperature}"
            f" | {val['accuracy']:.4f} | {val['balanced_accuracy']:.4f}"
            f" | {val['false_keyword_rate']:.4f} | {val['ece']:.4f}"
            f" | {row['val_robust_accuracy']:.4f}"
            f" | {row['val_short_noise']['silence']}/{row['val_short_noise']['clips']}"
            f" | {row['val_noise_sweep']['keyword']}/{row['val_noise_sweep']['clips']}"
            f" | {test['accuracy']:.4f} | {test['balanced_accuracy']:.4f}"
            f" | {test['false_keyword_rate']:.4f}"
            f" | {test['no_vs_go']['go_predicted_no']}/{test['no_vs_go']['go_clips']}"
            f" | {test['ece']:.4f} | {row['windows_per_second']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("artifacts", type=Path, nargs="+")
    args = parser.parse_args()
    print(format_table(compare(args.artifacts, args.data)))


if __name__ == "__main__":
    main()
