"""World-to-world affines between the pipeline's spaces, read from ANTs' ``.mat`` files.

Why: Grad-CAM maps live on the normalized grid (study-template space). The synthetic cohort's
ground-truth atrophy masks live on the BIDS T1w grid, and the AAL atlas in MNI space. Both are
carried onto the normalized grid through the same affines as the scans, composed into one 4x4
matrix and applied once (a single resampling, no accumulated blur):

* t1-linear's ``*_res-1x1x1_affine.mat`` maps an MNI (t1-linear) point to the BIDS scan's point;
* normalize's ``*_to-template_affine.mat`` maps a normalized-grid (template) point to the
  t1-linear point (identity when ``preprocessing.template`` is ``mni``);
* the atlas rule's template-to-MNI affine maps a template point to an MNI point.

ANTs/ITK store an ``AffineTransform`` as 12 parameters (the 3x3 matrix ``A`` row by row, then
the translation ``t``) and a centre ``c`` (``fixed``); a point ``x`` in ITK's LPS world goes to
``A (x - c) + c + t``. nibabel's affines are RAS, so the matrix is conjugated by
``diag(-1, -1, 1)``. The result is exactly what ``ants.apply_transforms`` does with the same
files (tested), without ANTs in the Grad-CAM environment.

With ``preprocessing.backend: clinica`` the t1-linear image is a SyN warp of which Clinica saves
only the affine part, so carried masks are then approximate (the Grad-CAM stage records it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.io import loadmat

__all__ = ["LPS", "compose", "read_ants_affine", "resample_to_grid"]

#: RAS <-> LPS (its own inverse).
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_ants_affine(path: Path) -> np.ndarray:
    """The 4x4 RAS world affine of an ANTs/ITK ``.mat`` file (fixed point -> moving point).

    Raises:
        ValueError: the file holds no 3D affine transform (naming the file and its keys).
    """
    mat = loadmat(str(path))
    key = next((k for k in mat if k.startswith("AffineTransform_") and k.endswith("_3_3")), None)
    if key is None or "fixed" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: not a 3D ANTs affine transform (keys {found})")
    params = np.asarray(mat[key], dtype=np.float64).ravel()
    centre = np.asarray(mat["fixed"], dtype=np.float64).ravel()
    linear = params[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = linear
    lps[:3, 3] = params[9:12] + centre - linear @ centre
    return LPS @ lps @ LPS


def compose(*maps: np.ndarray) -> np.ndarray:
    """``maps[0] @ maps[1] @ ...``: the LAST map acts first on a point.

    Note that ANTs' ``transformlist`` is the other way round: ``[A, B]`` applies ``A`` to the
    fixed point first (measured: it equals ``compose(B, A)``; tested).
    """
    out = np.eye(4)
    for m in maps:
        out = out @ np.asarray(m, dtype=np.float64)
    return out


def resample_to_grid(
    data: np.ndarray,
    src_affine: np.ndarray,
    shape: Sequence[int],
    dst_affine: np.ndarray,
    world_map: np.ndarray | None = None,
    order: int = 0,
) -> np.ndarray:
    """``data`` (voxel -> world ``src_affine``) sampled on the grid (``shape``, ``dst_affine``).

    Args:
        world_map: maps a destination world point to the source world point (the composed
            ``.mat`` affines); ``None`` when both grids share one world.
        order: 0 (nearest, for label images: codes are never blended) or 1 (linear).
    """
    world = np.eye(4) if world_map is None else np.asarray(world_map, dtype=np.float64)
    vox = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ world @ dst_affine
    return ndi.affine_transform(
        np.asarray(data),
        vox[:3, :3],
        vox[:3, 3],
        output_shape=tuple(int(n) for n in shape),
        order=order,
        mode="constant",
        cval=0,
    )
