"""The numbers of the log-mel front end (model/training/features.py), free of TensorFlow, so that
serving code (model/export/onnx_stream.py) can use them without importing it."""

from model.contract import CLIP_SAMPLES

WINDOW_SAMPLES = 480  # 30 ms
HOP_SAMPLES = 320  # 20 ms: half the frames of a 10 ms hop, at no cost in accuracy for words
FFT_LENGTH = 512
MEL_BINS = 40
LOWER_HZ = 20.0
UPPER_HZ = 7600.0
LOG_OFFSET = 1e-6  # keeps log finite on digital silence
TARGET_RMS = 0.1  # -20 dBFS, a typical level of a close-talking recording
RMS_FLOOR = 1e-5  # a third of one 16-bit step: quieter clips count as digital silence
FRAMES = 1 + (CLIP_SAMPLES - WINDOW_SAMPLES) // HOP_SAMPLES  # 49
