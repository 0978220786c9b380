"""Train one yes / no / unknown / silence network and export it, in one reproducible command.

`python -m model.training.train --data ../shared/data/speech_commands --arch ds-cnn-m-ln --epochs 40
--out D`

The shipped model is an ensemble of two such networks, made by `model.training.ensemble`, which
calls `train` for each member.

Fits on `train` with on-the-fly augmentation (shift, gain, background and babble noise;
SpecAugment inside the model) and label smoothing, optionally towards the averaged probabilities
of earlier trained models (`--teacher DIR`, repeatable: knowledge distillation) and beside a head
that names each example's own word (`--word-head WEIGHT`, not exported); keeps the
weights (or, with `--average`, their moving average over the training steps) of the epoch with
the best `val` balanced accuracy (clean, or averaged over robustness modes with
`--select-under`), fits a softmax temperature on `val`, exports a
fresh model with those weights and the temperature folded in (SavedModel, plus model.onnx
checked against it), then measures it on `test` (report only; test never steers training or
calibration) and stores those figures in the metadata.
"""

import argparse
import contextlib
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from model.audio import split_windows
from model.contract import CLIP_SAMPLES, LABELS, SAMPLE_RATE
from model.decision import KEYWORD_IDS, KEYWORDS, Decision
from model.evaluation.eval_sets import sound_clips
from model.evaluation.evaluate import (
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
from model.training.architecture import ARCHITECTURES, DEFAULT_ARCHITECTURE
from model.training.checkpoint import capture as capture_checkpoint
from model.training.checkpoint import checkpoint_dir
from model.training.checkpoint import load as load_checkpoint
from model.training.checkpoint import remove as remove_checkpoint
from model.training.checkpoint import restore as restore_checkpoint
from model.training.checkpoint import save as save_checkpoint
from model.training.data import (
    DEFAULT_READ_SPEECH,
    SILENCE_LABEL,
    active_region,
    add_neighbours,
    change_speed,
    fit_to_clip,
    load_noise,
    load_read_speech,
    load_split,
    log_uniform,
    make_silence,
    pair_words,
    place_word,
    random_noise_windows,
    read_manifest,
    reverberate,
    rms,
    shorten,
    speech_windows,
    time_shift,
)
from model.training.synth import (
    NON_KEYWORDS,
    FliteVoice,
    Voice,
    mixed_voices,
    random_word_sequence,
    speak,
)

DEFAULT_EPOCHS = 30
BATCH_SIZE = 64
# With a moving average of the weights (`--average MOMENTUM`), the batch-norm statistics of the
# averaged weights are re-estimated on this many training batches before each validation (the
# statistics' own momentum, BN_MOMENTUM, forgets the trained weights' within them).
BATCH_NORM_BATCHES = 32
PEAK_LEARNING_RATE = 3e-3
TF_THREADS = 2  # the machine has 2 cores, shared with other work
LABEL_SMOOTHING = 0.1
# Clips per class drawn each epoch: keywords are oversampled (with fresh augmentation each time)
# to roughly match unknown, which is used in full; silence is made afresh every epoch.
# Hard negatives: the clips of these unknown words are drawn a second time each epoch (`go` is
# the unknown word closest to `no`).
KEYWORD_CLIPS_PER_EPOCH = 1800
SILENCE_CLIPS_PER_EPOCH = 800
# The bank of non-speech sounds trained on (val and test have their own,
# model.evaluation.eval_sets.SEEDS).
TRAIN_SOUND_BANK = 5
# Unknown words, weighted so each word counts: every clip once, a rare word's clips drawn until
# it has MIN_DRAWS_PER_WORD, and the hard negatives (the words most often heard as yes or no)
# HARD_NEGATIVE_DRAWS times that (`--hard-negative-draws`).
MIN_DRAWS_PER_WORD = 60
HARD_NEGATIVE_DRAWS = 2
HARD_NEGATIVE_WORDS = ("go", "down", "left", "nine", "six", "off", "zero", "marvin")
# Continuous speech that holds neither keyword, as `unknown` windows: read sentences (real) and
# word sequences (synthetic), drawn afresh each epoch.
READ_SPEECH_WINDOWS_PER_EPOCH = 800
SYNTHETIC_SENTENCE_WINDOWS_PER_EPOCH = 400
# Hard continuous-speech windows (`--mine-with DIR`): windows of the training continuous speech
# (read sentences, synthetic word sequences, chains of unknown clips) that a trained model hears
# as a keyword with at least MINING_FLOOR probability, drawn as `unknown` each epoch.
MINING_FLOOR = 0.3
MINED_WINDOWS_PER_EPOCH = 600
MINING_CHAINS = 200
MINING_CHAIN_CLIPS = 12
# Synthetic words (espeak-ng, training voices only): a pool made once, drawn each epoch.
SYNTHETIC_KEYWORDS_PER_WORD = 500  # in the pool, for each of yes and no
SYNTHETIC_NON_KEYWORDS = 1500
SYNTHETIC_SENTENCES = 300
SYNTHETIC_KEYWORDS_PER_EPOCH = 300  # each of yes and no
# Synthetic answers spoken as one utterance, the keyword first ("yes, thank you") or last ("oh,
# no"), cut into the 1 s window that starts just before the keyword or ends just after it: the
# keyword run into its neighbours, as in a spoken answer. In the pool, for each keyword.
SYNTHETIC_PHRASES_PER_WORD = 300
PHRASE_WINDOW_MARGIN_S = (0.0, 0.25)
SYNTHETIC_NON_KEYWORDS_PER_EPOCH = 600
# Robustness modes that need no pipeline round trip: cheap enough to score after every epoch.
FAST_ROBUSTNESS_MODES = tuple(m for m in ROBUSTNESS_MODES if not m.startswith("rate-"))
# With `--word-head WEIGHT`: a second output, trained beside the four classes (its loss weighted
# by WEIGHT) and dropped at export, names each example's own word (the Speech Commands words, the
# synthetic words, running speech, silence), so that the network learns what tells `go` from
# `no` instead of only that both are not `yes`.
RUNNING_SPEECH_WORD = "_speech_"
SILENCE_WORD = "_silence_"
# With --teacher: the training target is this share of the teachers' mean probabilities on the
# same augmented clip, the rest the (smoothed) one-hot label (Hinton et al. 2015).
DISTILLATION_WEIGHT = 0.5
AUGMENTATION = {
    "time_shift_ms": 300,
    # Share of speech clips played 0.88-1.12 times as fast (model.training.data.change_speed): a
    # speaker's word in a higher or lower, quicker or slower voice. Off in the shipped recipe.
    "speed_share": 0.0,
    "speed_factors": (0.88, 1.12),
    # Silence windows shifted too (zero-filled gaps, as in a padded short recording), or a share
    # of them cut shorter than 1 s and zero-padded evenly, as the pipeline pads a short recording
    # (model.training.data.shorten). Both fix short noise files; both are off in the shipped recipe,
    # as no model trained with them has passed selection yet (model/README.md).
    "shift_silence": False,
    "short_silence_share": 0.0,
    # Share of silence windows replaced by non-speech sounds (hiss with harmonic tones and noise
    # bursts, model.evaluation.eval_sets.sound_clips) from a bank of the train split's own: sounds
    # that are no speech must not be heard as a keyword. Off in the shipped recipe.
    "non_speech_share": 0.0,
    "noise_probability": 0.8,
    "noise_snr_db": (0.0, 30.0),
    "babble_share": 0.5,  # of the noisy clips: babble of other train unknown clips, not a recording
    "babble_talkers": (3, 6),
    # Share of speech clips given a neighbouring word just before or after their own word (cut
    # by the window's edge), as windows of running speech see a word; the label stays true.
    "neighbour_share": 0.4,
    "neighbour_max_gap_ms": 150,
    # Share of speech clips (apart from those) given a whole second word in the same window, as a
    # spoken answer's window holds "yes I" (model.training.data.pair_words); the label stays true.
    "pair_share": 0.0,
    # Share of speech clips heard through a synthetic room (model.training.data.reverberate):
    # reverberation times and direct-to-reverberant ratios of a talker a few metres away in a
    # room. Off in the shipped recipe.
    "reverb_share": 0.0,
    "reverb_rt60_s": (0.2, 0.8),
    "reverb_direct_to_reverberant_db": (-3.0, 12.0),
    "gain": (0.03, 2.0),  # -30 dB to +6 dB
    # Share of all clips (speech and silence) band-limited like audio recorded at a low rate.
    "band_limit_probability": 0.2,
    "band_limit_rates": (8000, 11025),
}


def configure_tensorflow(seed: int) -> None:
    """Fixed seeds, deterministic ops and at most TF_THREADS threads. The threads can only be set
    before TensorFlow's first work in the process: where a caller has already run it, they stay
    as they are."""
    import keras
    import tensorflow as tf

    threading = tf.config.threading
    with contextlib.suppress(RuntimeError):
        threading.set_intra_op_parallelism_threads(TF_THREADS)
        threading.set_inter_op_parallelism_threads(TF_THREADS)
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


@dataclass(frozen=True)
class SyntheticPool:
    """espeak-ng speech in the training voices: single words placed in 1 s clips with their
    labels and words (an answer window's word is its keyword), and whole word sequences holding
    no keyword."""

    clips: np.ndarray
    labels: np.ndarray
    sentences: list[np.ndarray]
    words: np.ndarray


@dataclass(frozen=True)
class TrainingSources:
    """Everything an epoch is drawn from."""

    speech: np.ndarray  # train clips [n, 16000]
    labels: np.ndarray
    words: list[str]
    noise_segments: list[np.ndarray]
    read_speech: list[np.ndarray]  # whole train recordings of read sentences
    synthetic: SyntheticPool | None
    # Continuous-speech windows drawn each epoch: (read sentences, synthetic word sequences).
    continuous_windows: tuple[int, int] = (
        READ_SPEECH_WINDOWS_PER_EPOCH,
        SYNTHETIC_SENTENCE_WINDOWS_PER_EPOCH,
    )
    mined: np.ndarray | None = None  # hard continuous-speech windows (mine_hard_windows)


def make_synthetic_pool(
    rng: np.random.Generator,
    keyword_phrases: bool = True,
    sentences: int = SYNTHETIC_SENTENCES,
    flite_share: float = 0.0,
) -> SyntheticPool:
    """The synthetic words, sentences and (with `keyword_phrases`) answer windows of one training
    run (a minute or two of espeak-ng and flite), `flite_share` of them in flite's voices."""
    keyword_texts = [
        (str(text), word)
        for word in KEYWORDS
        for text in rng.choice(
            [word, f"{word}.", f"{word}!", f"{word}?"], SYNTHETIC_KEYWORDS_PER_WORD
        )
    ]
    other_texts = rng.choice(NON_KEYWORDS, SYNTHETIC_NON_KEYWORDS)
    texts = keyword_texts + [(str(text), str(text)) for text in other_texts]
    voices = mixed_voices(len(texts) + sentences, rng, flite_share)
    clips = [
        place_word(speak(text, voice), rng) for (text, _), voice in zip(texts, voices, strict=False)
    ]
    spoken = [speak(random_word_sequence(rng), voice) for voice in voices[len(texts) :]]
    words = [word for _, word in texts]
    labels = [LABELS.index(word) if word in KEYWORDS else LABELS.index("unknown") for word in words]
    phrases = len(KEYWORDS) * SYNTHETIC_PHRASES_PER_WORD if keyword_phrases else 0
    phrase_voices = mixed_voices(phrases, rng, flite_share)
    for index, voice in enumerate(phrase_voices):
        word = KEYWORDS[index % len(KEYWORDS)]
        clips.append(keyword_phrase_window(word, voice, rng))
        labels.append(LABELS.index(word))
        words.append(word)
    return SyntheticPool(np.stack(clips), np.array(labels), spoken, np.array(words))


def keyword_phrase_window(
    word: str, voice: Voice | FliteVoice, rng: np.random.Generator
) -> np.ndarray:
    """The 1 s window of a synthetic answer that holds its keyword: `word` spoken first or last
    in one utterance with 1-3 other words, the window starting up to PHRASE_WINDOW_MARGIN_S
    before the utterance (so before the keyword) or ending as far after it."""
    others = random_word_sequence(rng, 1, 3)
    first = rng.random() < 0.5
    separator = str(rng.choice([" ", ", "]))
    audio = speak(f"{word}{separator}{others}" if first else f"{others}{separator}{word}", voice)
    start, end = active_region(audio)
    margin = int(rng.uniform(*PHRASE_WINDOW_MARGIN_S) * SAMPLE_RATE)
    window_start = max(start - margin, 0) if first else max(end + margin - CLIP_SAMPLES, 0)
    return fit_to_clip(audio[window_start : window_start + CLIP_SAMPLES])


def word_chains(
    clips: np.ndarray, rng: np.random.Generator, chains: int, length: int
) -> list[np.ndarray]:
    """`chains` recordings of `length` random clips each, back to back with no gap, each clip's
    peak at 0.5: running speech made of single words, whose windows straddle two words."""
    picked = clips[rng.integers(len(clips), size=(chains, length))]
    peaks = np.maximum(np.abs(picked).max(axis=2, keepdims=True), 1e-8)
    return list((picked / peaks * 0.5).reshape(chains, -1))


def mine_hard_windows(
    sources: "TrainingSources", miner: KeywordModel, rng: np.random.Generator
) -> np.ndarray:
    """The windows of the training continuous speech, 0.25 s apart, that `miner` hears as a
    keyword with at least MINING_FLOOR probability: the non-keywords most like a keyword."""
    unknown = sources.speech[sources.labels == LABELS.index("unknown")]
    recordings = [
        *sources.read_speech,
        *(sources.synthetic.sentences if sources.synthetic else []),
        *word_chains(unknown, rng, MINING_CHAINS, MINING_CHAIN_CLIPS),
    ]
    quarter = CLIP_SAMPLES // 4
    windows = np.concatenate(
        [split_windows(r[offset:]) for r in recordings for offset in (0, quarter)]
    )
    probabilities = predict_in_batches(miner.predict, windows)
    hard = probabilities[:, list(KEYWORD_IDS)].max(axis=1) >= MINING_FLOOR
    print(f"mined {hard.sum()} of {len(windows)} continuous-speech windows", flush=True)
    return windows[hard]


def unknown_draws(
    words: list[str],
    labels: np.ndarray,
    rng: np.random.Generator,
    hard_negatives: tuple[str, ...],
    hard_negative_draws: int = HARD_NEGATIVE_DRAWS,
) -> np.ndarray:
    """Indices of one epoch's unknown clips: each word's clips, a rare word's drawn again until
    it has MIN_DRAWS_PER_WORD, and a hard negative word's `hard_negative_draws` times that."""
    words_array = np.asarray(words)
    unknown = labels == LABELS.index("unknown")
    chosen = []
    for word in sorted(set(words_array[unknown])):
        members = np.flatnonzero(unknown & (words_array == word))
        weight = hard_negative_draws if word in hard_negatives else 1
        draws = max(len(members), MIN_DRAWS_PER_WORD) * weight
        repeats, rest = divmod(draws, len(members))
        chosen += [members] * repeats + [rng.choice(members, rest, replace=False)]
    return np.concatenate(chosen)


def augment_speech(
    waveforms: np.ndarray,
    noise_segments: list[np.ndarray],
    talkers: np.ndarray,
    rng: np.random.Generator,
    augmentation: dict,
) -> np.ndarray:
    """Random speed (some clips), time shift, a neighbouring word (some clips), a room's
    reverberation (some clips), background or babble noise at a random SNR (most clips), random
    gain.

    `talkers` are clips of non-keyword words, so neither a neighbour nor babble holds a keyword."""
    max_shift = augmentation["time_shift_ms"] * SAMPLE_RATE // 1000
    clips = time_shift(
        change_speed(waveforms, rng, augmentation["speed_share"], augmentation["speed_factors"]),
        rng,
        max_shift,
    )
    max_gap = augmentation["neighbour_max_gap_ms"] * SAMPLE_RATE // 1000
    draw = rng.random(len(clips))
    with_neighbour = np.flatnonzero(draw < augmentation["neighbour_share"])
    paired = np.flatnonzero(
        (draw >= augmentation["neighbour_share"])
        & (draw < augmentation["neighbour_share"] + augmentation["pair_share"])
    )
    clips[with_neighbour] = add_neighbours(
        clips[with_neighbour],
        talkers[rng.integers(len(talkers), size=len(with_neighbour))],
        rng,
        max_gap,
    )
    clips[paired] = pair_words(
        clips[paired],
        talkers[rng.integers(len(talkers), size=len(paired))],
        rng,
        max_gap,
    )
    clips = reverberate(
        clips,
        rng,
        augmentation["reverb_share"],
        augmentation["reverb_rt60_s"],
        augmentation["reverb_direct_to_reverberant_db"],
    )
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
    sources: TrainingSources,
    rng: np.random.Generator,
    augmentation: dict,
    hard_negatives: tuple[str, ...] = HARD_NEGATIVE_WORDS,
    hard_negative_draws: int = HARD_NEGATIVE_DRAWS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch of augmented, shuffled training examples (waveforms, labels, and each
    example's own word for `--word-head`): epoch_speech, augmented, and epoch_silence."""
    speech, speech_labels, speech_words, talkers = epoch_speech(
        sources, rng, hard_negatives, hard_negative_draws
    )
    silence = epoch_silence(sources, rng, augmentation)
    waveforms = band_limit(
        np.concatenate(
            [augment_speech(speech, sources.noise_segments, talkers, rng, augmentation), silence]
        ),
        rng,
        augmentation,
    )
    targets = np.concatenate([speech_labels, np.full(SILENCE_CLIPS_PER_EPOCH, SILENCE_LABEL)])
    words = np.concatenate([speech_words, np.full(SILENCE_CLIPS_PER_EPOCH, SILENCE_WORD)])
    order = rng.permutation(len(targets))
    return waveforms[order], targets[order], words[order]


def epoch_speech(
    sources: TrainingSources,
    rng: np.random.Generator,
    hard_negatives: tuple[str, ...],
    hard_negative_draws: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An epoch's speech before augmentation (waveforms, labels, words) and the talkers that
    babble is made of: keywords oversampled to KEYWORD_CLIPS_PER_EPOCH each, unknown words
    weighted by `unknown_draws`, windows of continuous speech as unknown, synthetic words."""
    labels = sources.labels
    indices = np.concatenate(
        [
            *(
                rng.choice(np.flatnonzero(labels == LABELS.index(word)), KEYWORD_CLIPS_PER_EPOCH)
                for word in KEYWORDS
            ),
            unknown_draws(sources.words, labels, rng, hard_negatives, hard_negative_draws),
        ]
    )
    unknown_id = LABELS.index("unknown")

    def running_speech(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        count = len(windows)
        return windows, np.full(count, unknown_id), np.full(count, RUNNING_SPEECH_WORD)

    parts = [(sources.speech[indices], labels[indices], np.asarray(sources.words)[indices])]
    talkers = sources.speech[labels == unknown_id]
    if sources.read_speech:
        parts.append(
            running_speech(speech_windows(sources.read_speech, sources.continuous_windows[0], rng))
        )
    if sources.synthetic is not None:
        pool = sources.synthetic
        picked = np.concatenate(
            [
                rng.choice(np.flatnonzero(pool.labels == LABELS.index(word)), count)
                for word, count in (
                    ("yes", SYNTHETIC_KEYWORDS_PER_EPOCH),
                    ("no", SYNTHETIC_KEYWORDS_PER_EPOCH),
                    ("unknown", SYNTHETIC_NON_KEYWORDS_PER_EPOCH),
                )
            ]
        )
        windows = speech_windows(pool.sentences, sources.continuous_windows[1], rng)
        parts.append((pool.clips[picked], pool.labels[picked], pool.words[picked]))
        parts.append(running_speech(windows))
        talkers = np.concatenate([talkers, pool.clips[pool.labels == unknown_id]])
    if sources.mined is not None and len(sources.mined):
        windows = sources.mined[rng.integers(len(sources.mined), size=MINED_WINDOWS_PER_EPOCH)]
        parts.append(running_speech(windows))
    return (
        np.concatenate([clips for clips, _, _ in parts]),
        np.concatenate([targets for _, targets, _ in parts]),
        np.concatenate([words for _, _, words in parts]),
        talkers,
    )


def epoch_silence(
    sources: TrainingSources, rng: np.random.Generator, augmentation: dict
) -> np.ndarray:
    """SILENCE_CLIPS_PER_EPOCH fresh silence windows of the train noise: some shifted, some cut
    short like a short file, some replaced by non-speech sounds, as `augmentation` asks."""
    silence = make_silence(sources.noise_segments, SILENCE_CLIPS_PER_EPOCH, rng)
    if augmentation["shift_silence"]:
        silence = time_shift(silence, rng, augmentation["time_shift_ms"] * SAMPLE_RATE // 1000)
    if augmentation["short_silence_share"]:
        short = rng.random(len(silence)) < augmentation["short_silence_share"]
        silence[short] = shorten(silence[short], rng)
    if augmentation["non_speech_share"]:
        sounds = rng.random(len(silence)) < augmentation["non_speech_share"]
        silence[sounds] = sound_clips(rng, sounds.sum(), TRAIN_SOUND_BANK)
    return silence


def word_vocabulary(sources: TrainingSources) -> list[str]:
    """Every word that an epoch of `sources` can name (`--word-head`)."""
    synthetic = list(sources.synthetic.words) if sources.synthetic else []
    return sorted({*sources.words, *synthetic, RUNNING_SPEECH_WORD, SILENCE_WORD})


def training_model(model, words: int, word_head_weight: float, learning_rate):
    """What `fit` trains, compiled with Adam at `learning_rate`: `model` itself or, with a
    `word_head_weight`, `model` with a second output, logits over `words` from the features
    that its own logits see, so that one network learns both (the head is not exported)."""
    import keras

    class_loss = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=LABEL_SMOOTHING
    )
    optimizer = keras.optimizers.Adam(learning_rate)
    if not word_head_weight:
        model.compile(optimizer=optimizer, loss=class_loss, metrics=["categorical_accuracy"])
        return model
    features = model.get_layer("logits").input
    word_logits = keras.layers.Dense(words, name="word_logits")(features)
    fitted = keras.Model(model.input, [model.output, word_logits], name=f"{model.name}-words")
    fitted.compile(
        optimizer=optimizer,
        loss=[class_loss, keras.losses.SparseCategoricalCrossentropy(from_logits=True)],
        loss_weights=[1.0, word_head_weight],
        metrics=[["categorical_accuracy"], []],
    )
    return fitted


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


class MovingAverage:
    """Exponential moving average of a model's trainable weights, updated after every training
    step (`--average MOMENTUM`): validated and kept instead of the last step's weights."""

    def __init__(self, momentum: float) -> None:
        self.momentum = momentum
        self.weights: list[np.ndarray] = []

    def update(self, weights: list[np.ndarray]) -> None:
        if not self.weights:
            self.weights = [w.astype(np.float64) for w in weights]
            return
        for average, current in zip(self.weights, weights, strict=True):
            average *= self.momentum
            average += (1 - self.momentum) * current

    def follow(self, model):
        """A Keras callback that updates the average after every training step of `model`."""
        import keras

        return keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda *_, **__: self.update(
                [variable.numpy() for variable in model.trainable_variables]
            )
        )


def swap_in_average(model, average: MovingAverage, waveforms: np.ndarray) -> list[np.ndarray]:
    """Put the averaged weights into `model`, with the batch-norm statistics re-estimated for
    them on `waveforms` (training examples); returns the trained weights it replaced, to be set
    back before training goes on."""
    trained = model.get_weights()
    for variable, averaged in zip(model.trainable_variables, average.weights, strict=True):
        variable.assign(averaged.astype(np.float32))
    for batch in np.array_split(waveforms, max(1, len(waveforms) // BATCH_SIZE)):
        model(batch, training=True)
    return trained


def train_accuracy(history: dict[str, list[float]]) -> float:
    """The last epoch's training accuracy of the four classes, whatever Keras named it after
    the output (`logits_categorical_accuracy` with a word head)."""
    return next(v[-1] for k, v in history.items() if k.endswith("categorical_accuracy"))


def speakers_kept(speakers: list[str], share: float, seed: int) -> np.ndarray:
    """Which clips, given each clip's speaker, belong to a random `share` of the speakers: a
    learning curve trains on fewer speakers, not on fewer clips of each."""
    unique = sorted(set(speakers))
    chosen = np.random.default_rng([seed, 1]).permutation(len(unique))[: round(share * len(unique))]
    return np.isin(speakers, [unique[i] for i in chosen])


def class_counts(labels: np.ndarray) -> dict[str, int]:
    return {label: int((labels == i).sum()) for i, label in enumerate(LABELS)}


@dataclass(frozen=True)
class TrainingConfig:
    """One network's training run: everything but where its artifact goes (a checkpoint resumes
    only a run of the same config)."""

    data_dir: Path = DEFAULT_DATA
    seed: int = 0
    epochs: int = DEFAULT_EPOCHS
    architecture: str = DEFAULT_ARCHITECTURE
    teacher_dirs: tuple[Path, ...] = ()  # earlier artifacts to distil from
    augmentation: dict = field(default_factory=lambda: dict(AUGMENTATION))
    hard_negatives: tuple[str, ...] = HARD_NEGATIVE_WORDS
    hard_negative_draws: int = HARD_NEGATIVE_DRAWS
    selection_modes: tuple[str, ...] = ()  # robustness modes the kept epoch is chosen under
    read_speech_dir: Path | None = DEFAULT_READ_SPEECH
    synthetic: bool = True  # espeak-ng (and flite) speech in the epochs
    flite_share: float = 0.0  # of the synthetic utterances, spoken by flite's training voices
    keyword_phrases: bool = True  # synthetic answer windows
    continuous_scale: float = 1.0  # of the continuous-speech windows per epoch
    init_dir: Path | None = None  # fine-tune from this trained artifact
    peak_learning_rate: float = PEAK_LEARNING_RATE
    miner_dir: Path | None = None  # mine hard continuous-speech windows with this artifact
    speaker_share: float = 1.0  # of the train speakers
    average_momentum: float | None = None  # keep a moving average of the weights
    word_head_weight: float = 0.0  # of a head naming each example's word (not exported)

    def checkpoint_settings(self) -> dict[str, str]:
        return {item.name: repr(getattr(self, item.name)) for item in fields(self)}


@dataclass
class TrainingData:
    """What a run trains and validates on."""

    sources: TrainingSources
    train_labels: np.ndarray
    val_waveforms: np.ndarray
    val_targets: np.ndarray
    val_continuous: np.ndarray  # windows of val read sentences, 0.5 s apart: none should fire
    miner: KeywordModel | None
    teachers: list[KeywordModel]


@dataclass
class Selection:
    """The best epoch so far by the val selection score, and its weights."""

    score: float = -1.0
    accuracy: float = 0.0
    balanced: float = 0.0
    epoch: int = 0
    weights: list[np.ndarray] = field(default_factory=list)


def load_training_data(config: TrainingConfig, rng: np.random.Generator) -> TrainingData:
    train_speech, train_labels, train_paths = load_split(config.data_dir, "train")
    if config.speaker_share < 1.0:
        speaker_of = {row.path: row.speaker for row in read_manifest(config.data_dir)}
        speakers = [speaker_of[path] for path in train_paths]
        kept = speakers_kept(speakers, config.speaker_share, config.seed)
        train_speech, train_labels = train_speech[kept], train_labels[kept]
        train_paths = [path for path, keep in zip(train_paths, kept, strict=True) if keep]
    val_waveforms, val_targets, _ = load_eval_set(config.data_dir, "val")
    read_speech = config.read_speech_dir
    val_continuous = (
        np.concatenate([split_windows(r) for r in load_read_speech(read_speech, "val")[0]])
        if read_speech
        else np.zeros((0, CLIP_SAMPLES), np.float32)
    )
    scale = config.continuous_scale
    sources = TrainingSources(
        train_speech,
        train_labels,
        [path.split("/")[0] for path in train_paths],
        load_noise(config.data_dir, "train"),
        load_read_speech(read_speech, "train")[0] if read_speech else [],
        make_synthetic_pool(
            rng, config.keyword_phrases, round(SYNTHETIC_SENTENCES * scale), config.flite_share
        )
        if config.synthetic
        else None,
        (
            round(READ_SPEECH_WINDOWS_PER_EPOCH * scale),
            round(SYNTHETIC_SENTENCE_WINDOWS_PER_EPOCH * scale),
        ),
    )
    miner = KeywordModel(config.miner_dir) if config.miner_dir else None
    if miner:
        sources = replace(sources, mined=mine_hard_windows(sources, miner, rng))
    teachers = [KeywordModel(teacher) for teacher in config.teacher_dirs]
    return TrainingData(
        sources, train_labels, val_waveforms, val_targets, val_continuous, miner, teachers
    )


def new_epoch(config: TrainingConfig, data: TrainingData, rng: np.random.Generator) -> tuple:
    return epoch_examples(
        data.sources, rng, config.augmentation, config.hard_negatives, config.hard_negative_draws
    )


def validation_score(
    predict, data: TrainingData, selection_modes: tuple[str, ...]
) -> tuple[float, float, float, float]:
    """(selection score, val accuracy, val balanced accuracy, share of val read-speech windows
    fired): the score is the balanced accuracy, averaged over clean and each selection mode,
    minus that share."""
    waveforms, targets = data.val_waveforms, data.val_targets
    predicted = [
        probabilities.argmax(axis=1)
        for probabilities in [
            predict(waveforms),
            *(
                robustness_probabilities(predict, mode, waveforms, targets, Decision())
                for mode in selection_modes
            ),
        ]
    ]
    balanced = [classification_metrics(targets, p)["balanced_accuracy"] for p in predicted]
    fired = (
        float(np.isin(predict(data.val_continuous).argmax(axis=1), KEYWORD_IDS).mean())
        if len(data.val_continuous)
        else 0.0
    )
    accuracy = float((predicted[0] == targets).mean())
    return float(np.mean(balanced)) - fired, accuracy, balanced[0], fired


def train(config: TrainingConfig, out_dir: Path) -> None:
    """Train, keep the best epoch, calibrate, export and evaluate one network into out_dir,
    resuming from its checkpoint if a run of the same config stopped."""
    configure_tensorflow(config.seed)
    started = time.monotonic()
    rng = np.random.default_rng(config.seed)
    data = load_training_data(config, rng)
    print(f"sources ready {time.monotonic() - started:.0f}s", flush=True)
    fitted_run = fit_epochs(config, data, rng, out_dir, started)
    from model.training.architecture import build_model, describe

    # A fresh model holds only the network's variables (no optimizer state) for export.
    model = build_model(config.architecture)
    model.set_weights(fitted_run.selection.weights)
    temperature, calibration = calibrate(model, data)
    onnx = export_members(out_dir, [(model, temperature)], config.data_dir, data.val_waveforms)
    training = training_description(config, data, fitted_run)
    training["wall_seconds"] = round(time.monotonic() - fitted_run.started, 1)
    from model.export.artifact import artifact_metadata, write_metadata

    write_metadata(
        out_dir,
        artifact_metadata(
            out_dir,
            architecture=describe(model),
            training=training,
            calibration=calibration,
            onnx=onnx,
        ),
    )
    remove_checkpoint(checkpoint_dir(out_dir))
    evaluate_and_store(out_dir, config.data_dir)
    print(f"total {time.monotonic() - fitted_run.started:.0f}s")


@dataclass
class FittedRun:
    selection: Selection
    examples_per_epoch: int
    vocabulary: list[str]
    started: float  # time.monotonic() of the run's start, earlier by a resumed run's time


@dataclass
class Fitting:
    """A network being trained: the Keras model, its training wrapper (with the word head, if
    any), the moving average of its weights (if kept) and the first epoch's examples."""

    model: Any
    fitted: Any
    average: MovingAverage | None
    callbacks: list
    word_ids: dict[str, int]
    first_epoch: tuple
    examples_per_epoch: int


def start_fitting(config: TrainingConfig, data: TrainingData, rng: np.random.Generator) -> Fitting:
    """The network (fine-tuning starts from a trained artifact of the same architecture), its
    learning-rate schedule over the whole run, and the first epoch drawn."""
    import keras

    from model.export.onnx_export import rebuild_keras_model
    from model.training.architecture import build_model

    model = (
        rebuild_keras_model(config.init_dir, config.architecture)
        if config.init_dir
        else build_model(config.architecture)
    )
    vocabulary = word_vocabulary(data.sources) if config.word_head_weight else []
    first_epoch = new_epoch(config, data, rng)
    examples_per_epoch = len(first_epoch[0])
    total_steps = config.epochs * -(-examples_per_epoch // BATCH_SIZE)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        total_steps,
        alpha=0.01,
        warmup_target=config.peak_learning_rate,
        warmup_steps=total_steps // 20,
    )
    fitted = training_model(model, len(vocabulary), config.word_head_weight, schedule)
    momentum = config.average_momentum
    average = MovingAverage(momentum) if momentum is not None else None
    callbacks = [average.follow(model)] if average else []
    word_ids = {word: index for index, word in enumerate(vocabulary)}
    return Fitting(model, fitted, average, callbacks, word_ids, first_epoch, examples_per_epoch)


def fit_epoch(
    config: TrainingConfig,
    data: TrainingData,
    rng: np.random.Generator,
    fitting: Fitting,
    epoch: int,
) -> tuple[float, float, tuple[float, float, float, float], list[np.ndarray]]:
    """Fit one epoch; (loss, train accuracy, validation_score of the weights validated, those
    weights). With a moving average, the average is validated and the last step's weights
    stay in the model to train on."""
    model = fitting.model
    waveforms, targets, words = fitting.first_epoch if epoch == 0 else new_epoch(config, data, rng)
    class_targets = distillation_targets(targets, waveforms, data.teachers)
    history = fitting.fitted.fit(
        waveforms,
        (class_targets, np.array([fitting.word_ids[word] for word in words]))
        if config.word_head_weight
        else class_targets,
        batch_size=BATCH_SIZE,
        epochs=epoch + 1,
        initial_epoch=epoch,
        shuffle=False,
        verbose=0,
        callbacks=fitting.callbacks,
    ).history
    sample = waveforms[: BATCH_NORM_BATCHES * BATCH_SIZE]
    trained = swap_in_average(model, fitting.average, sample) if fitting.average else None
    scores = validation_score(
        lambda batch: model.predict(batch, batch_size=256, verbose=0),
        data,
        config.selection_modes,
    )
    validated = model.get_weights()
    if trained is not None:
        model.set_weights(trained)
    return history["loss"][-1], train_accuracy(history), scores, validated


def fit_epochs(
    config: TrainingConfig,
    data: TrainingData,
    rng: np.random.Generator,
    out_dir: Path,
    started: float,
) -> FittedRun:
    """The epoch loop: fit, score on val, keep the best epoch, save a checkpoint after each
    (and resume from the last one of a stopped run of the same config)."""
    fitting = start_fitting(config, data, rng)
    selection = Selection(weights=fitting.model.get_weights())
    checkpoint, settings = checkpoint_dir(out_dir), config.checkpoint_settings()
    resumed = load_checkpoint(checkpoint, settings)
    if resumed:
        restore_checkpoint(resumed, fitting.fitted, rng)
        selection = Selection(
            resumed.best_score,
            resumed.best_accuracy,
            resumed.best_balanced,
            resumed.best_epoch,
            resumed.best_weights,
        )
        if fitting.average:
            fitting.average.weights = resumed.average
        started -= resumed.wall_seconds  # the stopped run's time counts too
        print(f"resumed from {checkpoint} after epoch {resumed.epochs_done}", flush=True)
    for epoch in range(resumed.epochs_done if resumed else 0, config.epochs):
        loss, train_acc, scores, weights = fit_epoch(config, data, rng, fitting, epoch)
        score, accuracy, balanced, fired = scores
        if score > selection.score:
            selection = Selection(score, accuracy, balanced, epoch + 1, weights)
        print(
            f"epoch {epoch + 1}/{config.epochs} loss {loss:.4f} train acc {train_acc:.4f}"
            f" val acc {accuracy:.4f} val balanced acc {balanced:.4f}"
            f" read-speech windows fired {fired:.4f}"
            f" selection score {score:.4f} (best {selection.score:.4f} @ {selection.epoch})"
            f" {time.monotonic() - started:.0f}s",
            flush=True,
        )
        save_checkpoint(
            checkpoint,
            settings,
            capture_checkpoint(
                fitting.fitted,
                rng,
                epochs_done=epoch + 1,
                best_score=selection.score,
                best_accuracy=selection.accuracy,
                best_balanced=selection.balanced,
                best_epoch=selection.epoch,
                best_weights=selection.weights,
                average=fitting.average.weights if fitting.average else None,
                wall_seconds=time.monotonic() - started,
            ),
        )
    vocabulary = list(fitting.word_ids)
    return FittedRun(selection, fitting.examples_per_epoch, vocabulary, started)


def calibrate(model, data: TrainingData) -> tuple[float, dict]:
    """The softmax temperature fitted on val, and how calibrated the model is before and after."""
    val_logits = model.predict(data.val_waveforms, batch_size=256, verbose=0)
    temperature = fit_temperature(val_logits, data.val_targets)
    calibration = {
        "fitted_on": "val speech clips + val silence windows, clean",
        "temperature": temperature,
        **{
            f"val_{name}_{when}": function(softmax(val_logits / t), data.val_targets)
            for when, t in (("before", 1.0), ("after", temperature))
            for name, function in (
                ("ece", expected_calibration_error),
                ("nll", negative_log_likelihood),
            )
        },
    }
    print(f"temperature {temperature:.3f}: {calibration}")
    return temperature, calibration


def export_members(
    out_dir: Path, members: list, data_dir: Path, val_waveforms: np.ndarray, check: int = 64
) -> dict:
    """Export members (networks with their temperatures) as the artifact's SavedModel and
    model.onnx, each checked against the other, with the data's licence; returns what to record
    under "onnx". One network or an ensemble (model.training.ensemble) alike."""
    from model.export.artifact import copy_data_license, export_saved_model
    from model.export.onnx_export import write_onnx

    difference = export_saved_model(members, out_dir, val_waveforms[:check])
    print(f"exported to {out_dir}; reloaded SavedModel matches Keras within {difference:.2e}")
    onnx = write_onnx(out_dir, members, val_waveforms)
    print(f"model.onnx matches the SavedModel within {onnx['checked_against_saved_model']}")
    copy_data_license(data_dir, out_dir)
    return onnx


def evaluate_and_store(out_dir: Path, data_dir: Path) -> None:
    """The artifact's test figures (report only), stored in its metadata and printed."""
    metrics = evaluate_artifact(out_dir, data_dir)
    store_metrics(out_dir, metrics)
    print(format_report(metrics))


def selection_text(config: TrainingConfig, data: TrainingData) -> str:
    selection = (
        "weights of the epoch with the best val balanced accuracy (mean per-class recall, so"
        " keyword recall weighs as much as unknown)"
    )
    if config.selection_modes:
        selection += f", averaged over clean and {', '.join(config.selection_modes)}"
    if len(data.val_continuous):
        selection += ", minus the share of val read-speech windows called yes or no"
    if config.average_momentum is not None:
        selection += (
            f"; each epoch's weights are the moving average over the training steps (momentum"
            f" {config.average_momentum}) with batch-norm statistics re-estimated for them"
        )
    return selection


def clips_description(config: TrainingConfig, data: TrainingData) -> dict:
    """The clips trained and validated on, per class and kind."""
    synthetic = data.sources.synthetic
    return {
        "train": {
            **class_counts(data.train_labels),
            "read_speech_recordings": len(data.sources.read_speech),
            "synthetic_words": len(synthetic.labels) if synthetic else 0,
            "synthetic_sentences": len(synthetic.sentences) if synthetic else 0,
            "synthetic_answer_windows": SYNTHETIC_PHRASES_PER_WORD * len(KEYWORDS)
            if synthetic and config.keyword_phrases
            else 0,
            "silence": f"{SILENCE_CLIPS_PER_EPOCH} new windows per epoch",
        },
        "val": class_counts(data.val_targets),
    }


def per_epoch_description(config: TrainingConfig, data: TrainingData, examples: int) -> dict:
    """What each epoch draws."""
    sources, miner = data.sources, data.miner
    return {
        "yes": KEYWORD_CLIPS_PER_EPOCH,
        "no": KEYWORD_CLIPS_PER_EPOCH,
        "unknown": f"every word's clips, at least {MIN_DRAWS_PER_WORD} draws per word,"
        f" {config.hard_negative_draws} times that for {', '.join(config.hard_negatives)}",
        "continuous_speech_windows": {
            "read_speech": sources.continuous_windows[0] if config.read_speech_dir else 0,
            "synthetic": sources.continuous_windows[1] if config.synthetic else 0,
        },
        "synthetic_words": {
            "yes": SYNTHETIC_KEYWORDS_PER_EPOCH,
            "no": SYNTHETIC_KEYWORDS_PER_EPOCH,
            "unknown": SYNTHETIC_NON_KEYWORDS_PER_EPOCH,
            "flite_share": config.flite_share,
        }
        if config.synthetic
        else None,
        "mined_continuous_speech_windows": {
            "mined_with": miner.version,
            "floor": MINING_FLOOR,
            "pool": len(sources.mined),
            "per_epoch": MINED_WINDOWS_PER_EPOCH,
        }
        if miner
        else None,
        "silence": SILENCE_CLIPS_PER_EPOCH,
        "total": examples,
    }


def training_description(config: TrainingConfig, data: TrainingData, run: FittedRun) -> dict:
    """The artifact's `training` metadata: data, recipe, selection and the kept epoch."""
    return {
        "data": "Speech Commands subset (Warden 2018, arXiv:1804.03209), CC BY 4.0",
        "speaker_share": config.speaker_share,
        "clips": clips_description(config, data),
        "per_epoch": per_epoch_description(config, data, run.examples_per_epoch),
        "silence": "1 s windows of the background-noise files (first 80% of each file for"
        " train, next 10% val, last 10% test) at random level, plus 15% zeros or faint hiss",
        "seed": config.seed,
        "epochs": config.epochs,
        "batch_size": BATCH_SIZE,
        "optimizer": f"Adam, cosine decay from {config.peak_learning_rate} with 5% warm-up",
        "initialised_from": KeywordModel(config.init_dir).version if config.init_dir else None,
        "loss": f"cross-entropy, label smoothing {LABEL_SMOOTHING}",
        "word_head": {
            "weight": config.word_head_weight,
            "words": len(run.vocabulary),
            "loss": "cross-entropy of each example's own word, beside the four classes;"
            " the head is not exported",
        }
        if config.word_head_weight
        else None,
        "distillation": {
            "teachers": [teacher.version for teacher in data.teachers],
            "weight": DISTILLATION_WEIGHT,
            "target": "weight x the teachers' mean probabilities on each augmented clip"
            " + (1 - weight) x the one-hot label",
        }
        if data.teachers
        else None,
        "augmentation": config.augmentation,
        "selection": selection_text(config, data),
        "best_epoch": run.selection.epoch,
        "best_val_selection_score": run.selection.score,
        "best_val_balanced_accuracy": run.selection.balanced,
        "best_val_accuracy": run.selection.accuracy,
    }


def add_share_option(parser: argparse.ArgumentParser, flag: str, key: str, help: str) -> None:
    """A `flag` that sets the share AUGMENTATION[key] of the examples augmented one way."""
    parser.add_argument(flag, type=float, default=AUGMENTATION[key], metavar="SHARE", help=help)


def build_parser() -> argparse.ArgumentParser:
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
        "--hard-negatives",
        nargs="+",
        default=list(HARD_NEGATIVE_WORDS),
        metavar="WORD",
        help="unknown words drawn more often than the others (--hard-negative-draws)",
    )
    parser.add_argument(
        "--hard-negative-draws",
        type=int,
        default=HARD_NEGATIVE_DRAWS,
        metavar="N",
        help="how many times a hard negative word's clips are drawn in an epoch",
    )
    parser.add_argument(
        "--read-speech",
        type=Path,
        default=DEFAULT_READ_SPEECH,
        help="the read-speech set: continuous-speech negatives to train on and select by",
    )
    parser.add_argument(
        "--no-keyword-phrases",
        action="store_true",
        help="train without the synthetic answer windows (keywords run into other words)",
    )
    parser.add_argument(
        "--no-synthetic",
        action="store_true",
        help="train without synthetic speech (which needs `apt-get install espeak-ng flite`)",
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
    add_share_option(
        parser,
        "--short-silence",
        "short_silence_share",
        "share of silence windows cut to 0.25-0.95 s and zero-padded like a short file",
    )
    add_share_option(
        parser,
        "--non-speech",
        "non_speech_share",
        "share of silence windows replaced by non-speech sounds (tones, noise bursts)",
    )
    parser.add_argument(
        "--continuous-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="draw X times the default continuous-speech windows each epoch (read sentences"
        f" {READ_SPEECH_WINDOWS_PER_EPOCH}, synthetic word sequences"
        f" {SYNTHETIC_SENTENCE_WINDOWS_PER_EPOCH} from a pool of {SYNTHETIC_SENTENCES})",
    )
    add_share_option(
        parser,
        "--pair-share",
        "pair_share",
        "share of speech clips given a whole second word in the window (pair_words)",
    )
    add_share_option(
        parser,
        "--speed",
        "speed_share",
        "share of speech clips played {}-{} times as fast (change_speed)".format(
            *AUGMENTATION["speed_factors"]
        ),
    )
    add_share_option(
        parser,
        "--reverb",
        "reverb_share",
        "share of speech clips heard through a synthetic room (reverberate)",
    )
    parser.add_argument(
        "--flite",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of the synthetic utterances spoken by flite's training voices"
        " (synth.FLITE_TRAIN_VOICES) instead of espeak-ng's",
    )
    parser.add_argument(
        "--init",
        type=Path,
        metavar="DIR",
        help="fine-tune: start from the weights of this trained artifact of the same --arch",
    )
    parser.add_argument("--peak-lr", type=float, default=PEAK_LEARNING_RATE)
    parser.add_argument(
        "--mine-with",
        type=Path,
        metavar="DIR",
        help=f"add {MINED_WINDOWS_PER_EPOCH} windows per epoch of the training continuous speech"
        f" that this trained artifact hears as a keyword (p >= {MINING_FLOOR}) as unknown",
    )
    parser.add_argument(
        "--average",
        type=float,
        metavar="MOMENTUM",
        help="validate and keep a moving average of the weights over the training steps (this"
        " momentum), with batch-norm statistics re-estimated for it, not the last step's weights",
    )
    parser.add_argument(
        "--word-head",
        type=float,
        default=0.0,
        metavar="WEIGHT",
        help="also train a head that names each example's own word (its loss weighted by"
        " WEIGHT; not exported)",
    )
    parser.add_argument(
        "--speaker-share",
        type=float,
        default=1.0,
        metavar="SHARE",
        help="train on the Speech Commands clips of a random SHARE of the train speakers only"
        " (a learning curve)",
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    train(config_from_args(args), args.out)


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """The TrainingConfig the command line asks for."""
    return TrainingConfig(
        data_dir=args.data,
        seed=args.seed,
        epochs=args.epochs,
        architecture=args.arch,
        teacher_dirs=tuple(args.teacher),
        augmentation=AUGMENTATION
        | {
            "babble_share": args.babble_share,
            "shift_silence": args.shift_silence,
            "short_silence_share": args.short_silence,
            "pair_share": args.pair_share,
            "non_speech_share": args.non_speech,
            "speed_share": args.speed,
            "reverb_share": args.reverb,
        },
        hard_negatives=tuple(args.hard_negatives),
        hard_negative_draws=args.hard_negative_draws,
        selection_modes=tuple(args.select_under),
        read_speech_dir=args.read_speech,
        synthetic=not args.no_synthetic,
        keyword_phrases=not args.no_keyword_phrases,
        continuous_scale=args.continuous_scale,
        init_dir=args.init,
        peak_learning_rate=args.peak_lr,
        miner_dir=args.mine_with,
        speaker_share=args.speaker_share,
        average_momentum=args.average,
        word_head_weight=args.word_head,
        flite_share=args.flite,
    )


if __name__ == "__main__":
    main()
