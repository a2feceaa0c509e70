"""The atlas regions the Grad-CAM stage reads (written by :mod:`earlyad.gradcam.atlas`).

Kept apart from :mod:`.atlas`, which needs ANTs and the atlas files, so that the Grad-CAM job's
environment needs neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["HIPPOCAMPUS", "REGIONS", "AtlasFiles", "atlas_paths", "load_atlas", "region_masks"]

#: Region -> AAL label names (None: Colin27's lateral ventricles). Codes in the label image are
#: the 1-based positions in this dict.
REGIONS: dict[str, tuple[str, ...] | None] = {
    "hippocampus": ("Hippocampus_L", "Hippocampus_R"),
    "parahippocampal": ("ParaHippocampal_L", "ParaHippocampal_R"),
    "amygdala": ("Amygdala_L", "Amygdala_R"),
    "lateral_ventricles": None,
}
HIPPOCAMPUS = "hippocampus"


@dataclass(frozen=True)
class AtlasFiles:
    """What :func:`build_atlas` writes into one folder."""

    regions: Path  # regions.nii.gz: uint8 codes of REGIONS on the normalized grid
    brain: Path  # brain_mask.nii.gz: the template brain mask on the same grid
    table: Path  # regions.tsv: code, region, labels, label values, voxels, mL
    transform: Path  # template_to_mni.json: the world affine and how far it is from identity


def atlas_paths(folder: Path) -> AtlasFiles:
    """The four files of an atlas folder."""
    folder = Path(folder)
    return AtlasFiles(
        folder / "regions.nii.gz",
        folder / "brain_mask.nii.gz",
        folder / "regions.tsv",
        folder / "template_to_mni.json",
    )


def load_atlas(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(region label image, brain mask, affine) of an atlas folder."""
    paths = atlas_paths(folder)
    for p in (paths.regions, paths.brain):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} is missing: build the atlas first "
                "(rule gradcam_atlas, or `earlyad gradcam-atlas`)"
            )
    img = nib.load(paths.regions)
    brain = np.asarray(nib.load(paths.brain).dataobj) > 0
    return np.asarray(img.dataobj).astype(np.uint8), brain, img.affine


def region_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean mask of each region of :data:`REGIONS` from the label image."""
    return {name: labels == code for code, name in enumerate(REGIONS, start=1)}
