"""Defect localisation: which region to repair (`tile_quality_map` / `worst_region`), and its feathered inpainting
mask (`build_mask`, `defect_mask`) for `factory.quality.repair`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from factory.quality.pixels import laplacian, to_gray
from factory.quality.reasons import BLURRY, LOW_QUALITY, OVEREXPOSED, REPAIRABLE, UNDEREXPOSED


def _tile_sums(values: np.ndarray, tile: int) -> np.ndarray:
    """Sum of `values` over tile x tile cells (edge tiles may be smaller), without Python loops."""
    rows = np.add.reduceat(values, np.arange(0, values.shape[0], tile), axis=0)
    return np.add.reduceat(rows, np.arange(0, values.shape[1], tile), axis=1)


def tile_quality_map(
    image: Image.Image,
    tile: int = 64,
    blur_weight: float = 1.0,
    exposure_weight: float = 1.0,
    sharp_ratio: float = 1.0,
    texture_floor: float = 2.0,
) -> np.ndarray:
    """Per-tile badness (rows, cols), higher = worse, in 0..blur_weight+exposure_weight.

    blur term      1 - min(r / sharp_ratio, 1) with r = mean(Laplacian^2) / mean(|gradient|^2) over the tile. The
                   ratio is contrast-invariant and falls like 1/sigma^2 with blur (a crisp step edge gives ~4, a
                   Gaussian blur of radius 3 ~0.1), so a low-contrast sharp tile is not mistaken for a blurred one.
                   Textureless tiles (gradient RMS below `texture_floor` gray levels, e.g. a plain studio
                   background) score 0: there is no detail to lose, and inpainting them would fix nothing.
    exposure term  the fraction of the tile's pixels clipped (luminance >= 250 or <= 5).
    Pass the weights from the image-level reasons (e.g. only `exposure_weight` for an overexposed image).
    """
    gray = to_gray(image)
    p = np.pad(gray, 1, mode="edge")
    gx = (p[1:-1, 2:] - p[1:-1, :-2]) / 2.0
    gy = (p[2:, 1:-1] - p[:-2, 1:-1]) / 2.0
    lap = laplacian(gray)
    count = _tile_sums(np.ones_like(gray), tile)
    grad_energy = _tile_sums(gx * gx + gy * gy, tile) / count
    lap_energy = _tile_sums(lap * lap, tile) / count
    clipped = _tile_sums(((gray >= 250) | (gray <= 5)).astype(np.float64), tile) / count

    textured = grad_energy >= texture_floor**2
    ratio = np.divide(lap_energy, grad_energy, out=np.zeros_like(lap_energy), where=textured)
    blur = np.where(textured, 1.0 - np.minimum(ratio / sharp_ratio, 1.0), 0.0)
    return blur_weight * blur + exposure_weight * clipped


def worst_region(
    image: Image.Image,
    tile: int = 64,
    top_k: int = 1,
    blur_weight: float = 1.0,
    exposure_weight: float = 1.0,
) -> tuple[int, int, int, int]:
    """Box (x0, y0, x1, y1), exclusive end, bounding the `top_k` worst tiles of `tile_quality_map`.

    Tiles with zero badness are never added to the worst one (an all-clean image gives its first tile). Ties go to
    the first tile in row-major order (a stable sort), so the box is deterministic.
    """
    badness = tile_quality_map(image, tile, blur_weight=blur_weight, exposure_weight=exposure_weight)
    order = np.argsort(-badness, axis=None, kind="stable")[: max(top_k, 1)]
    order = order[:1] if badness.flat[order[0]] <= 0 else order[badness.flat[order] > 0]
    rows, cols = np.unravel_index(order, badness.shape)
    w, h = image.size
    return (
        int(cols.min()) * tile,
        int(rows.min()) * tile,
        min((int(cols.max()) + 1) * tile, w),
        min((int(rows.max()) + 1) * tile, h),
    )


def build_mask(
    size: tuple[int, int],
    box: tuple[int, int, int, int],
    dilate: int = 4,
    blur: int = 4,
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Feathered inpainting mask ("L", 255 = repaint) for `box` (x0, y0, x1, y1) in an image of `size` (w, h).

    The box is dilated by `dilate` px (a rectangle dilated by a square structuring element is the grown rectangle,
    so no MaxFilter pass is needed), then feathered with GaussianBlur(`blur`) so the repaint blends in, and the box
    itself is kept at 255 (the detected defect is always fully repainted; the feather only extends outward over
    the dilation margin). Returns (mask, changed_box): changed_box = box grown by dilate + 3 * blur and clipped to
    the image; the mask is forced to 0 outside it, so every pixel outside changed_box stays byte-identical after
    compositing.
    """
    w, h = size
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"box {box} is empty or outside an image of size {size}")

    def grow(m: int) -> tuple[int, int, int, int]:
        return max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, w), min(y1 + m, h)

    hard = np.zeros((h, w), dtype=np.uint8)
    dx0, dy0, dx1, dy1 = grow(dilate)
    hard[dy0:dy1, dx0:dx1] = 255
    soft = np.array(Image.fromarray(hard).filter(ImageFilter.GaussianBlur(blur))) if blur > 0 else hard.copy()
    soft[y0:y1, x0:x1] = 255
    changed = grow(dilate + 3 * blur)
    outside = np.ones((h, w), dtype=bool)
    outside[changed[1] : changed[3], changed[0] : changed[2]] = False
    soft[outside] = 0
    return Image.fromarray(soft), changed


@dataclass(frozen=True)
class DefectMask:
    mask: Image.Image  # "L", 255 = repaint (feathered)
    box: tuple[int, int, int, int]  # the worst tile(s) found
    changed: tuple[int, int, int, int]  # pixels outside this box cannot change when repairing with `mask`


def defect_mask(
    image: Image.Image,
    reasons: Sequence[str],
    tile: int = 64,
    top_k: int = 1,
    dilate: int = 4,
    blur: int = 4,
) -> DefectMask:
    """Where to repair an image that failed with `reasons`: the worst tile(s) by the matching defect, as a mask.

    blurry -> the blur term only; over/underexposed -> the exposure term only; low_quality (CLIP-IQA says "bad",
    without saying where) -> both.
    """
    local = set(reasons) & REPAIRABLE
    blur_w = 1.0 if local & {BLURRY, LOW_QUALITY} or not local else 0.0
    exposure_w = 1.0 if local & {OVEREXPOSED, UNDEREXPOSED, LOW_QUALITY} or not local else 0.0
    box = worst_region(image, tile, top_k=top_k, blur_weight=blur_w, exposure_weight=exposure_w)
    mask, changed = build_mask(image.size, box, dilate=dilate, blur=blur)
    return DefectMask(mask, box, changed)
