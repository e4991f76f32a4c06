"""imgcls: a small, readable PyTorch toolkit for image classification on heavily imbalanced data."""

from .errors import UserError  # what every user mistake raises, from the API as from the command lines

__version__ = "0.1.0"
__all__ = ["UserError", "load"]


def load(source, **options):
    """`imgcls.load("runs/v3")` -> a Classifier (see imgcls.api.load); imported on first use so that
    `import imgcls` stays light for the command-line tools."""
    from .api import load as _load
    return _load(source, **options)
