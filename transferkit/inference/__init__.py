"""Inference without the training stack: how predict prepares images (shared by checkpoints and
exported models), and predict from an exported ONNX or TorchScript file. Imports neither Lightning
nor timm."""
