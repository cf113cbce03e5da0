"""transferkit: transfer learning for images on PyTorch Lightning and timm."""

__version__ = "0.1.0"
