"""The MNI152NLin2009cSym template and Clinica's cropped reference, installed before any scan.

Why: ``clinica run t1-linear`` fetches both files the first time it needs them
(``clinica.utils.image.get_mni_template("t1")`` and ``get_mni_cropped_template()``), which fails
on compute nodes without internet and races when many Slurm jobs start at once. We install them
once, into our results folder (``dest``) AND where Clinica looks, so it never downloads.

Where Clinica looks (clinica 0.12.0, ``clinica/utils/image.py::_get_file_locally_or_download``):
``<site-packages>/clinica/resources/masks/<filename>``. Its checksum behaviour:

* a file that EXISTS there is returned as is, with NO checksum check;
* only a fresh download is checked, and it is written in place BEFORE the check, so a corrupt or
  truncated download stays there after the ``IOError`` and every later run uses it silently.

Hence this module verifies SHA-256 itself, writes atomically (temporary file, then rename), and
marks a stand-in both in the NIfTI ``descrip`` field and in a ``TEMPLATE_SOURCE.txt`` beside it:
Clinica would use a stand-in under the real name without complaint.

Modes of :func:`install_templates`:

* ``download``: Clinica's files from Clinica's URL, checked against Clinica's SHA-256.
* ``local``: the user's copies of the same files, checked the same way (air-gapped clusters).
* ``standin``: offline, for tests and the demo: nilearn's bundled MNI152 2009a (skull-stripped,
  the same ICBM 2009 nonlinear symmetric space) put on the 2009c grid, and the cropped
  reference cut from it with Clinica's box. NOT the template of the paper; never for results.

The brain mask in the cropped space (``mni_cropped_brainmask.nii.gz``, used by QC) is nilearn's
MNI152 2009 brain mask resampled onto the cropped reference in every mode: 2009a and 2009c share
the space, and nilearn's mask is the only one available offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from earlyad.files import sha256_of

__all__ = [
    "CLINICA_MARKER_NAME",
    "CLINICA_URL",
    "CROP_BOX",
    "CROPPED_NAME",
    "CROPPED_SHA256",
    "CROPPED_SHAPE",
    "GRID_AFFINE",
    "GRID_SHAPE",
    "MASK_NAME",
    "MNI_NAME",
    "MNI_SHA256",
    "SOURCE_NAME",
    "STANDIN_DESCRIP",
    "Mode",
    "TemplateError",
    "TemplatePaths",
    "clinica_resources_dir",
    "install_templates",
    "load_templates",
    "sha256_of",
]

Mode = Literal["download", "local", "standin"]

#: Clinica's download location and file names (clinica 0.12.0, clinica/utils/image.py).
CLINICA_URL = "https://aramislab.paris.inria.fr/files/data/img_t1_linear/"
MNI_NAME = "mni_icbm152_t1_tal_nlin_sym_09c.nii"
MNI_SHA256 = "93359ab97c1c027376397612a9b6c30e95406c15bf8695bd4a8efcb2064eaa34"
CROPPED_NAME = "ref_cropped_template.nii.gz"
CROPPED_SHA256 = "67e1e7861805a8fd35f7fcf2bdf9d2a39d7bcb2fd5a201016c4d2acdd715f5b3"
#: Our extra outputs in ``dest``.
MASK_NAME = "mni_cropped_brainmask.nii.gz"
SOURCE_NAME = "TEMPLATE_SOURCE.txt"
#: The marker we leave in Clinica's folder (a specific name: that folder holds Clinica's files).
CLINICA_MARKER_NAME = "earlyad_TEMPLATE_SOURCE.txt"

#: The 2009c grid: 193x229x193 voxels of 1 mm, voxel (0,0,0) at (-96,-132,-78) mm RAS.
GRID_SHAPE: tuple[int, int, int] = (193, 229, 193)
GRID_AFFINE = np.array(
    [[1.0, 0, 0, -96.0], [0, 1.0, 0, -132.0], [0, 0, 1.0, -78.0], [0, 0, 0, 1.0]]
)
#: Clinica's ``MNI_CROP_BBOX`` (x 12:181, y 13:221, z 0:179) and the shape it gives.
CROP_BOX: tuple[slice, slice, slice] = (slice(12, 181), slice(13, 221), slice(0, 179))
CROPPED_SHAPE: tuple[int, int, int] = (169, 208, 179)
#: NIfTI ``descrip`` (max 80 bytes) of the stand-in files, so nobody mistakes them.
STANDIN_DESCRIP = "earlyad stand-in: nilearn MNI152 2009a on the 2009c grid"

_EXPECTED = {MNI_NAME: MNI_SHA256, CROPPED_NAME: CROPPED_SHA256}
_STANDIN_TEXT = (
    "source: standin\n"
    "STAND-IN templates, NOT Clinica's MNI152NLin2009cSym: nilearn's bundled MNI152 2009a\n"
    "(skull-stripped) resampled onto the 2009c grid (193x229x193, 1 mm, origin -96/-132/-78),\n"
    "and the cropped reference cut from it with Clinica's box (x12:181, y13:221, z0:179).\n"
    "For tests and the offline demo only. Install the real files with mode 'download' or\n"
    "'local' before producing results.\n"
)
_CHUNK = 1 << 20
_FILE_MODE = 0o644


class TemplateError(RuntimeError):
    """A template could not be installed (bad checksum, no network, unwritable folder...)."""


@dataclass(frozen=True)
class TemplatePaths:
    """The installed template files, and where they came from.

    Attributes:
        mni: the whole-head template on the 193x229x193 grid (Clinica's registration target).
        cropped: Clinica's cropped reference; t1-linear outputs carry its header.
        cropped_mask: brain mask on the cropped grid (QC, NCC inside the brain).
        source: ``download``, ``local`` or ``standin``.
    """

    mni: Path
    cropped: Path
    cropped_mask: Path
    source: str

    @property
    def is_standin(self) -> bool:
        """True for the offline stand-in; results made with it are not the paper's."""
        return self.source == "standin"


# --------------------------------------------------------------------------- helpers


def clinica_resources_dir() -> Path:
    """Clinica's ``resources/masks`` folder, the only place it looks for the templates.

    Found from the installed package without importing it (importing Clinica is slow and
    pulls nipype in).
    """
    spec = importlib.util.find_spec("clinica")
    if spec is None or spec.origin is None:
        raise TemplateError("Clinica is not installed in this environment (no 'clinica' module)")
    return Path(spec.origin).parent / "resources" / "masks"


@contextmanager
def _atomic_target(target: Path) -> Iterator[Path]:
    """A temporary path next to ``target`` that replaces it only if the block succeeds.

    Why: Clinica uses any file it finds under the real name, so a half-written file must never
    appear there; ``os.replace`` is atomic within one file system.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes[-2:])  # nibabel picks the format from the extension
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600: Clinica run by others must read it
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_atomic(src: Path, target: Path) -> None:
    """Copy ``src`` to ``target`` atomically (see :func:`_atomic_target`)."""
    with _atomic_target(target) as tmp:
        shutil.copyfile(src, tmp)


def _checksum_error(what: str, name: str, expected: str, actual: str, hint: str) -> TemplateError:
    """One message format for every checksum failure: file, expected and actual, and a hint."""
    return TemplateError(
        f"{what}: SHA-256 mismatch for Clinica's {name}\n"
        f"  expected {expected}\n"
        f"  actual   {actual}\n"
        f"Hint: {hint}"
    )


# --------------------------------------------------------------------------- download / local


def _download(url: str, target: Path, expected: str, timeout_s: float) -> None:
    """Fetch ``url`` into ``target``, hashing on the fly; nothing is left behind on failure."""
    if target.is_file() and sha256_of(target) == expected:
        return
    digest = hashlib.sha256()
    try:
        with _atomic_target(target) as tmp:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as out:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != expected:
                raise _checksum_error(
                    url,
                    target.name,
                    expected,
                    digest.hexdigest(),
                    "the server sent a different file; retry, or fetch it by hand and use "
                    "mode 'local'.",
                )
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise TemplateError(
            f"cannot download {url} into {target}: {err}\n"
            "Hint: compute nodes usually have no internet; run the templates step on a login "
            "node, or copy the two files there and use mode 'local'."
        ) from err


def _copy_verified(src: Path | None, target: Path, expected: str) -> None:
    """Copy the user's file to ``target`` after checking it is byte-identical to Clinica's."""
    if src is None:
        raise TemplateError(f"mode 'local' needs the path of Clinica's {target.name}")
    src = Path(src)
    if not src.is_file():
        raise TemplateError(f"{src}: no such file (expected Clinica's {target.name})")
    actual = sha256_of(src)
    if actual != expected:
        raise _checksum_error(
            str(src),
            target.name,
            expected,
            actual,
            f"use the exact file Clinica downloads from {CLINICA_URL}{target.name} (not "
            "re-saved, re-compressed or converted); for an offline test use mode 'standin'.",
        )
    if not (target.is_file() and sha256_of(target) == expected):
        _copy_atomic(src, target)


# --------------------------------------------------------------------------- stand-in


def _on_grid(img: nib.Nifti1Image, affine: np.ndarray, shape: tuple[int, ...], how: str):
    """Resample ``img`` onto a grid; nilearn is imported here, only where it is needed."""
    from nilearn.image import resample_img

    return resample_img(
        img,
        target_affine=affine,
        target_shape=shape,
        interpolation=how,
        force_resample=True,
        copy_header=True,
    )


def _cropped_affine() -> np.ndarray:
    """Affine of the cropped reference: the grid's, moved to the first voxel of the box."""
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in CROP_BOX]
    return GRID_AFFINE @ shift


def _standin_nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A float32 NIfTI in MNI space (q/sform code 4) whose ``descrip`` says it is a stand-in."""
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    img.set_qform(affine, code=4)
    img.set_sform(affine, code=4)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = STANDIN_DESCRIP.encode()
    return img


def _build_standin(dest: Path) -> None:
    """Write the stand-in template and cropped reference into ``dest``.

    nilearn's template is bundled with the package (no download) and rescaled to [0, 1]; we
    scale it to [0, 100] like the real 2009c. Both grids are 1 mm with integer offsets, so the
    linear resampling is an exact shift (zero where 2009a's field of view ends).
    """
    from nilearn.datasets import load_mni152_template

    on_grid = _on_grid(load_mni152_template(resolution=1), GRID_AFFINE, GRID_SHAPE, "linear")
    data = np.clip(np.asarray(on_grid.dataobj, dtype=np.float32), 0.0, None) * np.float32(100)
    with _atomic_target(dest / MNI_NAME) as tmp:
        nib.save(_standin_nifti(data, GRID_AFFINE), tmp)
    with _atomic_target(dest / CROPPED_NAME) as tmp:
        nib.save(_standin_nifti(data[CROP_BOX], _cropped_affine()), tmp)


def _write_cropped_mask(cropped: Path, target: Path) -> None:
    """nilearn's MNI152 brain mask on the cropped reference's own grid (uint8 0/1)."""
    from nilearn.datasets import load_mni152_brain_mask

    ref = nib.load(cropped)
    mask = _on_grid(load_mni152_brain_mask(resolution=1), ref.affine, ref.shape[:3], "nearest")
    img = nib.Nifti1Image((np.asarray(mask.dataobj) > 0).astype(np.uint8), ref.affine)
    img.set_qform(ref.affine, code=4)
    img.set_sform(ref.affine, code=4)
    img.header["descrip"] = b"earlyad: nilearn MNI152 brain mask on the cropped reference"
    with _atomic_target(target) as tmp:
        nib.save(img, tmp)


# --------------------------------------------------------------------------- Clinica's folder


def _source_text(mode: Mode, origin: str) -> str:
    """Contents of TEMPLATE_SOURCE.txt: the mode and where the files came from."""
    if mode == "standin":
        return _STANDIN_TEXT
    lines = [f"source: {mode}", f"from: {origin}"]
    lines += [f"sha256 {name}: {digest}" for name, digest in _EXPECTED.items()]
    return "\n".join(lines) + "\n"


def _refuse_to_shadow_real(clinica_dir: Path) -> None:
    """A stand-in must never replace the real, verified files in Clinica's folder."""
    for name, expected in _EXPECTED.items():
        path = clinica_dir / name
        if path.is_file() and sha256_of(path) == expected:
            raise TemplateError(
                f"{path} is Clinica's real {name} (checksum verified); refusing to replace it "
                "with a stand-in.\nHint: use mode 'local' with the real files in that folder."
            )


def _install_into_clinica(dest: Path, clinica_dir: Path, text: str) -> None:
    """Copy both files from ``dest`` to Clinica's folder under the names Clinica asks for."""
    try:
        for name in _EXPECTED:
            source = dest / name
            target = clinica_dir / name
            if not (target.is_file() and sha256_of(target) == sha256_of(source)):
                _copy_atomic(source, target)
            elif target.stat().st_mode & 0o777 != _FILE_MODE:
                os.chmod(target, _FILE_MODE)  # an earlier install may have left it 0600
        (clinica_dir / CLINICA_MARKER_NAME).write_text(text)
    except OSError as err:
        raise TemplateError(
            f"cannot install the templates into Clinica's folder {clinica_dir}: {err}\n"
            "Hint: the Clinica environment must be writable by this user (or install once "
            "with an account that can write it)."
        ) from err


# --------------------------------------------------------------------------- public API


def _fill_dest(
    mode: Mode, dest: Path, mni: Path | None, cropped: Path | None, base_url: str, timeout_s: float
) -> str:
    """Put the two template files into ``dest``; returns where they came from (for the marker)."""
    if mode == "download":
        for name, expected in _EXPECTED.items():
            _download(base_url + name, dest / name, expected, timeout_s)
        return base_url
    if mode == "local":
        _copy_verified(mni, dest / MNI_NAME, MNI_SHA256)
        _copy_verified(cropped, dest / CROPPED_NAME, CROPPED_SHA256)
        return f"{mni}, {cropped}"
    if mode == "standin":
        _build_standin(dest)
        return "nilearn MNI152 2009a"
    raise ValueError(f"unknown template mode {mode!r}: use 'download', 'local' or 'standin'")


def install_templates(
    mode: Mode,
    dest: Path,
    mni: Path | None = None,
    cropped: Path | None = None,
    *,
    clinica_dir: Path | None = None,
    base_url: str = CLINICA_URL,
    timeout_s: float = 120.0,
) -> TemplatePaths:
    """Install the template, the cropped reference and its brain mask into ``dest`` and Clinica.

    Args:
        mode: ``download`` (Clinica's URL, SHA-256 checked), ``local`` (``mni`` and ``cropped``
            are the user's copies, SHA-256 checked) or ``standin`` (offline, clearly marked).
        dest: our results folder (e.g. ``results/templates``); created if needed.
        mni: ``mode='local'`` only: the user's ``mni_icbm152_t1_tal_nlin_sym_09c.nii``.
        cropped: ``mode='local'`` only: the user's ``ref_cropped_template.nii.gz``.
        clinica_dir: where Clinica looks (default: its ``resources/masks``); tests pass a
            temporary folder so the shared environment is left alone.
        base_url: ``mode='download'`` only; Clinica's URL unless testing.
        timeout_s: ``mode='download'`` only: network timeout per file.

    Returns:
        The paths in ``dest`` and the mode they came from.

    Raises:
        TemplateError: checksum mismatch (names the file, both checksums and a hint), no
            network, an unwritable folder, or a stand-in that would replace the real files.
    """
    dest = Path(dest)
    clinica_dir = Path(clinica_dir) if clinica_dir is not None else clinica_resources_dir()
    if mode == "standin":
        _refuse_to_shadow_real(clinica_dir)
    dest.mkdir(parents=True, exist_ok=True)
    text = _source_text(mode, _fill_dest(mode, dest, mni, cropped, base_url, timeout_s))
    _write_cropped_mask(dest / CROPPED_NAME, dest / MASK_NAME)
    (dest / SOURCE_NAME).write_text(text)
    _install_into_clinica(dest, clinica_dir, text)
    return load_templates(dest)


def load_templates(dest: Path) -> TemplatePaths:
    """The :class:`TemplatePaths` of a folder filled by :func:`install_templates`.

    Why: later steps (one Slurm job per scan) get only the folder; its TEMPLATE_SOURCE.txt
    tells them whether they are working with a stand-in.
    """
    dest = Path(dest)
    marker = dest / SOURCE_NAME
    paths = [dest / MNI_NAME, dest / CROPPED_NAME, dest / MASK_NAME, marker]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TemplateError(f"templates not installed in {dest}: missing {', '.join(missing)}")
    first = marker.read_text().splitlines()[0]
    source = first.removeprefix("source:").strip()
    if source not in ("download", "local", "standin"):
        raise TemplateError(f"{marker}: unrecognised first line {first!r}")
    return TemplatePaths(mni=paths[0], cropped=paths[1], cropped_mask=paths[2], source=source)
