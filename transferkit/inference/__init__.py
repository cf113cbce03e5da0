"""Predict without the training stack: one predictor (`predictor.py`) for a checkpoint, an ensemble (with
TTA) or an exported ONNX / TorchScript file (`exported.py`), on files or images in memory
(`images.py`), with one set of writers (`outputs.py`). Imports neither Lightning nor timm."""
