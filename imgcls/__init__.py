"""imgcls: a small, readable PyTorch toolkit for image classification on heavily imbalanced data."""

__version__ = "0.1.0"
