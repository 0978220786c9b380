"""Train one yes / no / unknown / silence network and export it, in one reproducible command.

`python -m model.train --data ../shared/data/speech_commands --arch ds-cnn-m-ln --epochs 40 --out D`

The shipped model is an ensemble of two such networks, made by `model.ensemble`, which calls
`train` for each member.

Fits on `train` with on-the-fly augmentation (shift, gain, background and babble noise;
SpecAugment inside the model) and label smoothing, optionally towards the averaged probabilities
of earlier trained models (`--teacher DIR`, repeatable: knowledge distillation); keeps the
weights of the epoch with the best `val` balanced accuracy (clean, or averaged over robustness
modes with `--select-under`), fits a softmax temperature on `val`, exports a
fresh model with those weights and the temperature folded in (SavedModel, plus model.onnx
checked against it), then measures it on `test` (report only; test never steers training or
calibration) and stores those figures in the metadata.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import soxr

from model.architecture import ARCHITECTURES, DEFAULT_ARCHITECTURE
from model.contract import CLIP_SAMPLES, LABELS, SAMPLE_RATE
from model.data import (
    SILENCE_LABEL,
    fit_to_clip,
    load_noise,
    load_split,
    log_uniform,
    make_silence,
    random_noise_windows,
    rms,
    shorten,
    time_shift,
)
from model.evaluate import (
    DEFAULT_DATA,
    ROBUSTNESS_MODES,
    classification_metrics,
    evaluate_artifact,
    expected_calibration_error,
    fit_temperature,
    format_report,
    load_eval_set,
    negative_log_likelihood,
    predict_in_batches,
    robustness_probabilities,
    softmax,
    store_metrics,
)
from model.serving import KeywordModel

DEFAULT_EPOCHS = 30
BATCH_SIZE = 64
PEAK_LEARNING_RATE = 3e-3
TF_THREADS = 2  # the machine has 2 cores, shared with other work
LABEL_SMOOTHING = 0.1
# Clips per class drawn each epoch: keywords are oversampled (with fresh augmentation each time)
# to roughly match unknown, which is used in full; silence is made afresh every epoch.
# Hard negatives: the clips of these unknown words are drawn a second time each epoch (`go` is
# the unknown word closest to `no`).
KEYWORD_CLIPS_PER_EPOCH = 1800
SILENCE_CLIPS_PER_EPOCH = 800
EXTRA_EXPOSURE_WORDS = ("go",)
# Robustness modes that need no pipeline round trip: cheap enough to score after every epoch.
FAST_ROBUSTNESS_MODES = tuple(m for m in ROBUSTNESS_MODES if not m.startswith("rate-"))
# With --teacher: the training target is this share of the teachers' mean probabilities on the
# same augmented clip, the rest the (smoothed) one-hot label (Hinton et al. 2015).
DISTILLATION_WEIGHT = 0.5
AUGMENTATION = {
    "time_shift_ms": 300,
    # Silence windows shifted too (zero-filled gaps, as in a padded short recording), or a share
    # of them cut shorter than 1 s and zero-padded evenly, as the pipeline pads a short recording
    # (model.data.shorten). Both fix short noise files; both are off in the shipped recipe, as no
    # model trained with them has passed selection yet (model/README.md).
    "shift_silence": False,
    "short_silence_share": 0.0,
    "noise_probability": 0.8,
    "noise_snr_db": (0.0, 30.0),
    "babble_share": 0.5,  # of the noisy clips: babble of other train unknown clips, not a recording
    "babble_talkers": (3, 6),
    "gain": (0.03, 2.0),  # -30 dB to +6 dB
    # Share of all clips (speech and silence) band-limited like audio recorded at a low rate.
    "band_limit_probability": 0.2,
    "band_limit_rates": (8000, 11025),
}


def configure_tensorflow(seed: int) -> None:
    """Fixed seeds, deterministic ops and at most TF_THREADS threads (set before any TF work)."""
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(TF_THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(TF_THREADS)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def band_limit(waveforms: np.ndarray, rng: np.random.Generator, augmentation: dict) -> np.ndarray:
    """A random share of clips resampled down to 8 or 11.025 kHz and back with soxr, as the
    pipeline does with low-rate recordings, so that the model does not need the top band."""
    limited = waveforms.copy()
    chosen = np.flatnonzero(rng.random(len(waveforms)) < augmentation["band_limit_probability"])
    for i in chosen:
        rate = int(rng.choice(augmentation["band_limit_rates"]))
        low = soxr.resample(waveforms[i], SAMPLE_RATE, rate, quality="HQ")
        limited[i] = fit_to_clip(soxr.resample(low, rate, SAMPLE_RATE, quality="HQ"))
    return np.clip(limited, -1.0, 1.0)


def babble(talkers: np.ndarray, n: int, rng: np.random.Generator, augmentation: dict) -> np.ndarray:
    """n clips, each the sum of 3-6 random clips of `talkers` at random relative levels."""
    low, high = augmentation["babble_talkers"]
    mixed = np.zeros((n, CLIP_SAMPLES), np.float32)
    for i, count in enumerate(rng.integers(low, high + 1, n)):
        picked = talkers[rng.integers(len(talkers), size=count)]
        levels = log_uniform(rng, 0.3, 1.0, count)[:, None] / np.maximum(rms(picked), 1e-8)
        mixed[i] = (picked * levels).sum(axis=0)
    return mixed


def augment_speech(
    waveforms: np.ndarray,
    noise_segments: list[np.ndarray],
    talkers: np.ndarray,
    rng: np.random.Generator,
    augmentation: dict,
) -> np.ndarray:
    """Random time shift, background or babble noise at a random SNR (most clips), random gain.

    `talkers` are train clips of unknown words, so babble never holds a keyword."""
    max_shift = augmentation["time_shift_ms"] * SAMPLE_RATE // 1000
    clips = time_shift(waveforms, rng, max_shift)
    noise = random_noise_windows(noise_segments, len(clips), rng)
    use_babble = np.flatnonzero(rng.random(len(clips)) < augmentation["babble_share"])
    noise[use_babble] = babble(talkers, len(use_babble), rng, augmentation)
    snr_db = rng.uniform(*augmentation["noise_snr_db"], (len(clips), 1))
    noise_rms = rms(clips) / 10 ** (snr_db / 20)
    noise *= noise_rms / np.maximum(rms(noise), 1e-8)
    noise *= rng.random((len(clips), 1)) < augmentation["noise_probability"]
    gain = log_uniform(rng, *augmentation["gain"], len(clips))[:, None]
    return np.clip((clips + noise) * gain, -1.0, 1.0).astype(np.float32)


def epoch_examples(
    speech: np.ndarray,
    labels: np.ndarray,
    words: list[str],
    noise_segments: list[np.ndarray],
    rng: np.random.Generator,
    augmentation: dict,
    extra_exposure_words: tuple[str, ...] = EXTRA_EXPOSURE_WORDS,
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of augmented, class-balanced, shuffled training examples."""
    chosen = []
    for label in range(SILENCE_LABEL):
        members = np.flatnonzero(labels == label)
        if LABELS[label] in ("yes", "no"):
            chosen.append(rng.choice(members, KEYWORD_CLIPS_PER_EPOCH, replace=True))
        else:
            chosen.append(members)
    chosen.append(np.flatnonzero(np.isin(words, extra_exposure_words)))
    indices = np.concatenate(chosen)
    talkers = speech[labels == LABELS.index("unknown")]
    silence = make_silence(noise_segments, SILENCE_CLIPS_PER_EPOCH, rng)
    if augmentation["shift_silence"]:
        silence = time_shift(silence, rng, augmentation["time_shift_ms"] * SAMPLE_RATE // 1000)
    if augmentation["short_silence_share"]:
        short = rng.random(len(silence)) < augmentation["short_silence_share"]
        silence[short] = shorten(silence[short], rng)
    waveforms = band_limit(
        np.concatenate(
            [augment_speech(speech[indices], noise_segments, talkers, rng, augmentation), silence]
        ),
        rng,
        augmentation,
    )
    targets = np.concatenate([labels[indices], np.full(SILENCE_CLIPS_PER_EPOCH, SILENCE_LABEL)])
    order = rng.permutation(len(targets))
    return waveforms[order], targets[order]


def distillation_targets(
    targets: np.ndarray, waveforms: np.ndarray, teachers: list[KeywordModel]
) -> np.ndarray:
    """Training targets [n, 4]: one-hot labels, mixed with the teachers' mean probabilities on
    these very (augmented) waveforms when there are teachers."""
    one_hot = np.eye(len(LABELS), dtype=np.float32)[targets]
    if not teachers:
        return one_hot
    taught = np.mean([predict_in_batches(t.predict, waveforms) for t in teachers], axis=0)
    return (1 - DISTILLATION_WEIGHT) * one_hot + DISTILLATION_WEIGHT * taught


def class_counts(labels: np.ndarray) -> dict[str, int]:
    return {label: int((labels == i).sum()) for i, label in enumerate(LABELS)}


def train(
    data_dir: Path,
    out_dir: Path,
    seed: int,
    epochs: int,
    architecture: str,
    teacher_dirs: tuple[Path, ...] = (),
    augmentation: dict = AUGMENTATION,
    extra_exposure_words: tuple[str, ...] = EXTRA_EXPOSURE_WORDS,
    selection_modes: tuple[str, ...] = (),
) -> None:
    configure_tensorflow(seed)
    import keras

    from model.architecture import build_model, describe
    from model.export import (
        artifact_metadata,
        copy_data_license,
        export_saved_model,
        write_metadata,
    )
    from model.onnx_export import write_onnx

    started = time.monotonic()
    rng = np.random.default_rng(seed)
    train_speech, train_labels, train_paths = load_split(data_dir, "train")
    train_words = [path.split("/")[0] for path in train_paths]
    val_waveforms, val_targets, _ = load_eval_set(data_dir, "val")  # speech, then silence
    noise_segments = load_noise(data_dir, "train")
    teachers = [KeywordModel(teacher) for teacher in teacher_dirs]

    model = build_model(architecture)
    examples_per_epoch = (
        2 * KEYWORD_CLIPS_PER_EPOCH
        + int((train_labels == LABELS.index("unknown")).sum())
        + int(np.isin(train_words, extra_exposure_words).sum())
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
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=LABEL_SMOOTHING
        ),
        metrics=["categorical_accuracy"],
    )

    def predict(batch: np.ndarray) -> np.ndarray:
        return model.predict(batch, batch_size=256, verbose=0)

    best_score, best_accuracy, best_balanced = -1.0, 0.0, 0.0
    best_epoch, best_weights = 0, model.get_weights()
    for epoch in range(epochs):
        waveforms, targets = epoch_examples(
            train_speech,
            train_labels,
            train_words,
            noise_segments,
            rng,
            augmentation,
            extra_exposure_words,
        )
        history = model.fit(
            waveforms,
            distillation_targets(targets, waveforms, teachers),
            batch_size=BATCH_SIZE,
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=False,
            verbose=0,
        )
        # Clean first, then each selection mode.
        val_predicted = [
            probabilities.argmax(axis=1)
            for probabilities in [
                predict(val_waveforms),
                *(
                    robustness_probabilities(predict, mode, val_waveforms, val_targets)
                    for mode in selection_modes
                ),
            ]
        ]
        val_accuracy = float((val_predicted[0] == val_targets).mean())
        val_balanced = [
            classification_metrics(val_targets, predicted)["balanced_accuracy"]
            for predicted in val_predicted
        ]
        val_score = float(np.mean(val_balanced))
        if val_score > best_score:
            best_score, best_accuracy, best_balanced = val_score, val_accuracy, val_balanced[0]
            best_epoch, best_weights = epoch + 1, model.get_weights()
        print(
            f"epoch {epoch + 1}/{epochs} loss {history.history['loss'][-1]:.4f}"
            f" train acc {history.history['categorical_accuracy'][-1]:.4f}"
            f" val acc {val_accuracy:.4f} val balanced acc {val_balanced[0]:.4f}"
            f" selection score {val_score:.4f} (best {best_score:.4f} @ {best_epoch})"
            f" {time.monotonic() - started:.0f}s",
            flush=True,
        )
    selection = (
        "weights of the epoch with the best val balanced accuracy (mean per-class recall, so"
        " keyword recall weighs as much as unknown)"
    )
    if selection_modes:
        selection += f", averaged over clean and {', '.join(selection_modes)}"
    # A fresh model holds only the network's variables (no optimizer state) for export.
    model = build_model(architecture)
    model.set_weights(best_weights)
    val_logits = model.predict(val_waveforms, batch_size=256, verbose=0)
    temperature = fit_temperature(val_logits, val_targets)
    calibration = {
        "fitted_on": "val speech clips + val silence windows, clean",
        "temperature": temperature,
        **{
            f"val_{name}_{when}": function(softmax(val_logits / t), val_targets)
            for when, t in (("before", 1.0), ("after", temperature))
            for name, function in (
                ("ece", expected_calibration_error),
                ("nll", negative_log_likelihood),
            )
        },
    }
    print(f"temperature {temperature:.3f}: {calibration}")

    difference = export_saved_model([(model, temperature)], out_dir, val_waveforms[:BATCH_SIZE])
    print(f"exported to {out_dir}; reloaded SavedModel matches Keras within {difference:.2e}")
    onnx = write_onnx(out_dir, [(model, temperature)], val_waveforms)
    print(f"model.onnx matches the SavedModel within {onnx['checked_against_saved_model']}")
    copy_data_license(data_dir, out_dir)
    wall_seconds = time.monotonic() - started
    write_metadata(
        out_dir,
        artifact_metadata(
            out_dir,
            architecture=describe(model),
            training={
                "data": "Speech Commands subset (Warden 2018, arXiv:1804.03209), CC BY 4.0",
                "clips": {
                    "train": {
                        **class_counts(train_labels),
                        "silence": f"{SILENCE_CLIPS_PER_EPOCH} new windows per epoch",
                    },
                    "val": class_counts(val_targets),
                },
                "per_epoch": {
                    "yes": KEYWORD_CLIPS_PER_EPOCH,
                    "no": KEYWORD_CLIPS_PER_EPOCH,
                    "unknown": f"all train clips, {', '.join(extra_exposure_words)} twice",
                    "silence": SILENCE_CLIPS_PER_EPOCH,
                },
                "silence": "1 s windows of the background-noise files (first 80% of each file for"
                " train, next 10% val, last 10% test) at random level, plus 15% zeros or"
                " faint hiss",
                "seed": seed,
                "epochs": epochs,
                "batch_size": BATCH_SIZE,
                "optimizer": f"Adam, cosine decay from {PEAK_LEARNING_RATE} with 5% warm-up",
                "loss": f"cross-entropy, label smoothing {LABEL_SMOOTHING}",
                "extra_exposure": f"every {', '.join(extra_exposure_words)} clip drawn twice"
                " per epoch",
                "distillation": {
                    "teachers": [teacher.version for teacher in teachers],
                    "weight": DISTILLATION_WEIGHT,
                    "target": "weight x the teachers' mean probabilities on each augmented clip"
                    " + (1 - weight) x the one-hot label",
                }
                if teachers
                else None,
                "augmentation": augmentation,
                "selection": selection,
                "best_epoch": best_epoch,
                "best_val_selection_score": best_score,
                "best_val_balanced_accuracy": best_balanced,
                "best_val_accuracy": best_accuracy,
                "wall_seconds": round(wall_seconds, 1),
            },
            calibration=calibration,
            onnx=onnx,
        ),
    )
    metrics = evaluate_artifact(out_dir, data_dir)
    store_metrics(out_dir, metrics)
    print(format_report(metrics))
    print(f"total {time.monotonic() - started:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default=DEFAULT_ARCHITECTURE)
    parser.add_argument(
        "--teacher",
        type=Path,
        action="append",
        default=[],
        help="an earlier artifact whose probabilities the model also learns from (repeatable)",
    )
    parser.add_argument(
        "--babble-share",
        type=float,
        default=AUGMENTATION["babble_share"],
        help="share of the noisy training clips mixed with babble instead of a noise recording",
    )
    parser.add_argument(
        "--extra-exposure",
        nargs="+",
        default=list(EXTRA_EXPOSURE_WORDS),
        metavar="WORD",
        help="unknown words whose clips are drawn twice per epoch (hard negatives)",
    )
    parser.add_argument(
        "--select-under",
        nargs="*",
        default=[],
        choices=FAST_ROBUSTNESS_MODES,
        metavar="MODE",
        help="keep the epoch with the best val balanced accuracy averaged over clean and these"
        f" robustness modes (of {', '.join(FAST_ROBUSTNESS_MODES)}); default clean only",
    )
    parser.add_argument(
        "--shift-silence",
        action="store_true",
        help="time-shift the silence windows too, leaving zero-filled gaps",
    )
    parser.add_argument(
        "--short-silence",
        type=float,
        default=AUGMENTATION["short_silence_share"],
        metavar="SHARE",
        help="share of silence windows cut to 0.25-0.95 s and zero-padded like a short file",
    )
    args = parser.parse_args()
    train(
        args.data,
        args.out,
        args.seed,
        args.epochs,
        args.arch,
        tuple(args.teacher),
        AUGMENTATION
        | {
            "babble_share": args.babble_share,
            "shift_silence": args.shift_silence,
            "short_silence_share": args.short_silence,
        },
        tuple(args.extra_exposure),
        tuple(args.select_under),
    )


if __name__ == "__main__":
    main()
