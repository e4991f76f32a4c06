"""imgcls: a small, readable PyTorch toolkit for image classification on heavily imbalanced data."""

__version__ = "0.1.0"


def load(source, **options):
    """`imgcls.load("runs/v3")` -> a Classifier (see imgcls.api.load); imported on first use so that
    `import imgcls` stays light for the command-line tools."""
    from .api import load as _load
    return _load(source, **options)
