"""The tensor-cache data path: validation, exact crop-then-blur, seeding, the two loaders."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import gaussian_filter

from earlyad.train.data import (
    AugmentConfig,
    AugmentedVolumes,
    CachedVolumes,
    SampleParams,
    centre_offset,
    crop_and_blur,
    crop_and_blur_torch,
    epoch_order,
    kernel_radius,
    make_loader,
    read_index,
    sample_params,
    seeded_subset,
)


def _volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A float16 volume in [0, 1] with structure at every scale, so a blur error shows."""
    rng = np.random.default_rng(seed)
    v = rng.random(shape) + gaussian_filter(rng.random(shape), 3) * 4
    return ((v - v.min()) / (v.max() - v.min())).astype(np.float16)


def _write_index(root: Path, volumes: list[np.ndarray], splits: list[str] | None = None) -> Path:
    rows = []
    for k, v in enumerate(volumes):
        path = root / f"sub-{k:02d}_ses-M000.npy"
        np.save(path, v)
        label = k % 3
        rows.append(
            {
                "participant_id": f"sub-{k:02d}",
                "session_id": "ses-M000",
                "split": splits[k] if splits else "train",
                "diagnosis": ("CN", "MCI", "AD")[label],
                "label": label,
                "path": str(path),
                "shape": "x".join(map(str, v.shape)),
            }
        )
    index = root / "index.tsv"
    pd.DataFrame(rows).to_csv(index, sep="\t", index=False)
    return index


def _blur_whole_then_crop(
    v: np.ndarray, offset: tuple[int, int, int], sigma: float, crop: int, truncate: float
) -> np.ndarray:
    """The study's order of operations: blur the whole volume (scipy defaults), then crop."""
    whole = v.astype(np.float32)
    if sigma > 0:
        whole = gaussian_filter(whole, sigma, truncate=truncate)  # mode='reflect' by default
    x, y, z = offset
    return whole[x : x + crop, y : y + crop, z : z + crop]


# --------------------------------------------------------------------------- crop + blur


SMALL = (30, 33, 35)


@pytest.mark.parametrize("truncate", [3.0, 4.0])
@pytest.mark.parametrize("sigma", [0.0, 0.2, 0.7, 1.5])
@pytest.mark.parametrize(
    "offset",
    [
        (5, 6, 7),  # interior: the margin fits inside the volume
        (0, 0, 0),  # low border on every axis: the margin is clipped, reflect at the border
        (10, 13, 15),  # high border on every axis (30-20, 33-20, 35-20)
        (1, 12, 2),  # one voxel from the low border: part of the margin clipped
        (9, 0, 14),  # mixed
    ],
)
def test_blurring_the_crop_with_margin_equals_blurring_the_whole_volume(offset, sigma, truncate):
    v = _volume(SMALL)
    expected = _blur_whole_then_crop(v, offset, sigma, 20, truncate)
    got = crop_and_blur(v, SampleParams(offset, sigma), 20, truncate)
    assert got.dtype == np.float32 and got.shape == (20, 20, 20)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_equality_on_a_full_size_volume_at_the_border_and_inside():
    v = _volume((113, 139, 119), seed=1)
    for offset in [(0, 0, 0), (17, 43, 23), (3, 40, 1), (8, 21, 12)]:
        expected = _blur_whole_then_crop(v, offset, 1.5, 96, 4.0)
        got = crop_and_blur(v, SampleParams(offset, 1.5), 96)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_kernel_radius_follows_scipy_and_stays_within_three_sigma_margin():
    assert kernel_radius(0.0, 4.0) == 0
    assert kernel_radius(1.5, 4.0) == 6  # scipy: int(4 * 1.5 + 0.5)
    for sigma in np.linspace(0.01, 1.5, 50):
        assert kernel_radius(sigma, 3.0) <= int(np.ceil(3 * sigma))


def test_torch_blur_matches_scipy_for_a_mixed_batch_on_cpu():
    """The CUDA path's function, run on CPU tensors: same values as the scipy path."""
    vols = [_volume(SMALL, seed=s) for s in range(3)]
    params = [
        SampleParams((0, 0, 0), 1.5),
        SampleParams((10, 13, 15), 0.0),  # unblurred sample in a blurred batch
        SampleParams((5, 1, 14), 0.4),
        SampleParams((9, 0, 3), 1.1),
    ]
    rows = [0, 1, 2, 0]
    stacked = torch.from_numpy(np.stack(vols))
    out = crop_and_blur_torch(stacked, rows, params, 20, truncate=4.0)
    assert out.shape == (4, 1, 20, 20, 20) and out.dtype == torch.float32
    for b, (i, p) in enumerate(zip(rows, params, strict=True)):
        expected = _blur_whole_then_crop(vols[i], p.offset, p.sigma, 20, 4.0)
        np.testing.assert_allclose(out[b, 0].numpy(), expected, rtol=0, atol=1e-5)
    # an unblurred sample is the exact crop; a list of tensors works like the stack
    x, y, z = params[1].offset
    np.testing.assert_array_equal(
        out[1, 0].numpy(), vols[1][x : x + 20, y : y + 20, z : z + 20].astype(np.float32)
    )
    listed = crop_and_blur_torch([torch.from_numpy(v) for v in vols], rows, params, 20)
    torch.testing.assert_close(listed, out, rtol=0, atol=0)


def test_torch_blur_handles_volumes_of_different_shapes():
    vols = [_volume(SMALL), _volume((24, 40, 22), seed=2)]
    params = [SampleParams((10, 13, 15), 1.2), SampleParams((4, 20, 2), 1.2)]
    out = crop_and_blur_torch([torch.from_numpy(v) for v in vols], [0, 1], params, 20)
    for b in range(2):
        expected = _blur_whole_then_crop(vols[b], params[b].offset, 1.2, 20, 4.0)
        np.testing.assert_allclose(out[b, 0].numpy(), expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- randomness


def test_sample_params_are_a_function_of_seed_epoch_and_index():
    cfg = AugmentConfig(crop=96)
    shape = (113, 139, 119)
    a = sample_params(0, 3, 7, shape, cfg, train=True)
    assert a == sample_params(0, 3, 7, shape, cfg, train=True)
    others = {
        sample_params(s, e, i, shape, cfg, True) for s, e, i in [(1, 3, 7), (0, 4, 7), (0, 3, 8)]
    }
    assert a not in others
    draws = [sample_params(0, 1, i, shape, cfg, True) for i in range(2000)]
    for p in draws:
        assert all(0 <= o <= n - 96 for o, n in zip(p.offset, shape, strict=True))
        assert 0.0 <= p.sigma <= 1.5
    blurred = np.mean([p.sigma > 0 for p in draws])
    assert 0.45 < blurred < 0.55  # p = 0.5
    assert max(p.offset[1] for p in draws) == 139 - 96  # the whole range is reachable
    assert min(p.offset[1] for p in draws) == 0


def test_evaluation_is_the_centre_crop_without_blur():
    p = sample_params(0, 5, 3, (113, 139, 119), AugmentConfig(), train=False)
    assert p == SampleParams((8, 21, 11), 0.0)
    assert centre_offset((96, 97, 98), 96) == (0, 0, 1)


def test_epoch_order_and_subset():
    assert epoch_order(0, 1, 5, shuffle=False) == [0, 1, 2, 3, 4]
    a = epoch_order(0, 1, 50, shuffle=True)
    assert sorted(a) == list(range(50)) and a == epoch_order(0, 1, 50, True)
    assert a != epoch_order(0, 2, 50, True)
    sub = seeded_subset(0, 50, 10)
    assert len(sub) == 10 and sub == sorted(sub) and sub == seeded_subset(0, 50, 10)
    assert seeded_subset(0, 5, 0) == seeded_subset(0, 5, 9) == list(range(5))


# --------------------------------------------------------------------------- validation


def test_cached_volumes_load_validate_and_memory_map(tmp_path):
    index = _write_index(tmp_path, [_volume((24, 25, 26), s) for s in range(3)])
    vols = CachedVolumes(index, crop=20)
    assert len(vols) == 3 and vols.shapes[2] == (24, 25, 26)
    assert isinstance(vols[0], np.memmap) and vols[0].dtype == np.float16
    assert list(vols.labels) == [0, 1, 2]
    clone = pickle.loads(pickle.dumps(vols))  # what a spawned worker receives
    assert clone._arrays is None
    np.testing.assert_array_equal(clone[1], vols[1])
    sub = vols.subset([2, 0])
    assert list(sub.labels) == [2, 0] and sub.records.participant_id.tolist() == [
        "sub-02",
        "sub-00",
    ]


def _resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split()[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and first == "Rss:":
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_validation_does_not_leave_the_volumes_resident(tmp_path):
    """Validation reads every voxel; the pages must leave the resident set afterwards, or a
    2,000-scan cache shows up as gigabytes of MaxRSS in Slurm and the scaling table."""
    index = _write_index(tmp_path, [_volume((64, 64, 64), s) for s in range(2)])
    vols = CachedVolumes(index, crop=20)
    path = Path(vols.records.path[0])
    assert _resident_kb(path) < 64  # of a 512 kB volume, at most the header page stays
    np.testing.assert_array_equal(vols[0], np.load(path))  # and the data still reads right
    assert _resident_kb(path) >= 256


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_a_loader_process_does_not_keep_the_scans_it_read_resident(tmp_path):
    """Each worker reads every scan once an epoch; if their pages stayed, its RSS would grow
    to the whole cache, which Slurm and Snakemake's benchmarks add up over the workers."""
    index = _write_index(tmp_path, [_volume((64, 64, 64), s) for s in range(3)])  # 512 kB each
    vols = CachedVolumes(index, crop=60)
    data = AugmentedVolumes(vols, AugmentConfig(crop=60), seed=0, train=True)
    for i in range(3):
        x, _, _ = data[1, i]
        p = sample_params(0, 1, i, vols.shapes[i], AugmentConfig(crop=60), train=True)
        expected = crop_and_blur(np.load(vols.records.path[i]), p, 60)
        torch.testing.assert_close(x[0], torch.from_numpy(expected), rtol=0, atol=0)
    assert [_resident_kb(Path(p)) < 64 for p in vols.records.path] == [True] * 3


def test_relative_paths_are_resolved_against_the_working_directory(tmp_path, monkeypatch):
    index = _write_index(tmp_path, [_volume((24, 25, 26))])
    df = pd.read_csv(index, sep="\t")
    df["path"] = [Path(p).name for p in df["path"]]
    df.to_csv(index, sep="\t", index=False)
    monkeypatch.chdir(tmp_path)
    table = read_index("index.tsv")
    assert Path(table.path[0]).is_absolute() and Path(table.path[0]).exists()
    assert len(CachedVolumes(table, crop=20)) == 1


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("small", "smaller than the 20^3 crop along axis [1]"),
        ("nan", "NaN/inf"),
        ("inf", "NaN/inf"),
    ],
)
def test_a_bad_volume_is_refused_with_the_scan_named(tmp_path, problem, message):
    good = _volume((24, 25, 26))
    bad = _volume((24, 19, 26)) if problem == "small" else good.copy()
    if problem == "nan":
        bad[3, 4, 5] = np.nan
    if problem == "inf":
        bad[0, 0, 0] = np.inf
    index = _write_index(tmp_path, [good, bad])
    with pytest.raises(ValueError) as err:
        CachedVolumes(index, crop=20)
    text = str(err.value)
    assert "sub-01 ses-M000" in text and "sub-01_ses-M000.npy" in text and message in text


def test_a_missing_file_is_named(tmp_path):
    index = _write_index(tmp_path, [_volume((24, 25, 26)), _volume((24, 25, 26))])
    (tmp_path / "sub-01_ses-M000.npy").unlink()
    with pytest.raises(FileNotFoundError, match="sub-01 ses-M000 .*sub-01_ses-M000.npy"):
        CachedVolumes(index, crop=20)


def test_index_errors(tmp_path):
    index = _write_index(tmp_path, [_volume((24, 25, 26))])
    df = pd.read_csv(index, sep="\t")
    df.loc[0, "diagnosis"] = "AD"
    df.to_csv(index, sep="\t", index=False)
    with pytest.raises(ValueError, match="sub-00 ses-M000 has diagnosis 'AD' but label 0"):
        read_index(index)
    df.loc[0, "split"] = "holdout"
    df.to_csv(index, sep="\t", index=False)
    with pytest.raises(ValueError, match="unknown split"):
        read_index(index)


# --------------------------------------------------------------------------- loaders


@pytest.fixture
def small_split(tmp_path) -> CachedVolumes:
    vols = [_volume((24, 25, 26), s) for s in range(5)] + [_volume((22, 27, 21), 9)]
    return CachedVolumes(_write_index(tmp_path, vols), crop=16)


def _epoch(loader, epoch: int) -> list:
    loader.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize(
    ("batch_size", "workers"),
    [(4, 2), (1, 2), (1, 1)],  # batch 1: 6 batches an epoch go round the 5- and 3-slot rings
)
def test_batches_do_not_depend_on_the_number_of_workers(small_split, batch_size, workers):
    cfg = AugmentConfig(crop=16, blur_p=0.7)
    kw = dict(seed=3, train=True, batch_size=batch_size)
    serial = make_loader(small_split, cfg, num_workers=0, **kw)
    parallel = make_loader(small_split, cfg, num_workers=workers, **kw)
    for epoch in (1, 2):
        a, b = _epoch(serial, epoch), _epoch(parallel, epoch)  # every batch held at once
        assert len(a) == len(b) == math.ceil(6 / batch_size)
        for (xa, ya, ia), (xb, yb, ib) in zip(a, b, strict=True):
            assert torch.equal(ia, ib) and torch.equal(ya, yb) and torch.equal(xa, xb)
    assert not torch.equal(_epoch(serial, 1)[0][0], _epoch(serial, 2)[0][0])


def test_resident_loader_matches_the_cpu_loader(small_split):
    """The GPU data path, on CPU: same order, labels, crops and blurs as the worker path."""
    cfg = AugmentConfig(crop=16)
    for train in (True, False):
        kw = dict(seed=1, train=train, batch_size=4)
        cpu = make_loader(small_split, cfg, num_workers=0, **kw)
        resident = make_loader(small_split, cfg, resident=True, **kw)
        assert len(cpu) == len(resident) == 2
        for (xa, ya, ia), (xb, yb, ib) in zip(_epoch(cpu, 4), _epoch(resident, 4), strict=True):
            assert torch.equal(ia, ib) and torch.equal(ya, yb)
            torch.testing.assert_close(xa, xb, rtol=0, atol=1e-5)


def test_evaluation_loader_is_ordered_and_fixed(small_split):
    loader = make_loader(small_split, AugmentConfig(crop=16), seed=0, train=False, batch_size=4)
    a, b = _epoch(loader, 1), _epoch(loader, 2)
    assert torch.cat([i for _, _, i in a]).tolist() == list(range(6))
    assert all(torch.equal(x, y) for (x, _, _), (y, _, _) in zip(a, b, strict=True))
    x0 = a[0][0][0, 0].numpy()
    ox, oy, oz = centre_offset((24, 25, 26), 16)
    np.testing.assert_array_equal(x0, small_split[0][ox : ox + 16, oy : oy + 16, oz : oz + 16])
