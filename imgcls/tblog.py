"""--tensorboard: a fold's numbers as TensorBoard event files in RUN/foldK/tensorboard/ (torch.utils.tensorboard,
an optional dependency: pip install tensorboard). Per epoch, every column of summary.csv under "epoch/<column>";
after training, the validation scores of each stage that follows the epochs (cRT, the decision tau) under
"final/<stage>/<score>", the chosen tau, the tau search as a table, and the confusion matrix as an image.
Nothing is imported or written when the flag is off.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import UserError

SCORES = ("accuracy", "macro_f1", "balanced_accuracy", "loss")


class TensorBoardLog:
    def __init__(self, folder: Path, epochs_done: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--tensorboard: needs the tensorboard package (pip install tensorboard), or leave the "
                            "flag off") from None
        # A resumed run logs again from the epoch after its last saved one; purge_step hides whatever a killed
        # run had logged past it, so each epoch appears once
        self.writer = SummaryWriter(str(folder), purge_step=epochs_done + 1 if epochs_done else None)

    def epoch(self, row: dict) -> None:
        """One row of summary.csv at step = its epoch number."""
        step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and math.isfinite(float(value)):
                self.writer.add_scalar(f"epoch/{key}", float(value), step)
        self.writer.flush()

    def finished(self, stages: list[tuple[str, dict]], metrics: dict, step: int, confusion_png: Path | None) -> None:
        """After training: each stage's validation scores (stages as shipping.after_training lists them, or
        the final scores when there is none), the chosen tau and its search, the confusion matrix."""
        for name, scores in stages or [("validation", metrics)]:
            tag = name.split(" ")[0]  # "tau +0.3" -> "tau": one tag whatever tau was chosen
            for key in SCORES:
                if isinstance(scores.get(key), (int, float)):
                    self.writer.add_scalar(f"final/{tag}/{key}", float(scores[key]), step)
        if "decision_tau" in metrics:
            self.writer.add_scalar("final/decision_tau", float(metrics["decision_tau"]), step)
        searched = metrics.get("decision_tau_scores")
        if isinstance(searched, dict):
            rows = "\n".join(f"| {tau} | {score:.4f} |" for tau, score in searched.items())
            self.writer.add_text("final/decision_tau_search", f"| tau | validation score |\n|---|---|\n{rows}",
                                 step)
        if confusion_png is not None and confusion_png.is_file():
            from PIL import Image
            with Image.open(confusion_png) as im:
                pixels = np.asarray(im.convert("RGB"))
            self.writer.add_image("final/confusion_matrix", pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
