"""Export: the SavedModel, its ONNX form and the artifact's metadata."""
