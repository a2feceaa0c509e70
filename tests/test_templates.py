"""MNI templates: stand-in geometry and marking, checksum checks, what Clinica expects."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from earlyad.preprocess import templates as tpl
from earlyad.preprocess.templates import (
    CLINICA_MARKER_NAME,
    CROPPED_NAME,
    MASK_NAME,
    MNI_NAME,
    SOURCE_NAME,
    STANDIN_DESCRIP,
    TemplateError,
    install_templates,
    load_templates,
    sha256_of,
)


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> tuple[tpl.TemplatePaths, Path]:
    """The stand-in, installed into a temporary 'Clinica folder' (the shared env untouched)."""
    root = tmp_path_factory.mktemp("tpl")
    return install_templates("standin", root / "dest", clinica_dir=root / "clinica"), root


def _clinica_source() -> str:
    spec = importlib.util.find_spec("clinica.utils.image")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).read_text()


def test_constants_match_installed_clinica() -> None:
    """Names, checksums and crop box are Clinica's own: catches a Clinica upgrade."""
    source = _clinica_source()
    for name, digest in ((MNI_NAME, tpl.MNI_SHA256), (CROPPED_NAME, tpl.CROPPED_SHA256)):
        block = re.search(
            rf'filename="{re.escape(name)}",.*?expected_checksum="(\w+)"', source, re.S
        )
        assert block is not None, name
        assert block.group(1) == digest
    assert tpl.CLINICA_URL in source
    assert "MNI_CROP_BBOX = Bbox3D.from_coordinates(12, 181, 13, 221, 0, 179)" in source
    assert tpl.clinica_resources_dir().name == "masks"


def test_standin_grid_and_origin(standin: tuple[tpl.TemplatePaths, Path]) -> None:
    paths, _ = standin
    mni = nib.load(paths.mni)
    assert paths.mni.name == MNI_NAME and mni.shape == (193, 229, 193)
    np.testing.assert_allclose(mni.affine, tpl.GRID_AFFINE)
    cropped = nib.load(paths.cropped)
    assert cropped.shape == (169, 208, 179)
    np.testing.assert_allclose(cropped.affine[:3, 3], [-84.0, -119.0, -78.0])
    np.testing.assert_allclose(cropped.affine[:3, :3], np.eye(3))
    full = np.asarray(mni.dataobj)
    np.testing.assert_array_equal(np.asarray(cropped.dataobj), full[tpl.CROP_BOX])
    assert 99.0 < full.max() <= 100.0 and full.min() >= 0.0
    mask = nib.load(paths.cropped_mask)
    assert mask.shape == cropped.shape
    np.testing.assert_allclose(mask.affine, cropped.affine)
    inside = np.asarray(mask.dataobj) > 0
    assert 0.1 < inside.mean() < 0.5  # a brain, not empty and not the box
    assert (
        np.asarray(cropped.dataobj)[inside].mean() > 3 * np.asarray(cropped.dataobj)[~inside].mean()
    )


def test_standin_is_marked_everywhere(standin: tuple[tpl.TemplatePaths, Path]) -> None:
    paths, root = standin
    assert paths.source == "standin" and paths.is_standin
    for path in (paths.mni, paths.cropped):
        assert nib.load(path).header["descrip"].item().decode() == STANDIN_DESCRIP
    assert "STAND-IN" in (paths.mni.parent / SOURCE_NAME).read_text()
    clinica = root / "clinica"
    assert "STAND-IN" in (clinica / CLINICA_MARKER_NAME).read_text()
    for name in (MNI_NAME, CROPPED_NAME):
        assert sha256_of(clinica / name) == sha256_of(paths.mni.parent / name)
        assert (clinica / name).stat().st_mode & 0o044 == 0o044  # readable by others
    assert load_templates(paths.mni.parent) == paths


def test_standin_needs_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("network access during the stand-in build")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    paths = install_templates("standin", tmp_path / "d", clinica_dir=tmp_path / "c")
    assert paths.cropped_mask.name == MASK_NAME and paths.cropped_mask.is_file()


def test_local_wrong_checksum_names_file_and_both_checksums(
    standin: tuple[tpl.TemplatePaths, Path], tmp_path: Path
) -> None:
    paths, _ = standin
    with pytest.raises(TemplateError) as info:
        install_templates(
            "local", tmp_path / "d", paths.mni, paths.cropped, clinica_dir=tmp_path / "c"
        )
    message = str(info.value)
    assert str(paths.mni) in message
    assert tpl.MNI_SHA256 in message and sha256_of(paths.mni) in message
    assert "Hint" in message
    assert not (tmp_path / "c").exists()  # nothing reached Clinica's folder


def test_local_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="nowhere.nii"):
        install_templates(
            "local", tmp_path / "d", tmp_path / "nowhere.nii", None, clinica_dir=tmp_path
        )


def _pretend_real(monkeypatch: pytest.MonkeyPatch, mni: Path, cropped: Path) -> None:
    """Make the module accept these files as Clinica's (to test the success paths offline)."""
    expected = {MNI_NAME: sha256_of(mni), CROPPED_NAME: sha256_of(cropped)}
    monkeypatch.setattr(tpl, "MNI_SHA256", expected[MNI_NAME])
    monkeypatch.setattr(tpl, "CROPPED_SHA256", expected[CROPPED_NAME])
    monkeypatch.setattr(tpl, "_EXPECTED", expected)


def test_local_success_installs_both_places(
    standin: tuple[tpl.TemplatePaths, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, _ = standin
    _pretend_real(monkeypatch, paths.mni, paths.cropped)
    got = install_templates(
        "local", tmp_path / "d", paths.mni, paths.cropped, clinica_dir=tmp_path / "c"
    )
    assert got.source == "local"
    for name in (MNI_NAME, CROPPED_NAME):
        assert sha256_of(tmp_path / "c" / name) == sha256_of(tmp_path / "d" / name)
    assert "source: local" in (tmp_path / "c" / CLINICA_MARKER_NAME).read_text()


def test_download_checks_checksum_and_leaves_nothing(
    standin: tuple[tpl.TemplatePaths, Path], tmp_path: Path
) -> None:
    """A file:// 'server' with the wrong files: error with both checksums, no partial file."""
    paths, _ = standin
    url = paths.mni.parent.as_uri() + "/"
    with pytest.raises(TemplateError) as info:
        install_templates("download", tmp_path / "d", clinica_dir=tmp_path / "c", base_url=url)
    assert url + MNI_NAME in str(info.value)
    assert tpl.MNI_SHA256 in str(info.value) and sha256_of(paths.mni) in str(info.value)
    assert not any((tmp_path / "d").iterdir())


def test_download_success_and_unreachable(
    standin: tuple[tpl.TemplatePaths, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, _ = standin
    _pretend_real(monkeypatch, paths.mni, paths.cropped)
    url = paths.mni.parent.as_uri() + "/"
    got = install_templates("download", tmp_path / "d", clinica_dir=tmp_path / "c", base_url=url)
    assert got.source == "download"
    assert hashlib.sha256(got.mni.read_bytes()).hexdigest() == sha256_of(paths.mni)
    with pytest.raises(TemplateError, match="no internet"):
        install_templates(
            "download",
            tmp_path / "e",
            clinica_dir=tmp_path / "c",
            base_url=(tmp_path / "nowhere").as_uri() + "/",
        )


def test_standin_never_replaces_real_files(
    standin: tuple[tpl.TemplatePaths, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, _ = standin
    clinica = tmp_path / "c"
    clinica.mkdir()
    for src in (paths.mni, paths.cropped):
        (clinica / src.name).write_bytes(src.read_bytes())
    _pretend_real(monkeypatch, paths.mni, paths.cropped)
    with pytest.raises(TemplateError, match="refusing to replace"):
        install_templates("standin", tmp_path / "d", clinica_dir=clinica)


def test_unknown_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown template mode"):
        install_templates("fetch", tmp_path, clinica_dir=tmp_path / "c")  # type: ignore[arg-type]


def test_load_templates_reports_missing(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="not installed"):
        load_templates(tmp_path)
