"""Pixel checks: cheap whole-image statistics and the reasons they fail: blank / over- / under-exposed / blurry /
oversaturated.

`pixel_metrics` (numpy, float64, one image) is the reference definition. `pixel_metrics_batch` is what the gate
runs: the same statistics for a whole batch as torch integer ops on a (N, H, W, 3) uint8 tensor (on whatever device
holds it: the worker passes its device tensor), with PIL's own integer luma and saturation formulas, so every count
and sum is exact and only the final division rounds: equal to the reference within 1e-12 relative
(tests/quality/test_pixels_torch.py), the same reasons, no per-image Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from factory.config import QualityConfig
from factory.quality.reasons import BLANK, BLURRY, OVEREXPOSED, OVERSATURATED, UNDEREXPOSED

if TYPE_CHECKING:  # torch is imported where it is used, so importing this module stays cheap
    import torch


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


def pixel_metrics_batch(images: Sequence[Image.Image], pixels: torch.Tensor | None = None) -> list[dict[str, float]]:
    """`pixel_metrics` of each image, one batched torch computation per image size (a batch holds one size, bar
    tasks resized down from a larger bucket). `pixels`: the same images as one (N, H, W, 3) uint8 tensor, where they
    already are (the worker's device tensor)."""
    import torch

    out: list[dict[str, float]] = [{} for _ in images]
    for idx, rgb in size_groups(images, pixels):
        gray = None
        if rgb.device.type == "cpu":  # PIL's SIMD "L" is ~30x cheaper than torch's int ops on a CPU; same bytes
            gray = torch.from_numpy(np.stack([np.asarray(images[i].convert("L")) for i in idx]))
        for i, m in zip(idx, rgb_metrics(rgb, gray)):
            out[i] = m
    return out


def size_groups(
    images: Sequence[Image.Image], pixels: torch.Tensor | None = None
) -> list[tuple[list[int], torch.Tensor]]:
    """The images as uint8 (n, H, W, 3) tensors, one per size, with the indices each holds: `pixels` itself when
    given (one size), else one host copy per size group of the PIL images."""
    import torch

    if pixels is not None:
        return [(list(range(len(images))), pixels)]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.size, []).append(i)
    return [
        (idx, torch.from_numpy(np.stack([np.asarray(images[i].convert("RGB")) for i in idx])))
        for idx in groups.values()
    ]


def rgb_metrics(rgb: torch.Tensor, gray: torch.Tensor | None = None) -> list[dict[str, float]]:
    """The `pixel_metrics` of a (N, H, W, 3) uint8 tensor (`gray`: its PIL "L" image, when already at hand):
    integer counts and sums computed where the tensor is, copied to the host once, then divided exactly (Python
    integers: one correctly rounded division each)."""
    import torch

    gray = luma(rgb) if gray is None else gray.to(torch.int32)
    r, g, b = rgb.unbind(-1)
    hi, lo = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    sums = [*_gray_sums(gray), _saturation_sums(hi, lo)]
    h, w = gray.shape[1:]
    edges = min(h, w) > 2
    if edges:
        lap = gray[:, :-2, 1:-1] + gray[:, 2:, 1:-1] + gray[:, 1:-1, :-2] + gray[:, 1:-1, 2:] - 4 * gray[:, 1:-1, 1:-1]
        sums += _sums(lap)
    rows = torch.stack([t.to(torch.int64) for t in sums], dim=1).tolist()  # one copy to the host per batch
    n, n_lap = h * w, (h - 2) * (w - 2)
    return [
        {
            "pixel_std": math.sqrt(_variance(g1, g2, n)) / 255.0,
            "overexposed_frac": over / n,
            "underexposed_frac": under / n,
            "laplacian_var": _variance(*lap_sums, n_lap) if edges else 0.0,
            "saturation_mean": sat / (n * 255),
        }
        for g1, g2, over, under, sat, *lap_sums in rows
    ]


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """PIL's "L" conversion of a (N, H, W, 3) uint8 tensor as int32, bit for bit (ImagingConvert's L24 fixed point:
    (19595 R + 38470 G + 7471 B + 0x8000) >> 16)."""
    import torch

    r, g, b = (c.to(torch.int32) for c in rgb.unbind(-1))
    return (r * 19595 + g * 38470 + b * 7471 + 32768) >> 16


_LEVELS: dict[str, torch.Tensor] = {}


def _gray_sums(gray: torch.Tensor) -> list[torch.Tensor]:
    """Per sample, from one 256-bin histogram of the luma (cheaper than four passes over the pixels): the sum, the
    sum of squares, the count >= 250 and the count <= 5."""
    import torch

    key = str(gray.device)
    if key not in _LEVELS:
        v = torch.arange(256, dtype=torch.int64)
        _LEVELS[key] = torch.stack([v, v * v, (v >= 250).to(torch.int64), (v <= 5).to(torch.int64)], 1).to(gray.device)
    n = gray.shape[0]
    flat = (gray.reshape(n, -1) + torch.arange(n, dtype=torch.int32, device=gray.device)[:, None] * 256).reshape(-1)
    hist = torch.bincount(flat, minlength=n * 256).reshape(n, 256)
    return list((hist @ _LEVELS[key]).unbind(1))


_SATURATION: dict[str, torch.Tensor] = {}


def _saturation_sums(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """Per sample, the sum of PIL's HSV saturation bytes: a histogram of (max, max - min) pairs dotted with PIL's
    value for each pair (rgb2hsv: (int)((float)(max - min) / (float)max * 255.0), 0 where max == min)."""
    import torch

    key = str(hi.device)
    if key not in _SATURATION:
        mx = torch.arange(256, dtype=torch.int64).repeat_interleave(256)
        diff = torch.arange(256, dtype=torch.int64).repeat(256)
        s = (diff.float() / mx.clamp(min=1).float()).double().mul(255.0).floor().to(torch.int64)
        _SATURATION[key] = torch.where((diff == 0) | (diff > mx), 0, s).to(hi.device)
    n = hi.shape[0]
    pairs = (hi.to(torch.int32) * 256 + (hi - lo).to(torch.int32)).reshape(n, -1)
    pairs = pairs + torch.arange(n, dtype=torch.int32, device=hi.device)[:, None] * 65536
    counts = torch.bincount(pairs.reshape(-1), minlength=n * 65536).reshape(n, 65536)
    return counts @ _SATURATION[key]


def _sums(v: torch.Tensor) -> list[torch.Tensor]:
    """Per sample: the sum and the sum of squares of an int32 tensor (N, H, W) (squares fit: |v| <= 1020), summed in
    int64."""
    import torch

    return [v.sum((1, 2), dtype=torch.int64), (v * v).sum((1, 2), dtype=torch.int64)]


def _variance(s1: int, s2: int, m: int) -> float:
    """Population variance from exact integer sums: (m*s2 - s1^2) / m^2, one rounding."""
    return (m * s2 - s1 * s1) / (m * m)


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
