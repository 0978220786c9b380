"""The model's interface, shared by training, evaluation and the labelling pipeline.

The exported SavedModel takes raw 1 s waveforms and returns class probabilities; the
spectrogram is computed inside it, so nothing outside the model computes features.
"""

from pathlib import Path

LABELS: tuple[str, ...] = ("yes", "no", "unknown", "silence")
SAMPLE_RATE = 16_000
CLIP_SAMPLES = SAMPLE_RATE  # one second
SIGNATURE = "serving_default"
INPUT_NAME = "waveform"  # float32 [batch, CLIP_SAMPLES], values in [-1, 1]
OUTPUT_NAME = "probabilities"  # float32 [batch, len(LABELS)], softmax in LABELS order
DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "yesno"
METADATA_FILE = "metadata.json"
