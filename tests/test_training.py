"""Training examples: class balance, weighted unknown words, neighbouring and paired words,
continuous speech and short silence of an epoch; targets, plain one-hot or mixed with teachers'
probabilities (distillation)."""

from dataclasses import replace

import numpy as np
import pytest

from model.audio import pad_to_clip
from model.contract import LABELS
from model.evaluation.eval_sets import SEEDS, sound_event_bank
from model.training.data import (
    SHORT_RECORDING_SAMPLES,
    SILENCE_LABEL,
    active_region,
    add_neighbours,
    change_speed,
    load_noise,
    pair_words,
    place_word,
    read_manifest,
    reverberate,
    rms,
    shorten,
    speech_windows,
)
from model.training.train import (
    AUGMENTATION,
    DISTILLATION_WEIGHT,
    KEYWORD_CLIPS_PER_EPOCH,
    MIN_DRAWS_PER_WORD,
    MINED_WINDOWS_PER_EPOCH,
    MINING_FLOOR,
    READ_SPEECH_WINDOWS_PER_EPOCH,
    RUNNING_SPEECH_WORD,
    SILENCE_CLIPS_PER_EPOCH,
    SILENCE_WORD,
    TRAIN_SOUND_BANK,
    MovingAverage,
    TrainingSources,
    distillation_targets,
    epoch_examples,
    mine_hard_windows,
    speakers_kept,
    swap_in_average,
    training_model,
    unknown_draws,
)
from tests.helpers import first_test_clip


def sources(data_dir, words: list[str], read_speech: list[np.ndarray] = ()) -> TrainingSources:
    """Training sources of one test clip per word (keywords labelled as such), no synthetic."""
    speech = np.stack([pad_to_clip(first_test_clip(data_dir, word)) for word in words])
    labels = np.array([LABELS.index(w) if w in ("yes", "no") else 2 for w in words])
    noise = load_noise(data_dir, "train")
    return TrainingSources(speech, labels, words, noise, list(read_speech), None)


def test_an_epoch_balances_keywords_and_weights_unknown_words(data_dir):
    words = ["yes", "no", "go", "down", "cat", "left", "cat"]
    read = [np.random.default_rng(0).uniform(-0.3, 0.3, 5 * 16_000).astype(np.float32)]
    waveforms, targets, named = epoch_examples(
        sources(data_dir, words, read), np.random.default_rng(0), AUGMENTATION, ("go", "down")
    )
    # go and down are hard: twice MIN_DRAWS_PER_WORD; cat (2 clips) and left: MIN_DRAWS_PER_WORD.
    unknown = 4 * MIN_DRAWS_PER_WORD + 2 * MIN_DRAWS_PER_WORD + READ_SPEECH_WINDOWS_PER_EPOCH
    expected = [KEYWORD_CLIPS_PER_EPOCH] * 2 + [unknown, SILENCE_CLIPS_PER_EPOCH]
    assert list(np.bincount(targets, minlength=len(LABELS))) == expected
    assert waveforms.shape == (sum(expected), 16_000)
    assert np.abs(waveforms).max() <= 1.0
    # Each example's own word, for a word head: the clip's word, running speech, silence.
    drawn = {word: int((named == word).sum()) for word in set(named)}
    assert drawn == {
        "yes": KEYWORD_CLIPS_PER_EPOCH,
        "no": KEYWORD_CLIPS_PER_EPOCH,
        "go": 2 * MIN_DRAWS_PER_WORD,
        "down": 2 * MIN_DRAWS_PER_WORD,
        "cat": MIN_DRAWS_PER_WORD,
        "left": MIN_DRAWS_PER_WORD,
        RUNNING_SPEECH_WORD: READ_SPEECH_WINDOWS_PER_EPOCH,
        SILENCE_WORD: SILENCE_CLIPS_PER_EPOCH,
    }
    assert set(targets[named == SILENCE_WORD]) == {SILENCE_LABEL}
    assert set(targets[np.isin(named, ["go", RUNNING_SPEECH_WORD])]) == {LABELS.index("unknown")}


def test_mined_windows_are_what_the_miner_hears_as_keywords_and_join_each_epoch(data_dir):
    from model.contract import DEFAULT_ARTIFACT
    from model.serving import KeywordModel

    words = ["yes", "no", "go", "down", "nine", "cat", "left", "six", "off", "up"]
    read = [np.concatenate([pad_to_clip(first_test_clip(data_dir, w)) for w in words[2:]])]
    plain = sources(data_dir, words, read)
    miner = KeywordModel(DEFAULT_ARTIFACT)
    mined = mine_hard_windows(plain, miner, np.random.default_rng(0))
    assert len(mined) > 0 and mined.shape[1:] == (16_000,)
    assert (miner.predict(mined)[:, :2].max(axis=1) >= MINING_FLOOR).all()
    rng = np.random.default_rng(1)
    _, without, _ = epoch_examples(plain, rng, AUGMENTATION)
    _, with_mined, _ = epoch_examples(replace(plain, mined=mined), rng, AUGMENTATION)
    unknown = LABELS.index("unknown")
    extra = (with_mined == unknown).sum() - (without == unknown).sum()
    assert extra == MINED_WINDOWS_PER_EPOCH


def test_a_speaker_share_keeps_or_drops_each_speakers_clips_together(data_dir):
    speakers = np.array([row.speaker for row in read_manifest(data_dir) if row.split == "train"])
    kept = speakers_kept(list(speakers), 0.5, seed=0)
    kept_speakers, dropped_speakers = set(speakers[kept]), set(speakers[~kept])
    assert not kept_speakers & dropped_speakers
    assert len(kept_speakers) == round(len(set(speakers)) / 2)
    assert not np.array_equal(kept, speakers_kept(list(speakers), 0.5, seed=1))


def test_unknown_draws_give_every_word_its_clips_and_rare_words_more():
    words = ["cat"] * 100 + ["six"] * 7 + ["yes"] * 5
    labels = np.array([2] * 107 + [0] * 5)
    drawn = unknown_draws(words, labels, np.random.default_rng(0), ("six",))
    counts = np.bincount(drawn, minlength=len(words))
    assert (counts[:100] == 1).all()  # a common word: each clip once
    assert counts[100:107].sum() == 2 * MIN_DRAWS_PER_WORD  # a rare hard word
    assert counts[100:107].min() >= 2 * MIN_DRAWS_PER_WORD // 7  # spread over its clips
    assert counts[107:].sum() == 0  # keywords are not unknown
    heavier = unknown_draws(words, labels, np.random.default_rng(0), ("six", "cat"), 3)
    counts = np.bincount(heavier, minlength=len(words))
    assert (counts[:100] == 3).all()  # a common hard word: each clip three times
    assert counts[100:107].sum() == 3 * MIN_DRAWS_PER_WORD


def test_a_neighbour_word_leaves_the_clips_own_word_untouched(data_dir):
    clips = np.stack([pad_to_clip(first_test_clip(data_dir, w)) for w in ("no", "up", "on")])
    neighbours = np.stack(
        [pad_to_clip(first_test_clip(data_dir, w)) for w in ("left", "stop", "down")]
    )
    rng = np.random.default_rng(3)
    mixed = add_neighbours(clips, neighbours, rng, max_gap=1_600)
    changed = 0
    for clip, out in zip(clips, mixed, strict=True):
        start, end = active_region(clip)
        np.testing.assert_array_equal(out[start:end], clip[start:end])
        changed += bool(np.abs(out - clip).max() > 0.01)  # a word was added around it
    assert changed == len(clips)


def test_a_paired_word_shares_the_window_with_the_clips_whole_word(data_dir):
    clips = np.stack([pad_to_clip(first_test_clip(data_dir, w)) for w in ("no", "up", "on")])
    neighbours = np.stack(
        [pad_to_clip(first_test_clip(data_dir, w)) for w in ("left", "stop", "down")]
    )
    paired = pair_words(clips, neighbours, np.random.default_rng(5), max_gap=1_600)
    for clip, out in zip(clips, paired, strict=True):
        start, end = active_region(clip)
        own = clip[start:end]
        # The clip's own word is in the window whole, sample for sample, somewhere.
        offsets = [
            i for i in range(16_000 - len(own) + 1) if np.allclose(out[i : i + len(own)], own)
        ]
        assert offsets, "own word not found whole"
        # and the neighbour's word is there too: the window holds more sound than the own word.
        rest = np.concatenate([out[: offsets[0]], out[offsets[0] + len(own) :]])
        assert rms(rest)[0] > 0.1 * rms(own)[0]


@pytest.mark.parametrize("factor", [0.88, 1.12])
def test_a_clip_played_faster_or_slower_has_its_word_shorter_or_longer_higher_or_lower(factor):
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8_000) / 16_000).astype(np.float32)
    clip = np.concatenate([np.zeros(3_000, np.float32), tone, np.zeros(5_000, np.float32)])
    changed = change_speed(clip[None], np.random.default_rng(0), 1.0, (factor, factor))[0]
    start, end = active_region(changed)
    # Within two 20 ms frames of active_region (the resampler's filter rings at the edges).
    assert end - start == pytest.approx(8_000 / factor, abs=640)
    assert (start + end) / 2 == pytest.approx(8_000, abs=640)  # the word centred again
    spectrum = np.abs(np.fft.rfft(changed))  # 1 Hz bins
    assert np.argmax(spectrum) == pytest.approx(440 * factor, rel=0.01)
    untouched = change_speed(clip[None], np.random.default_rng(0), 0.0, (factor, factor))
    np.testing.assert_array_equal(untouched[0], clip)


@pytest.mark.parametrize("rt60_s", [0.3, 0.8])
def test_a_reverberated_word_rings_on_after_it_ends_for_the_rooms_reverberation_time(rt60_s):
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(4_000) / 16_000).astype(np.float32)
    clip = np.concatenate([np.zeros(2_000, np.float32), tone, np.zeros(10_000, np.float32)])
    room = reverberate(clip[None], np.random.default_rng(0), 1.0, (rt60_s, rt60_s), (0.0, 0.0))[0]
    assert np.abs(room[:2_000]).max() < 1e-6  # nothing before the word: a room only delays
    assert rms(room)[0] == pytest.approx(rms(clip)[0], rel=1e-4)
    word_end = 6_000
    # The tail decays 60 dB in rt60: 20 dB down a third of it after the word, still sounding.
    third = word_end + int(rt60_s / 3 * 16_000)
    level_db = 20 * np.log10(rms(room[third : third + 800])[0] / rms(room[4_000:word_end])[0])
    assert -32 < level_db < -12
    untouched = reverberate(clip[None], np.random.default_rng(0), 0.0, (0.3, 0.3), (0.0, 0.0))
    np.testing.assert_array_equal(untouched[0], clip)


def test_a_placed_word_is_its_active_region_somewhere_in_a_second():
    word = np.sin(np.linspace(0, 300, 6_000)).astype(np.float32) * 0.5
    audio = np.concatenate([np.zeros(5_000, np.float32), word, np.zeros(9_000, np.float32)])
    clip = place_word(audio, np.random.default_rng(0))
    assert clip.shape == (16_000,)
    kept = np.flatnonzero(clip)
    assert kept[-1] - kept[0] < 6_000 and np.abs(clip).max() == pytest.approx(0.5, abs=0.01)


def test_speech_windows_skip_long_pauses():
    rng = np.random.default_rng(0)
    talk = rng.uniform(-0.5, 0.5, 32_000).astype(np.float32)
    recording = np.concatenate([talk, np.zeros(64_000, np.float32), talk])
    windows = speech_windows([recording], 200, rng)
    assert windows.shape == (200, 16_000)
    assert (rms(windows)[:, 0] >= 0.3 * rms(recording)[0]).all()


def test_a_shortened_clip_is_a_piece_of_it_padded_evenly_like_a_short_recording():
    clips = np.random.default_rng(0).standard_normal((50, 16_000)).astype(np.float32)
    shortened = shorten(clips, np.random.default_rng(1))
    for clip, short in zip(clips, shortened, strict=True):
        kept = np.flatnonzero(short)
        length = len(kept)
        assert SHORT_RECORDING_SAMPLES[0] <= length < SHORT_RECORDING_SAMPLES[1]
        assert kept[0] == (16_000 - length) // 2 and kept[-1] == kept[0] + length - 1
        start = int(np.flatnonzero(clip == short[kept[0]])[0])
        np.testing.assert_array_equal(short, pad_to_clip(clip[start : start + length]))


@pytest.mark.parametrize(("share", "padded_low", "padded_high"), [(0.0, 0.0, 0.1), (1.0, 1.0, 1.0)])
def test_short_silence_pads_that_share_of_the_silence_windows(
    data_dir, share, padded_low, padded_high
):
    augmentation = AUGMENTATION | {"short_silence_share": share, "band_limit_probability": 0.0}
    waveforms, targets, _ = epoch_examples(
        sources(data_dir, ["yes", "no", "go"]), np.random.default_rng(0), augmentation
    )
    silence = waveforms[targets == SILENCE_LABEL]
    min_padding = (16_000 - SHORT_RECORDING_SAMPLES[1]) // 2
    padded = np.mean(~silence[:, :min_padding].any(axis=1) & ~silence[:, -min_padding:].any(axis=1))
    # Without shortening only the digital-zero windows (7.5% of silence) have silent edges.
    assert padded_low <= padded <= padded_high


def test_non_speech_sounds_replace_that_share_of_the_silence_windows(data_dir):
    """The same epoch with and without them: about half of the silence windows (share 0.5) are
    no longer among the plain epoch's; the classes keep their sizes."""
    plain = AUGMENTATION | {"band_limit_probability": 0.0}
    with_sounds = plain | {"non_speech_share": 0.5}
    epochs = [
        epoch_examples(sources(data_dir, ["yes", "no", "go"]), np.random.default_rng(4), a)
        for a in (plain, with_sounds)
    ]
    assert list(np.bincount(epochs[0][1])) == list(np.bincount(epochs[1][1]))
    silence = [waveforms[targets == SILENCE_LABEL] for waveforms, targets, _ in epochs]
    plain_windows = {window.tobytes() for window in silence[0]}
    replaced = np.mean([window.tobytes() not in plain_windows for window in silence[1]])
    assert 0.4 <= replaced <= 0.6


def test_training_sounds_are_none_of_the_evaluation_sounds():
    """model.evaluation.eval_sets.non_speech measures val and test with banks of their own."""
    train_bank = {event.tobytes() for event in sound_event_bank(16_000, TRAIN_SOUND_BANK)}
    for split, seed in SEEDS.items():
        assert seed != TRAIN_SOUND_BANK, split
        assert not train_bank & {event.tobytes() for event in sound_event_bank(16_000, seed)}


def test_a_moving_average_starts_at_the_first_weights_and_follows_the_later_ones():
    average = MovingAverage(momentum=0.75)
    average.update([np.array([4.0, 0.0])])
    np.testing.assert_allclose(average.weights[0], [4.0, 0.0])
    average.update([np.array([0.0, 8.0])])
    np.testing.assert_allclose(average.weights[0], [3.0, 2.0])
    average.update([np.array([3.0, 2.0])])
    np.testing.assert_allclose(average.weights[0], [3.0, 2.0])


def test_the_averaged_weights_are_validated_then_the_trained_ones_come_back(data_dir):
    """`--average`: the network validated holds the averaged weights, with batch-norm statistics
    re-estimated for them on training examples; the trained weights it replaced come back
    unchanged, so training goes on from them."""
    import keras

    from model.training.architecture import build_model

    keras.utils.set_random_seed(0)
    words = ["yes", "no", "go", "yes", "no", "go", "yes", "no"]
    waveforms = np.stack([pad_to_clip(first_test_clip(data_dir, word)) for word in words])
    targets = np.eye(len(LABELS), dtype=np.float32)[
        [LABELS.index(w if w != "go" else "unknown") for w in words]
    ]
    model = build_model("ds-cnn-m")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy")
    average = MovingAverage(momentum=0.8)
    model.fit(
        waveforms,
        targets,
        batch_size=2,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[average.follow(model)],
    )
    trained = model.get_weights()
    trained_trainable = [v.numpy().copy() for v in model.trainable_variables]
    trained_statistics = [v.numpy().copy() for v in model.non_trainable_variables]

    replaced = swap_in_average(model, average, waveforms)

    for before, returned in zip(trained, replaced, strict=True):
        np.testing.assert_array_equal(before, returned)
    for variable, averaged in zip(model.trainable_variables, average.weights, strict=True):
        np.testing.assert_allclose(variable.numpy(), averaged, rtol=1e-6, atol=1e-7)
    # Eight steps at a high learning rate: the average lags the last step's weights.
    assert any(
        not np.allclose(v.numpy(), t)
        for v, t in zip(model.trainable_variables, trained_trainable, strict=True)
    )
    statistics = [v.numpy() for v in model.non_trainable_variables]
    assert all(np.isfinite(s).all() for s in statistics)
    assert any(not np.allclose(s, t) for s, t in zip(statistics, trained_statistics, strict=True))
    model.set_weights(replaced)
    for restored, before in zip(model.get_weights(), trained, strict=True):
        np.testing.assert_array_equal(restored, before)


def test_a_word_head_learns_each_clips_word_and_leaves_the_exported_network_alone(data_dir):
    """`--word-head`: the fitted model's first output is the network's own; its second names
    the words (here it learns six real clips of three words, two of them `unknown`), and the
    network to export holds no weight of the head."""
    import keras

    from model.training.architecture import build_model

    keras.utils.set_random_seed(0)
    words = ["no", "go", "down"] * 2
    waveforms = np.stack([pad_to_clip(first_test_clip(data_dir, word)) for word in words])
    labels = [LABELS.index("no"), LABELS.index("unknown"), LABELS.index("unknown")] * 2
    model = build_model("ds-cnn")
    fitted = training_model(model, 3, word_head_weight=1.0, learning_rate=1e-2)
    word_ids = np.array([0, 1, 2] * 2)
    fitted.fit(
        waveforms,
        (np.eye(len(LABELS), dtype=np.float32)[labels], word_ids),
        batch_size=6,
        epochs=40,
        verbose=0,
    )
    logits, word_logits = fitted.predict(waveforms, verbose=0)
    np.testing.assert_allclose(logits, model.predict(waveforms, verbose=0), atol=1e-5)
    assert list(word_logits.argmax(axis=1)) == list(word_ids)
    exported = build_model("ds-cnn")
    exported.set_weights(model.get_weights())
    np.testing.assert_allclose(exported.predict(waveforms, verbose=0), logits, atol=1e-5)
    plain = build_model("ds-cnn")
    assert training_model(plain, 3, word_head_weight=0.0, learning_rate=1e-3) is plain


def test_targets_without_teachers_are_one_hot():
    targets = distillation_targets(np.array([3, 0, 2, 1]), np.zeros((4, 16_000), np.float32), [])
    np.testing.assert_array_equal(targets, np.eye(len(LABELS), dtype=np.float32)[[3, 0, 2, 1]])


def test_targets_mix_the_mean_of_the_teachers_probabilities(keyword_model, data_dir):
    words = ["yes", "no", "go"]
    waveforms = np.stack([pad_to_clip(first_test_clip(data_dir, word)) for word in words])
    labels = np.array([LABELS.index(word if word != "go" else "unknown") for word in words])
    # The same teacher twice: the mean of identical probabilities is those probabilities.
    targets = distillation_targets(labels, waveforms, [keyword_model, keyword_model])
    taught = keyword_model.predict(waveforms)
    expected = (1 - DISTILLATION_WEIGHT) * np.eye(len(LABELS))[labels]
    np.testing.assert_allclose(targets, expected + DISTILLATION_WEIGHT * taught, atol=1e-6)
    assert targets.sum(axis=1) == pytest.approx(np.ones(len(words)), abs=1e-5)
    # The teacher knows these clips, so the target still points at the true class.
    assert list(targets.argmax(axis=1)) == list(labels)
