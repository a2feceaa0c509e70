"""Region masks on the normalized grid: AAL structures by label code, lateral ventricles, brain.

Why by label code: an atlas image stores one value per structure, and which value belongs to
which name is written in the atlas's label list. The reference code took the value from the
POSITION of the name in a list, which gave an empty hippocampus mask (so its fallback always
fired; REFERENCE.md, defect 4). Here each name is looked up in the label table and the value
stored in the image is used (:func:`earlyad.synth.brain.label_mask`, which checks whether the
image stores the table's index or its code column: mricron's ``aal.nii.gz`` stores the index,
SPM's AAL the four-digit code).

Regions (:data:`REGIONS`): AAL has no entorhinal cortex (it lies in ``ParaHippocampal``) and no
ventricles; the lateral ventricles are those of Colin27, the brain AAL was drawn on, found the
way the synthetic cohort finds them (:func:`earlyad.synth.brain.lateral_ventricle_mask`), so
the region table and the synthetic ground truth speak of the same structure.

Space: AAL and Colin27 are in MNI space; the normalized scans are in the study template's
space, which is MNI-aligned but not identical to it (an average of affinely registered scans
drifts). :func:`template_to_mni` registers the template to the MNI template once (affine, the
normalize step's settings); every atlas mask is carried through that affine.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from earlyad.gradcam.regions import REGIONS, AtlasFiles, atlas_paths
from earlyad.gradcam.transforms import read_ants_affine, resample_to_grid
from earlyad.synth.brain import (
    DEFAULT_TEMPLATE_DIR,
    _aal_files,
    _read_label_table,
    label_mask,
    lateral_ventricle_mask,
)

__all__ = ["atlas_stage", "build_atlas", "template_to_mni"]


def _aal_values(atlas: np.ndarray, table: dict[str, list[int]], names: Sequence[str]) -> list[int]:
    """The image values of the named labels (the column the image stores, see the docstring)."""
    mask = label_mask(atlas, table, tuple(names))
    return sorted(int(v) for v in np.unique(atlas[mask]))


def template_to_mni(
    template: Path, mni: Path, mni_mask: Path, seed: int = 0
) -> tuple[np.ndarray, str]:
    """World affine (RAS) mapping a point of the study template to the MNI template, and how
    it was obtained. Affine registration on 2 mm copies within the dilated MNI brain mask (the
    settings of the normalize step, :func:`earlyad.preprocess.study_template.register_affine`).
    """
    from earlyad.preprocess.study_template import (
        downsample,
        nifti_to_ants,
        read_volume,
        register_affine,
        registration_mask,
    )

    fixed_data, fixed_affine, _ = read_volume(Path(template))
    moving_data, moving_affine, _ = read_volume(Path(mni))
    mask_data, mask_affine, _ = read_volume(Path(mni_mask))
    fixed = nifti_to_ants(*downsample(fixed_data, fixed_affine))
    moving = nifti_to_ants(*downsample(moving_data, moving_affine))
    mask = registration_mask(nifti_to_ants((mask_data > 0).astype(np.float32), mask_affine), fixed)
    with tempfile.TemporaryDirectory(prefix="earlyad_atlas_") as tmp:
        (mat,) = register_affine(fixed, moving, seed, Path(tmp), mask)
        return read_ants_affine(Path(mat)), "ANTs affine registration (study template -> MNI)"


def _max_shift_mm(world_map: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> float:
    """Largest displacement (mm) the affine gives a voxel of ``mask``: 0 for the identity."""
    ijk = np.argwhere(mask)
    if ijk.size == 0:
        return 0.0
    world = affine[:3, :3] @ ijk.T + affine[:3, 3:4]
    moved = world_map[:3, :3] @ world + world_map[:3, 3:4]
    return float(np.linalg.norm(moved - world, axis=0).max())


def build_atlas(
    out_dir: Path,
    shape: Sequence[int],
    affine: np.ndarray,
    world_map: np.ndarray,
    method: str,
    brain_mask: Path,
    template_dir: Path = DEFAULT_TEMPLATE_DIR,
) -> AtlasFiles:
    """Write the region label image, brain mask, region table and transform record for the
    grid (``shape``, ``affine``); ``world_map`` maps its world (template) to MNI.

    ``brain_mask`` is the MNI template's brain mask, carried the same way.
    """
    paths = atlas_paths(out_dir)
    paths.regions.parent.mkdir(parents=True, exist_ok=True)
    aal_path, table_path = _aal_files(Path(template_dir))
    aal_img = nib.load(aal_path)
    aal = np.asarray(aal_img.dataobj).astype(np.int32)
    table = _read_label_table(table_path)
    labels = np.zeros(tuple(shape), dtype=np.uint8)
    rows = []
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    for code, (region, names) in enumerate(REGIONS.items(), start=1):
        if names is None:
            mask, src_affine = _colin_ventricles(Path(template_dir))
            values: list[int] = []
            source = "Colin27 lateral ventricles (earlyad.synth.brain)"
        else:
            values = _aal_values(aal, table, names)
            mask, src_affine, source = np.isin(aal, values), aal_img.affine, " + ".join(names)
        on_grid = resample_to_grid(mask.astype(np.uint8), src_affine, shape, affine, world_map)
        new = (on_grid > 0) & (labels == 0)
        labels[new] = code
        rows.append(
            {
                "code": code,
                "region": region,
                "source": source,
                "atlas_values": " ".join(map(str, values)),
                "voxels": int(new.sum()),
                "volume_ml": round(int(new.sum()) * voxel_ml, 2),
            }
        )
        if not new.any():
            raise ValueError(f"atlas region {region} ({source}) is empty on the normalized grid")
    _save(labels, affine, paths.regions)
    brain_img = nib.load(brain_mask)
    brain = resample_to_grid(
        (np.asarray(brain_img.dataobj) > 0).astype(np.uint8), brain_img.affine, shape, affine,
        world_map,
    )  # fmt: skip
    _save(brain, affine, paths.brain)
    pd.DataFrame(rows).to_csv(paths.table, sep="\t", index=False)
    record = {
        "method": method,
        "matrix_template_to_mni_ras": np.round(world_map, 6).tolist(),
        "max_shift_in_brain_mm": round(_max_shift_mm(world_map, brain > 0, affine), 3),
        "atlas": str(aal_path),
        "atlas_labels": str(table_path),
    }
    paths.transform.write_text(json.dumps(record, indent=2) + "\n")
    return paths


def _colin_ventricles(template_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Colin27's lateral ventricles and their affine (AAL has none)."""
    t1_img = nib.load(template_dir / "ch2.nii.gz")
    brain = np.asarray(nib.load(template_dir / "ch2bet.nii.gz").dataobj) > 0
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    return lateral_ventricle_mask(t1, brain, t1_img.affine), t1_img.affine


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(np.asarray(data, dtype=np.uint8), affine)
    img.set_sform(affine, code=2)
    img.set_qform(affine, code=2)
    nib.save(img, str(path))


def atlas_stage(
    template: Path,
    mni: Path,
    mni_mask: Path,
    out_dir: Path,
    register: bool,
    voxel_size: float,
    seed: int = 0,
    template_dir: Path = DEFAULT_TEMPLATE_DIR,
) -> AtlasFiles:
    """Atlas regions on the normalized grid of ``template`` (the grid normalize writes).

    Args:
        template: the template scans were normalized to (study template or cropped MNI).
        mni, mni_mask: the cropped MNI template and its brain mask (t1-linear's space).
        register: True when ``template`` is the study template: it is registered to ``mni``;
            False when it is the MNI template itself (the identity is then exact).
    """
    from earlyad.preprocess.normalize import isotropic_grid

    img = nib.load(str(template))
    shape, affine = isotropic_grid(img.shape[:3], img.affine, voxel_size)
    if register:
        world_map, method = template_to_mni(template, mni, mni_mask, seed)
    else:
        world_map, method = np.eye(4), "identity (scans normalized to the MNI template)"
    return build_atlas(out_dir, shape, affine, world_map, method, mni_mask, template_dir)
