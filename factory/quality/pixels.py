"""Pixel checks: cheap whole-image statistics (numpy only) and the reasons they fail: blank / over- / under-exposed /
blurry / oversaturated."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from factory.config import QualityConfig
from factory.quality.reasons import BLANK, BLURRY, OVEREXPOSED, OVERSATURATED, UNDEREXPOSED


def to_gray(image: Image.Image) -> np.ndarray:
    """Luma 0..255 as float64 (PIL's ITU-R 601 "L" conversion, the same one everywhere in this module)."""
    return np.asarray(image.convert("L"), dtype=np.float64)


def laplacian(gray: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian (OpenCV's `Laplacian(ksize=1)` kernel) with edge replication: same shape as `gray`."""
    p = np.pad(gray, 1, mode="edge")
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * gray


def pixel_metrics(image: Image.Image) -> dict[str, float]:
    """Cheap whole-image statistics (vectorised numpy; ~1 ms for 512x512).

    pixel_std         std of grayscale in 0..1 (near 0: a blank/uniform image)
    overexposed_frac  fraction of pixels with luminance >= 250/255
    underexposed_frac fraction of pixels with luminance <= 5/255
    laplacian_var     variance of the Laplacian of grayscale 0..255 (the classic focus measure; low = blurry)
    saturation_mean   mean HSV saturation in 0..1
    """
    gray = to_gray(image)
    sat = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.float64)[..., 1] / 255.0
    return {
        "pixel_std": float(gray.std() / 255.0),
        "overexposed_frac": float((gray >= 250).mean()),
        "underexposed_frac": float((gray <= 5).mean()),
        "laplacian_var": float(laplacian(gray)[1:-1, 1:-1].var()) if min(gray.shape) > 2 else 0.0,
        "saturation_mean": float(sat.mean()),
    }


@dataclass(frozen=True)
class PixelThresholds:
    """Image-level limits for `pixel_reasons` (from `[quality]`; defaults in config.QualityConfig / factory.toml).

    They belong in config, per category: the Laplacian variance is an absolute measure that scales with resolution
    and content (a small product on a plain studio background has little edge energy even when sharp), and white-
    or black-background categories legitimately have large clipped areas.
    """

    blank_std: float  # pixel_std below this (~5 gray levels): a uniform image, nothing else is checked
    overexposed_frac: float  # above this: clipped white (studio white backgrounds alone stay well below)
    underexposed_frac: float  # above this: crushed black (black-backdrop jewelry shots stay below)
    blur_laplacian_var: float  # below this: blurry (the usual variance-of-Laplacian rule of thumb)
    saturation_mean: float  # above this: oversaturated (vivid products on neutral backgrounds are ~0.2-0.6)

    @classmethod
    def of(cls, q: QualityConfig) -> PixelThresholds:
        return cls(q.blank_std, q.overexposed_frac, q.underexposed_frac, q.blur_laplacian_var, q.saturation_mean)


def pixel_reasons(metrics: dict[str, float], thresholds: PixelThresholds) -> list[str]:
    """Failing pixel checks, in `REASON_ORDER`. `blank` is exclusive: a uniform image also has zero edge energy and
    possibly clipped pixels, and reporting those too would make it look (locally) repairable."""
    t = thresholds
    if metrics["pixel_std"] < t.blank_std:
        return [BLANK]
    reasons = []
    if metrics["overexposed_frac"] > t.overexposed_frac:
        reasons.append(OVEREXPOSED)
    if metrics["underexposed_frac"] > t.underexposed_frac:
        reasons.append(UNDEREXPOSED)
    if metrics["laplacian_var"] < t.blur_laplacian_var:
        reasons.append(BLURRY)
    if metrics["saturation_mean"] > t.saturation_mean:
        reasons.append(OVERSATURATED)
    return reasons
