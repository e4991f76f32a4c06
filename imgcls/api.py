"""The Python API: `clf = imgcls.load("runs/v3")`, then `clf.predict(x, top_k=5)`.

x is a PIL image, an image path, a list of paths, a folder (searched recursively), or a uint8 tensor batch
N x 3 x H x W (RGB). Images are brought to the run's storage size exactly as training decoded its files
(RGB, PIL bilinear resize), then the model's own resize and normalisation follow, so the probabilities are
those predict.py writes for the same files. A run folder gives its fold ensemble (mean of probabilities)
with its preset's TTA; a checkpoint file or a fold folder gives that one model.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from . import distributed as dist
from .data.cache import decode_images, to_rgb
from .data.sources import IMAGE_EXTENSIONS, list_images
from .decision import adjust
from .errors import UserError
from .hub import is_hub_folder, load_members as load_hub
from .inference import predict_dataset, use_channels_last
from .run import Member, build_model, decision_taus, find_checkpoints, load_members, unfinished_note
from .tta import TTA_VIEWS
from .validate import MAX_BATCH, check_device, check_range

_QUIET = lambda *a, **k: None  # noqa: E731


@dataclass
class Prediction:
    """One image's result: the top label, its probability, and the top-k (name, probability) pairs."""
    label: str
    probability: float
    top_k: list[tuple[str, float]]
    source: str = ""  # the file path, or "image N" for in-memory input


@dataclass
class Images:
    """Inputs brought to the storage size: uint8 N x 3 x H x W, a name per image, what could not be read."""
    pixels: torch.Tensor
    sources: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------- devices and views

def resolve_device(name: str = "auto") -> torch.device:
    return dist.local_device(name)


def parse_views(views) -> tuple[str, ...]:
    if isinstance(views, str):
        views = [v.strip() for v in views.split(",") if v.strip()]
    if not views:  # an ensemble of no views would average nothing
        raise UserError("--views: no view given; e.g. --views identity,hflip (or leave --tta off)")
    return tuple(views)


# ---------------------------------------------------------------- turning inputs into uint8 batches

def pil_to_uint8(im: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """A PIL image -> 3 x H x W uint8 at the storage size, the way the decoder treats files (upright, RGB,
    bilinear resize)."""
    im = ImageOps.exif_transpose(im)
    rgb = to_rgb(im)
    height, width = size
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.BILINEAR)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy())


def to_images(x, size: tuple[int, int], workers: int = 2, log=_QUIET) -> Images:
    """Any supported input -> Images at the storage size `size` (H, W)."""
    size = (int(size[0]), int(size[1]))
    if isinstance(x, Image.Image):
        return Images(pil_to_uint8(x, size)[None], ["image 0"])
    if isinstance(x, torch.Tensor):
        if x.dtype != torch.uint8 or x.dim() not in (3, 4) or x.shape[-3] != 3:
            raise UserError(f"predict: expected a uint8 tensor 3 x H x W or N x 3 x H x W (RGB), got "
                            f"{str(x.dtype).replace('torch.', '')} of shape {tuple(x.shape)}")
        batch = x[None] if x.dim() == 3 else x
        if tuple(batch.shape[-2:]) != size:  # the same PIL resize a file of another size would get
            batch = torch.stack([pil_to_uint8(Image.fromarray(img.permute(1, 2, 0).cpu().numpy()), size)
                                 for img in batch])
        return Images(batch.cpu(), [f"image {i}" for i in range(len(batch))])
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if path.is_dir():
            paths = list_images(path)
            if not paths:
                raise UserError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it or below it")
        elif path.is_file():
            paths = [str(path)]
        else:
            raise UserError(f"{path}: no such image file or folder")
    elif isinstance(x, (list, tuple)):
        if not x:
            raise UserError("predict: empty list of images")
        if all(isinstance(i, Image.Image) for i in x):
            return Images(torch.stack([pil_to_uint8(i, size) for i in x]), [f"image {i}" for i in range(len(x))])
        paths = [str(p) for p in x]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise UserError(f"{missing[0]}: no such image file"
                            + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""))
    else:
        raise UserError(f"predict: cannot read {type(x).__name__}; give a PIL image, a path, a list of paths, "
                        f"a folder or a uint8 tensor")
    pixels, ok, reasons = decode_images(paths, size=size, cache_dir=None, workers=workers, log=log)
    skipped = [(p, r) for p, r, good in zip(paths, reasons, ok) if not good]
    return Images(pixels, [paths[i] for i in np.flatnonzero(ok)], skipped)  # pixels: the decodable ones


# ---------------------------------------------------------------- the classifier

class Classifier:
    """A trained model or fold ensemble, ready to predict. Made by `imgcls.load`."""

    def __init__(self, members: list[Member], views=("identity",), device="cpu", batch_size: int = 256,
                 amp: str = "off", int8_model: str | Path | None = None, decision_taus=None):
        self.members = members
        record = members[0].record
        self.classes: list[str] = list(record.class_names)
        pre = record.preprocessing
        self.preprocessing = {"storage_size": tuple(pre.storage_size), "img_size": tuple(pre.img_size),
                              "mean": tuple(pre.mean), "std": tuple(pre.std),
                              "resize": "decode to RGB, PIL bilinear to storage_size; then bilinear "
                                        "(antialiased when shrinking) to img_size; (x/255 - mean) / std"}
        self.views = parse_views(views)
        self.tta = self.views != ("identity",)
        # Each member's decision rule: softmax(log p - tau * log prior) with its own training prior
        # (decision.py; v4 chooses tau on validation). 0 = the model's own probabilities.
        self.decision_taus = [float(t) for t in decision_taus] if decision_taus is not None else [0.0] * len(members)
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.batch_size, self.amp = batch_size, amp
        self.int8_model = Path(int8_model) if int8_model else None
        self._models = None
        self._session = None

    def __repr__(self) -> str:
        kind = f"int8 {self.int8_model}" if self.int8_model else f"{len(self.members)} model(s) on {self.device}"
        return (f"Classifier({self.members[0].record.model_name}, {len(self.classes)} classes, {kind}, "
                f"views {','.join(self.views)})")

    @property
    def storage_size(self) -> tuple[int, int]:
        return self.preprocessing["storage_size"]

    def images(self, x, workers: int = 2, log=_QUIET) -> Images:
        """The inputs as the uint8 batch the models read (see to_images)."""
        return to_images(x, self.storage_size, workers, log)

    def probabilities(self, pixels: torch.Tensor, progress=None) -> np.ndarray:
        """Class probabilities N x C (float32) for a uint8 batch at the storage size."""
        if self.int8_model is not None:
            return self._int8_probs(pixels)
        if len(pixels) == 0:  # an empty batch (a folder whose files were all unreadable): no rows
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        if self._models is None:
            self._models = [build_model(m, self.device) for m in self.members]
        probs = np.zeros((len(pixels), len(self.classes)), dtype=np.float32)
        pre = self.preprocessing
        for model, member, tau in zip(self._models, self.members, self.decision_taus):
            member_probs = predict_dataset(model, pixels, np.arange(len(pixels)), img_size=pre["img_size"],
                                           mean=pre["mean"], std=pre["std"], device=self.device,
                                           batch_size=self.batch_size, views=self.views, amp=self.amp,
                                           channels_last=use_channels_last("auto", self.device),
                                           progress=progress and (lambda b, m=member: progress(b, m)))
            # each member's own decision rule (its tau, its training prior), then the ensemble mean
            probs += adjust(member_probs, member.record.train_class_counts, tau) / len(self.members)
        if not np.isfinite(probs).all():  # never hand out NaN as a prediction
            raise UserError(f"{self.members[0].path}: the model gives non-finite probabilities for "
                            f"{int((~np.isfinite(probs).all(1)).sum())} image(s); nothing was predicted")
        return probs

    def _int8_probs(self, pixels: torch.Tensor) -> np.ndarray:
        from .quantize import ort_session, run_session
        if self._session is None:
            self._session = ort_session(self.int8_model)
        if len(pixels) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return run_session(self._session, pixels.numpy(), self.batch_size)

    def predict(self, x, top_k: int = 5) -> list[Prediction]:
        """One Prediction per readable input image, in input order (a folder: sorted paths). Unreadable
        files are left out and listed in `self.last_skipped`."""
        images = self.images(x)
        self.last_skipped = images.skipped
        return self.decide(self.probabilities(images.pixels), images.sources, top_k)

    def audit(self, threshold: float | None = None, top_outliers: int | None = None, batch_size: int | None = None,
              filter_by: str = "prune_by_noise_rate", log=print) -> Path:
        """Audit the run's data with these members (audit.py): writes RUN/audit/ and returns that folder."""
        from .audit import BATCH, THRESHOLD, TOP_OUTLIERS, audit
        return audit(self.members, threshold=THRESHOLD if threshold is None else threshold,
                     top_outliers=TOP_OUTLIERS if top_outliers is None else top_outliers, device=self.device,
                     batch_size=batch_size or BATCH, filter_by=filter_by, log=log)

    def decide(self, probs: np.ndarray, sources: list[str], top_k: int = 5) -> list[Prediction]:
        top_k = max(1, min(int(top_k), len(self.classes)))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        out = []
        for i, src in enumerate(sources):
            pairs = [(self.classes[c], float(probs[i, c])) for c in order[i]]
            out.append(Prediction(pairs[0][0], pairs[0][1], pairs, src))
        return out


def load(source: str | Path, *, fold: str | int = "all", tta: bool | None = None, views=None,
         device: str = "auto", batch_size: int = 256, amp: str = "off", int8: bool = False,
         decision_tau: float | None = None, log=None, logit_adjust: float | None = None) -> Classifier:
    """A Classifier from a run folder (fold ensemble, the preset's TTA), a fold folder, a checkpoint file, or a
    folder written by export.py --format safetensors (its members, taus and TTA).

    tta None follows the run's preset (config "tta"); views default to identity,hflip,scale0.9,scale1.1 when
    TTA is on. decision_tau None applies each checkpoint's own decision tau (v4 and v5 choose one on
    validation; 0 for the others), a number in [-10, 10] overrides it (`logit_adjust=` is its old name, accepted
    with a DeprecationWarning). int8=True runs the int8 ONNX model (made once into export-int8/
    of the run, or of the fold for one model; calibrated on the run's training images; needs onnx and
    onnxruntime). log: a function for progress lines and warnings (None: a fold whose training has not
    finished is a Python warning, and nothing else is said).
    """
    if logit_adjust is not None:
        warnings.warn("imgcls.load(logit_adjust=...) is the old name of decision_tau=", DeprecationWarning,
                      stacklevel=2)
        decision_tau = logit_adjust if decision_tau is None else decision_tau
    check_device(device)  # the same rules, and messages, as predict.py's flags
    check_range("batch_size", batch_size, 1, MAX_BATCH)
    if is_hub_folder(source):  # export.py --format safetensors: its members, taus and views
        members, hub_views, hub_taus = load_hub(source)
        chosen = parse_views(views) if (tta and views) else (hub_views if tta is None else
                                                              (TTA_VIEWS if tta else ("identity",)))
        taus = hub_taus if decision_tau is None else decision_taus(members, decision_tau)
        return Classifier(members, chosen, device=device, batch_size=batch_size, amp=amp, decision_taus=taus)
    members = load_members(find_checkpoints(source, fold))
    for member in members:  # a killed or still running fold: its model file is only the best epoch so far
        note = unfinished_note(member.path)
        if note:
            log(note) if log is not None else warnings.warn(note, stacklevel=2)
    log = log or _QUIET
    if tta is None:
        tta = members[0].config.tta
    taus = decision_taus(members, decision_tau)
    chosen = parse_views(views) if (tta and views) else (TTA_VIEWS if tta else ("identity",))
    int8_model = None
    if int8:
        from .quantize import int8_model_for
        int8_model = int8_model_for(members, chosen, taus, log=log)
    return Classifier(members, chosen, device=device, batch_size=batch_size, amp=amp, int8_model=int8_model,
                      decision_taus=taus)
