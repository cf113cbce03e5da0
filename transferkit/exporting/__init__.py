"""`export`: a trained task as an inference graph, written as ONNX or TorchScript and checked
against the PyTorch model before it is kept."""
