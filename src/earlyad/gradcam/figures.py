"""Pictures of Grad-CAM maps: animated GIFs along the three planes, and PNG montages.

GIFs (REFERENCE.md, Grad-CAM): one per plane (axial, coronal, sagittal), one frame per
``stride``-th slice of the whole volume, the thresholded map blended over the scan in the
colour of the PREDICTED class (green CN, yellow MCI, red AD; the blend's opacity follows the
map's value), a legend of the three colours with the predicted one marked, the true class, and
the slice position (index and world coordinate in mm). Frames are composed with numpy and
drawn with Pillow: three planes of ~60 frames take well under a second, where one matplotlib
figure per frame would take tens of seconds per scan.

Orientation follows :mod:`earlyad.preprocess.montage`: the volume is put in RAS order by its
affine, slices are shown radiologically (the subject's right on the left), anterior or superior
up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from earlyad import CLASSES
from earlyad.preprocess.montage import _window, canonical

__all__ = ["CLASS_COLOURS", "PLANES", "crop_span", "gif_frames", "group_montage", "write_gif"]

#: Overlay colour of each predicted class (RGB 0-255).
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "CN": (0, 200, 0),
    "MCI": (255, 220, 0),
    "AD": (230, 0, 0),
}
#: Plane name -> RAS axis the frames step along.
PLANES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
_LINE = 13  # pixels per banner line
_BANNER = 4 * _LINE + 4  # four lines of text above each frame
_COLOURS = 64  # palette size of a frame: fewer grey levels compress ~2x better, look the same
# The banner's palette entries, after the image's: black, white, then the class colours (kept
# out of the quantization, where a few legend pixels would be merged into greys).
_BLACK, _WHITE = _COLOURS - 2 - len(CLASSES), _COLOURS - 1 - len(CLASSES)
_INK = {name: _COLOURS - len(CLASSES) + i for i, name in enumerate(CLASSES)}
# Opacity of the overlay: from _MIN_ALPHA (a voxel just above the threshold) to _MAX_ALPHA (1).
_MIN_ALPHA, _MAX_ALPHA = 0.45, 0.85


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """One display slice (row 0 at the TOP, as images are stored), radiological."""
    if axis == 2:  # axial: rows anterior->posterior, cols right->left
        plane = volume[:, :, index].T[::-1, ::-1]
    elif axis == 1:  # coronal: rows superior->inferior, cols right->left
        plane = volume[:, index, :].T[::-1, ::-1]
    else:  # sagittal: rows superior->inferior, cols posterior->anterior
        plane = volume[index, :, :].T[::-1, :]
    return np.ascontiguousarray(plane)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _legend(draw: ImageDraw.ImageDraw, y: int, predicted: str, font: object) -> None:
    """The three class colours on one banner line; the predicted one boxed in white."""
    draw.text((4, y), "predicted:", fill=_WHITE, font=font)
    x = 66
    for name in CLASSES:
        box = [x, y + 1, x + 9, y + 10]
        draw.rectangle(box, fill=_INK[name], outline=_WHITE if name == predicted else None)
        draw.text((x + 12, y), name, fill=_WHITE, font=font)
        x += 14 + 7 * len(name) + 8


def _framed(body: Image.Image) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """``body`` (RGB) quantized below the banner, in a palette image whose last entries are
    the banner's colours; and a drawing context on it."""
    n_image = _BLACK
    quantized = body.quantize(n_image, dither=Image.Dither.NONE)
    palette = (quantized.getpalette() or [])[: 3 * n_image]
    palette += [0] * (3 * n_image - len(palette)) + [0, 0, 0, 255, 255, 255]
    for name in CLASSES:
        palette += list(CLASS_COLOURS[name])
    frame = Image.new("P", (body.width, body.height + _BANNER), _BLACK)
    frame.putpalette(palette)
    frame.paste(quantized, (0, _BANNER))
    return frame, ImageDraw.Draw(frame)


def crop_span(
    box: Sequence[slice], shape: Sequence[int], affine: np.ndarray, axis: int
) -> tuple[int, int]:
    """The slice range (start, stop) of the crop ``box`` along RAS ``axis`` of the canonical
    volume (:func:`earlyad.preprocess.montage.canonical`), for :func:`gif_frames`' ``span``."""
    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=float))
    src = int(np.flatnonzero(ornt[:, 0] == axis)[0])
    start, stop = box[src].start or 0, box[src].stop or shape[src]
    if ornt[src, 1] > 0:
        return int(start), int(stop)
    return int(shape[src] - stop), int(shape[src] - start)


def gif_frames(
    scan: np.ndarray,
    overlay: np.ndarray,
    affine: np.ndarray,
    plane: str,
    predicted: str,
    title: str,
    stride: int = 2,
    scale: int = 2,
    span: tuple[int, int] | None = None,
) -> list[Image.Image]:
    """Frames of one plane: every ``stride``-th slice of ``span`` (start, stop) along the
    plane's RAS axis, by default the whole volume: ``len(range(start, stop, stride))`` frames.

    Args:
        scan: the normalized scan (any intensity range).
        overlay: the thresholded Grad-CAM map in [0, 1] on the scan's grid (0 = not shown).
        affine: the scan's voxel-to-world affine (for orientation and the mm coordinate).
        plane: ``axial``, ``coronal`` or ``sagittal``.
        predicted: the predicted class name (sets the overlay colour).
        title: up to two banner lines (scan id; classes), separated by a newline.
        scale: integer pixel magnification (nearest neighbour).
        span: slice range along the axis in RAS order (e.g. the network's crop, see
            :func:`crop_span`).
    """
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; choose one of {tuple(PLANES)}")
    if predicted not in CLASS_COLOURS:
        raise ValueError(f"unknown class {predicted!r}; expected one of {CLASSES}")
    if stride < 1 or scale < 1:
        raise ValueError("stride and scale must be >= 1")
    data, canon = canonical(np.asarray(scan, dtype=np.float32), affine)
    over = np.clip(canonical(np.asarray(overlay, dtype=np.float32), affine)[0], 0.0, 1.0)
    lo, hi = _window(data)
    grey = np.clip((data - lo) / (hi - lo), 0.0, 1.0)
    axis = PLANES[plane]
    n = data.shape[axis]
    start, stop = span if span is not None else (0, n)
    if not 0 <= start < stop <= n:
        raise ValueError(f"slice span {span} outside the {n} {plane} slices")
    colour = np.asarray(CLASS_COLOURS[predicted], dtype=np.float32) / 255.0
    font = _font()
    lines = title.split("\n")[:2]
    frames = []
    for index in range(start, stop, stride):
        g = _slice(grey, axis, index)[..., None]
        v = _slice(over, axis, index)[..., None]
        a = np.where(v > 0, _MIN_ALPHA + (_MAX_ALPHA - _MIN_ALPHA) * v, 0.0)
        rgb = (g * (1.0 - a) + colour * a) * 255.0
        img = Image.fromarray(rgb.astype(np.uint8), "RGB")
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
        frame, draw = _framed(img)
        for row, line in enumerate(lines):
            draw.text((4, 2 + row * _LINE), line, fill=_WHITE, font=font)
        _legend(draw, 2 + 2 * _LINE, predicted, font)
        mm = float(canon[axis, axis] * index + canon[axis, 3])
        position = f"{plane} {'xyz'[axis]} = {mm:+.1f} mm (slice {index + 1}/{n})"
        draw.text((4, 2 + 3 * _LINE), position, fill=_WHITE, font=font)
        frames.append(frame)
    return frames


def write_gif(frames: Sequence[Image.Image], path: Path, frame_ms: int = 80) -> Path:
    """Save ``frames`` as a looping GIF."""
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(
        path, save_all=True, append_images=list(frames[1:]), duration=frame_ms, loop=0,
        optimize=False,
    )  # fmt: skip
    return path


def group_montage(
    background: np.ndarray,
    maps: Mapping[str, np.ndarray],
    counts: Mapping[str, int],
    affine: np.ndarray,
    cut_mm: Sequence[float],
    path: Path,
    title: str,
) -> Path:
    """One row per group (axial, coronal, sagittal through ``cut_mm``): the group's mean map
    (shared colour scale [0, max over groups]) over ``background`` (e.g. the mean scan)."""
    data, canon = canonical(np.asarray(background, dtype=np.float32), affine)
    lo, hi = _window(data)
    ijk = np.linalg.solve(canon, np.append(np.asarray(cut_mm, dtype=float), 1.0))[:3]
    ijk = [int(np.clip(round(v), 0, n - 1)) for v, n in zip(ijk, data.shape, strict=True)]
    canon_maps = {k: canonical(np.asarray(v, np.float32), affine)[0] for k, v in maps.items()}
    top = max([float(v.max()) for v in canon_maps.values()] + [1e-12])
    rows = max(1, len(canon_maps))
    fig = Figure(figsize=(10, 3.2 * rows + 0.6), facecolor="black")
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(rows, 3))
    plane_of = (("axial", 2), ("coronal", 1), ("sagittal", 0))
    image = None
    for r, (name, vol) in enumerate(canon_maps.items()):
        for c, (plane, axis) in enumerate(plane_of):
            ax = axes[r, c]
            ax.imshow(_slice(data, axis, ijk[axis]), cmap="gray", vmin=lo, vmax=hi)
            over = np.ma.masked_less_equal(_slice(vol, axis, ijk[axis]), 0.0)
            image = ax.imshow(over, cmap="hot", vmin=0.0, vmax=top, alpha=0.7)
            ax.set_axis_off()
            if r == 0:
                mm = canon[axis, axis] * ijk[axis] + canon[axis, 3]
                ax.set_title(f"{plane} {'xyz'[axis]} = {mm:+.0f} mm", color="white")
        axes[r, 0].text(
            -0.05, 0.5, f"{name}\n(n = {counts.get(name, 0)})", color="white", rotation=90,
            ha="right", va="center", transform=axes[r, 0].transAxes,
        )  # fmt: skip
    if image is not None:
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6)
        bar.set_label("mean Grad-CAM (per-volume scaled)", color="white")
        bar.ax.tick_params(colors="white")
    fig.suptitle(title, color="white")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, facecolor="black")
    return path
