"""Writing a run for other engines: ONNX graphs and CTranslate2 models."""
