"""Log-mel spectrogram as a Keras layer made of TensorFlow ops.

It sits inside the exported model, so training and serving compute identical features and no
consumer ever needs a separate feature extractor.
"""

import keras
import tensorflow as tf

from model.contract import SAMPLE_RATE
from model.training.feature_settings import (
    FFT_LENGTH,
    FRAMES,
    HOP_SAMPLES,
    LOG_OFFSET,
    LOWER_HZ,
    MEL_BINS,
    RMS_FLOOR,
    TARGET_RMS,
    UPPER_HZ,
    WINDOW_SAMPLES,
)


class LoudnessNormalisation(keras.layers.Layer):
    """Scales each waveform to TARGET_RMS, so a label cannot depend on the input gain.

    A word recorded 30 dB too quietly then gives the same features as at full level; clips quieter
    than RMS_FLOOR are scaled as if at the floor, so digital silence stays silent.
    """

    def __init__(self, **kwargs):
        super().__init__(trainable=False, **kwargs)

    def call(self, waveforms: tf.Tensor) -> tf.Tensor:
        level = tf.sqrt(tf.reduce_mean(tf.square(waveforms), axis=-1, keepdims=True))
        return waveforms * (TARGET_RMS / tf.maximum(level, RMS_FLOOR))


class LogMelSpectrogram(keras.layers.Layer):
    """[batch, samples] waveform -> [batch, FRAMES, MEL_BINS, 1] log-mel magnitudes."""

    def __init__(self, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.mel_matrix = tf.signal.linear_to_mel_weight_matrix(
            num_mel_bins=MEL_BINS,
            num_spectrogram_bins=FFT_LENGTH // 2 + 1,
            sample_rate=SAMPLE_RATE,
            lower_edge_hertz=LOWER_HZ,
            upper_edge_hertz=UPPER_HZ,
        )

    def call(self, waveforms: tf.Tensor) -> tf.Tensor:
        stft = tf.signal.stft(
            waveforms, frame_length=WINDOW_SAMPLES, frame_step=HOP_SAMPLES, fft_length=FFT_LENGTH
        )
        mel = tf.matmul(tf.abs(stft), self.mel_matrix)
        return tf.math.log(mel + LOG_OFFSET)[..., tf.newaxis]

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], FRAMES, MEL_BINS, 1)
