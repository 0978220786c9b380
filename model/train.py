"""Train the yes / no / unknown / silence model and export it, in one reproducible command.

`python -m model.train --data ../shared/data/speech_commands --out model/artifacts/yesno`

Fits on `train` with on-the-fly augmentation, keeps the weights with the best `val` balanced
accuracy, exports the SavedModel with metadata.json, then measures it on `test` (report only;
test never steers training) and stores those figures in the metadata.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from model.contract import CLIP_SAMPLES, LABELS, SAMPLE_RATE
from model.data import (
    SILENCE_LABEL,
    load_noise,
    load_split,
    log_uniform,
    make_silence,
    random_noise_windows,
    rms,
    silence_windows,
)
from model.evaluate import DEFAULT_DATA, evaluate_artifact, format_report, store_metrics

DEFAULT_OUT = Path("model/artifacts/yesno")
DEFAULT_EPOCHS = 30
BATCH_SIZE = 64
PEAK_LEARNING_RATE = 3e-3
TF_THREADS = 2  # the machine has 2 cores, shared with other work
VAL_SILENCE_WINDOWS = 200
VAL_SILENCE_SEED = 7
# Clips per class drawn each epoch: keywords are oversampled (with fresh augmentation each time)
# to roughly match unknown, which is used in full; silence is made afresh every epoch.
KEYWORD_CLIPS_PER_EPOCH = 1800
SILENCE_CLIPS_PER_EPOCH = 800
AUGMENTATION = {
    "time_shift_ms": 100,
    "noise_probability": 0.8,
    "noise_snr_db": (3.0, 30.0),
    "gain": (0.2, 2.0),
}


def configure_tensorflow(seed: int) -> None:
    """Fixed seeds, deterministic ops and at most TF_THREADS threads (set before any TF work)."""
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(TF_THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(TF_THREADS)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def time_shift(waveforms: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Each clip moved by up to max_shift samples either way, zero-filled, so the model does not
    rely on words being centred."""
    shifted = np.zeros_like(waveforms)
    for i, shift in enumerate(rng.integers(-max_shift, max_shift + 1, len(waveforms))):
        if shift >= 0:
            shifted[i, shift:] = waveforms[i, : CLIP_SAMPLES - shift]
        else:
            shifted[i, :shift] = waveforms[i, -shift:]
    return shifted


def augment_speech(
    waveforms: np.ndarray, noise_segments: list[np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """Random time shift, background noise at a random SNR (most clips), and random gain."""
    max_shift = AUGMENTATION["time_shift_ms"] * SAMPLE_RATE // 1000
    clips = time_shift(waveforms, rng, max_shift)
    noise = random_noise_windows(noise_segments, len(clips), rng)
    snr_db = rng.uniform(*AUGMENTATION["noise_snr_db"], (len(clips), 1))
    noise_rms = rms(clips) / 10 ** (snr_db / 20)
    noise *= noise_rms / np.maximum(rms(noise), 1e-8)
    noise *= rng.random((len(clips), 1)) < AUGMENTATION["noise_probability"]
    gain = log_uniform(rng, *AUGMENTATION["gain"], len(clips))[:, None]
    return np.clip((clips + noise) * gain, -1.0, 1.0).astype(np.float32)


def epoch_examples(
    speech: np.ndarray,
    labels: np.ndarray,
    noise_segments: list[np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of augmented, class-balanced, shuffled training examples."""
    chosen = []
    for label in range(SILENCE_LABEL):
        members = np.flatnonzero(labels == label)
        if LABELS[label] in ("yes", "no"):
            chosen.append(rng.choice(members, KEYWORD_CLIPS_PER_EPOCH, replace=True))
        else:
            chosen.append(members)
    indices = np.concatenate(chosen)
    waveforms = np.concatenate(
        [
            augment_speech(speech[indices], noise_segments, rng),
            make_silence(noise_segments, SILENCE_CLIPS_PER_EPOCH, rng),
        ]
    )
    targets = np.concatenate([labels[indices], np.full(SILENCE_CLIPS_PER_EPOCH, SILENCE_LABEL)])
    order = rng.permutation(len(targets))
    return waveforms[order], targets[order]


def balanced_accuracy(targets: np.ndarray, predicted: np.ndarray) -> float:
    """Mean per-class recall: the selection score, so that the few keyword clips in val count as
    much as the many unknown ones."""
    return float(np.mean([(predicted[targets == c] == c).mean() for c in np.unique(targets)]))


def class_counts(labels: np.ndarray) -> dict[str, int]:
    return {label: int((labels == i).sum()) for i, label in enumerate(LABELS)}


def train(data_dir: Path, out_dir: Path, seed: int, epochs: int) -> None:
    configure_tensorflow(seed)
    import keras

    from model.architecture import build_model, describe
    from model.export import copy_data_license, export_saved_model, model_version, write_metadata

    started = time.monotonic()
    rng = np.random.default_rng(seed)
    train_speech, train_labels, _ = load_split(data_dir, "train")
    val_speech, val_labels, _ = load_split(data_dir, "val")
    val_silence = silence_windows(data_dir, "val", VAL_SILENCE_WINDOWS, VAL_SILENCE_SEED)
    val_waveforms = np.concatenate([val_speech, val_silence])
    val_targets = np.concatenate([val_labels, np.full(len(val_silence), SILENCE_LABEL)])
    noise_segments = load_noise(data_dir, "train")

    model = build_model()
    examples_per_epoch = (
        2 * KEYWORD_CLIPS_PER_EPOCH
        + int((train_labels == LABELS.index("unknown")).sum())
        + SILENCE_CLIPS_PER_EPOCH
    )
    total_steps = epochs * -(-examples_per_epoch // BATCH_SIZE)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        total_steps,
        alpha=0.01,
        warmup_target=PEAK_LEARNING_RATE,
        warmup_steps=total_steps // 20,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    best_score, best_accuracy, best_epoch, best_weights = -1.0, 0.0, 0, model.get_weights()
    for epoch in range(epochs):
        waveforms, targets = epoch_examples(train_speech, train_labels, noise_segments, rng)
        history = model.fit(
            waveforms,
            targets,
            batch_size=BATCH_SIZE,
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,
            verbose=0,
        )
        val_predicted = model.predict(val_waveforms, batch_size=256, verbose=0).argmax(axis=1)
        val_accuracy = float((val_predicted == val_targets).mean())
        val_score = balanced_accuracy(val_targets, val_predicted)
        if val_score > best_score:
            best_score, best_accuracy = val_score, val_accuracy
            best_epoch, best_weights = epoch + 1, model.get_weights()
        print(
            f"epoch {epoch + 1}/{epochs} loss {history.history['loss'][-1]:.4f}"
            f" train acc {history.history['accuracy'][-1]:.4f} val acc {val_accuracy:.4f}"
            f" val balanced acc {val_score:.4f} (best {best_score:.4f} @ {best_epoch})"
            f" {time.monotonic() - started:.0f}s",
            flush=True,
        )
    model.set_weights(best_weights)

    difference = export_saved_model(model, out_dir, val_waveforms[:BATCH_SIZE])
    print(f"exported to {out_dir}; reloaded SavedModel matches Keras within {difference:.2e}")
    copy_data_license(data_dir, out_dir)
    wall_seconds = time.monotonic() - started
    write_metadata(
        out_dir,
        {
            "labels": list(LABELS),
            "sample_rate": SAMPLE_RATE,
            "clip_samples": CLIP_SAMPLES,
            "clip_seconds": CLIP_SAMPLES / SAMPLE_RATE,
            "model_version": model_version(out_dir),
            "architecture": describe(model),
            "training": {
                "data": "Speech Commands subset (Warden 2018, arXiv:1804.03209), CC BY 4.0",
                "clips": {
                    "train": {
                        **class_counts(train_labels),
                        "silence": f"{SILENCE_CLIPS_PER_EPOCH} new windows per epoch",
                    },
                    "val": {**class_counts(val_labels), "silence": VAL_SILENCE_WINDOWS},
                },
                "per_epoch": {
                    "yes": KEYWORD_CLIPS_PER_EPOCH,
                    "no": KEYWORD_CLIPS_PER_EPOCH,
                    "unknown": "all train clips",
                    "silence": SILENCE_CLIPS_PER_EPOCH,
                },
                "silence": "1 s windows of the background-noise files (first 80% of each file for"
                " train, next 10% val, last 10% test) at random level, plus 15% zeros or"
                " faint hiss",
                "seed": seed,
                "epochs": epochs,
                "batch_size": BATCH_SIZE,
                "optimizer": f"Adam, cosine decay from {PEAK_LEARNING_RATE} with 5% warm-up",
                "augmentation": AUGMENTATION,
                "selection": "weights of the epoch with the best val balanced accuracy"
                " (mean per-class recall, so keyword recall weighs as much as unknown)",
                "best_epoch": best_epoch,
                "best_val_balanced_accuracy": best_score,
                "best_val_accuracy": best_accuracy,
                "wall_seconds": round(wall_seconds, 1),
            },
        },
    )
    metrics = evaluate_artifact(out_dir, data_dir)
    store_metrics(out_dir, metrics)
    print(format_report(metrics))
    print(f"total {time.monotonic() - started:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    args = parser.parse_args()
    train(args.data, args.out, args.seed, args.epochs)


if __name__ == "__main__":
    main()
