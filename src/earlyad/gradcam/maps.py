"""Grad-CAM maps of the 3D CNN, placed back in the full preprocessed volume.

Method: Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391) through MONAI's maintained
implementation (``monai.visualize.GradCAM``): the class score's gradients at the target layer
(by default the last convolution, :attr:`ClassifierCNN.last_conv`), averaged per channel, weight
its activations; ReLU; trilinear upsampling to the network input (96^3).

Traps avoided (STYLE.md, REFERENCE.md defect 4):

* MONAI's default post-processing maps (min, max) to (1, 0) PER SAMPLE, which inverts the map;
  it is replaced by the identity and the map is scaled here to [0, 1] by its maximum over the
  WHOLE volume (never per slice), so 0 keeps meaning "no evidence" and slices stay comparable.
* Grad-CAM needs gradients: the computation runs under ``torch.enable_grad()`` even when the
  caller disabled them.
* The map is computed on the centre crop the model was evaluated on
  (:func:`earlyad.train.data.centre_offset`), put back at that offset in a volume of the
  scan's full shape (zero outside the crop), and saved with the affine of the normalized scan's
  NIfTI, so it overlays the scan in any viewer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.visualize import GradCAM
from torch import nn

from earlyad.train.data import centre_offset

__all__ = ["CamResult", "VolumeGradCAM", "crop_box", "layer_name", "place_in_volume", "save_map"]


def layer_name(model: nn.Module, layer: nn.Module | str | None = None) -> str:
    """The dotted module name of ``layer`` in ``model`` (default: its ``last_conv``).

    Raises:
        ValueError: the layer is not a submodule of the model (the message lists convolutions).
    """
    names = dict(model.named_modules())
    if isinstance(layer, str):
        if layer not in names:
            convs = [n for n, m in names.items() if isinstance(m, nn.Conv3d)]
            raise ValueError(f"no layer {layer!r} in the model; convolutions: {convs}")
        return layer
    target = layer if layer is not None else model.last_conv
    for name, module in names.items():
        if module is target:
            return name
    raise ValueError("the target layer is not a submodule of the model")


def _identity(x: torch.Tensor) -> torch.Tensor:
    """MONAI post-processing that keeps the map as computed (its default inverts it)."""
    return x


@dataclass(frozen=True)
class CamResult:
    """One scan's Grad-CAM on the crop, scaled to [0, 1] over the volume."""

    cam: np.ndarray  # float32 (crop, crop, crop)
    raw_max: float  # maximum before scaling (0: the map is empty)
    class_idx: int  # the class explained
    probabilities: np.ndarray  # softmax of the logits, (n_classes,)


class VolumeGradCAM:
    """Grad-CAM of one class for one crop at a time.

    Args:
        model: the trained classifier (put in eval mode; its in-place ReLUs are made out of
            place so that the backward hooks see unmodified activations).
        layer: target layer (module or dotted name; default the model's ``last_conv``).
    """

    def __init__(self, model: nn.Module, layer: nn.Module | str | None = None) -> None:
        self.model = model.eval()
        for module in self.model.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False
        self.layer = layer_name(self.model, layer)
        self._cam = GradCAM(
            nn_module=self.model, target_layers=self.layer, postprocessing=_identity
        )

    def __call__(self, crop: np.ndarray, class_idx: int | None = None) -> CamResult:
        """Grad-CAM of ``class_idx`` (default: the predicted class) for a (D, H, W) crop."""
        device = next(self.model.parameters()).device
        x = torch.as_tensor(np.asarray(crop, dtype=np.float32), device=device)[None, None]
        x.requires_grad_(True)  # so the hooks also fire when the target is the first layer
        with torch.enable_grad():
            logits = self.model(x).detach()
            idx = int(logits.argmax(1).item()) if class_idx is None else int(class_idx)
            raw = self._cam(x, class_idx=idx).detach().float().cpu().numpy()[0, 0]
        raw = np.maximum(raw, 0.0).astype(np.float32)  # trilinear upsampling keeps >= 0
        top = float(raw.max())
        cam = raw / np.float32(top) if top > 0 else raw
        probs = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
        return CamResult(cam.astype(np.float32), top, idx, probs)


def crop_box(shape: tuple[int, ...], crop: int) -> tuple[slice, slice, slice]:
    """The centre crop of a volume of ``shape`` as slices (the evaluation crop)."""
    if any(n < crop for n in shape[:3]):
        raise ValueError(f"volume of shape {tuple(shape)} is smaller than the {crop}^3 crop")
    off = centre_offset(shape[:3], crop)
    return tuple(slice(o, o + crop) for o in off)  # type: ignore[return-value]


def place_in_volume(cam: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The crop-sized ``cam`` put back at the centre-crop offset of a zero volume of ``shape``."""
    out = np.zeros(shape[:3], dtype=np.float32)
    out[crop_box(shape, cam.shape[0])] = cam
    return out


def save_map(volume: np.ndarray, like: Path, out: Path) -> Path:
    """Save ``volume`` as float32 NIfTI with the affine (sform and qform) of the image ``like``.

    Raises:
        ValueError: the shapes differ (the map was not computed on that image's grid).
    """
    ref = nib.load(str(like))
    if tuple(volume.shape) != tuple(ref.shape[:3]):
        raise ValueError(f"map of shape {volume.shape} does not match {like} {ref.shape[:3]}")
    img = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), ref.affine)
    img.set_sform(ref.affine, code=int(ref.header["sform_code"]) or 2)
    img.set_qform(ref.affine, code=int(ref.header["qform_code"]) or 2)
    img.header.set_xyzt_units("mm", "sec")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out))
    return out
