"""Per-image quality checks: cheap pixel statistics, CLIP scores sharing one image forward, and defect localisation.

Three families of signals, all pure functions of an image (or of CLIP features), so the worker can compute them once
per batch and the thresholds can live in config, per category:

  pixel      `pixel_metrics` + `pixel_reasons`: blank / over- / under-exposed / blurry / oversaturated, numpy only.
  CLIP       `encode_images` (ONE `encode_image` call for the list) feeds `alignment` (image-prompt cosine),
             `iqa_scores` (CLIP-IQA style antonym-prompt pairs) and `safety_scores` (max cosine to unsafe/off-brand
             concepts). Constant texts (IQA pairs, safety concepts) are encoded once per worker by `TextFeatureCache`.
  localise   `tile_quality_map` / `worst_region` find the worst tile(s); `build_mask` turns a box into the feathered
             inpainting mask used by `factory.quality.repair`.

Reason codes and what to do with them (`REPAIRABLE`): local defects (a blurred or clipped region, a CLIP-IQA
"distorted" verdict) may be fixed by masked inpainting; global ones (blank, oversaturated palette, prompt mismatch,
unsafe content) cannot, and go to review.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from factory.config import IQA_PAIRS, UNSAFE_CONCEPTS

# --------------------------------------------------------------------------------------------------------------
# Reason codes
# --------------------------------------------------------------------------------------------------------------

BLANK = "blank"
OVEREXPOSED = "overexposed"
UNDEREXPOSED = "underexposed"
BLURRY = "blurry"
OVERSATURATED = "oversaturated"
LOW_CLIP_SCORE = "low_clip_score"  # same code as factory.quality.gate.LOW_CLIP_SCORE (kept literal: no import cycle)
LOW_QUALITY = "low_quality"
UNSAFE = "unsafe_content"

# The order reasons are reported in, whatever order they were found in (manifests must be reproducible).
REASON_ORDER: tuple[str, ...] = (
    BLANK,
    OVEREXPOSED,
    UNDEREXPOSED,
    BLURRY,
    OVERSATURATED,
    LOW_CLIP_SCORE,
    LOW_QUALITY,
    UNSAFE,
)

# Local defects that masked inpainting of the worst region can fix.
REPAIRABLE: frozenset[str] = frozenset({BLURRY, OVEREXPOSED, UNDEREXPOSED, LOW_QUALITY})
# Not repairable, and why:
#   blank          nothing to repair around: the whole image failed; a fresh seed, not an inpaint, is the fix.
#   oversaturated  a global palette problem (mean saturation over the whole image); a masked inpaint of one region
#                  would leave the rest oversaturated and blend badly at the mask edge.
#   low_clip_score the image does not show what the prompt asks for (a global mismatch); local inpainting at low
#                  strength keeps the composition, so it cannot fix it -> review.
#   unsafe_content never auto-edited: brand-safety hits always need a human decision.
NOT_REPAIRABLE: frozenset[str] = frozenset({BLANK, OVERSATURATED, LOW_CLIP_SCORE, UNSAFE})


def sort_reasons(reasons: Sequence[str]) -> list[str]:
    """Deduplicated reasons in `REASON_ORDER` (unknown codes last, alphabetically)."""
    rank = {r: i for i, r in enumerate(REASON_ORDER)}
    return sorted(set(reasons), key=lambda r: (rank.get(r, len(rank)), r))


def is_repairable(reasons: Sequence[str]) -> bool:
    """True when there is something to fix and every reason is a local defect (any global one -> review)."""
    return bool(reasons) and all(r in REPAIRABLE for r in reasons)


# --------------------------------------------------------------------------------------------------------------
# Pixel metrics
# --------------------------------------------------------------------------------------------------------------


def _gray(image: Image.Image) -> np.ndarray:
    """Luma 0..255 as float64 (PIL's ITU-R 601 "L" conversion, the same one everywhere in this module)."""
    return np.asarray(image.convert("L"), dtype=np.float64)


def _laplacian(gray: np.ndarray) -> np.ndarray:
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
    gray = _gray(image)
    sat = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.float64)[..., 1] / 255.0
    return {
        "pixel_std": float(gray.std() / 255.0),
        "overexposed_frac": float((gray >= 250).mean()),
        "underexposed_frac": float((gray <= 5).mean()),
        "laplacian_var": float(_laplacian(gray)[1:-1, 1:-1].var()) if min(gray.shape) > 2 else 0.0,
        "saturation_mean": float(sat.mean()),
    }


@dataclass(frozen=True)
class PixelThresholds:
    """Image-level limits for `pixel_reasons`. Defaults were chosen for product photos at 256-768 px.

    They belong in config, per category: the Laplacian variance is an absolute measure that scales with resolution
    and content (a small product on a plain studio background has little edge energy even when sharp), and white-
    or black-background categories legitimately have large clipped areas.
    """

    blank_std: float = 0.02  # pixel_std below this (~5 gray levels): a uniform image, nothing else is checked
    overexposed_frac: float = 0.90  # above this: clipped white (studio white backgrounds alone stay well below)
    underexposed_frac: float = 0.90  # above this: crushed black (black-backdrop jewelry shots stay below)
    blur_laplacian_var: float = 100.0  # below this: blurry (the usual variance-of-Laplacian rule of thumb)
    saturation_mean: float = 0.80  # above this: oversaturated (vivid products on neutral backgrounds are ~0.2-0.6)


def pixel_reasons(metrics: dict[str, float], thresholds: PixelThresholds = PixelThresholds()) -> list[str]:
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


# --------------------------------------------------------------------------------------------------------------
# CLIP features and scores
# --------------------------------------------------------------------------------------------------------------

DEFAULT_IQA_PAIRS: list[tuple[str, str]] = [(p[0], p[1]) for p in IQA_PAIRS]  # (positive, negative)
DEFAULT_UNSAFE_CONCEPTS: list[str] = list(UNSAFE_CONCEPTS)


@dataclass(frozen=True)
class ClipThresholds:
    """Image-level limits on CLIP scores for `clip_reasons`. Cosines depend on the CLIP model: calibrate per model
    (and per category) in config; the defaults suit ViT-B-32/ViT-L-14 class models."""

    clip_cos: float = 0.20  # image-prompt cosine below this: low_clip_score (as quality.clip_threshold)
    iqa_mean: float = 0.40  # mean positive-prompt probability over the IQA pairs below this: low_quality
    unsafe_cos: float = 0.27  # max cosine to an unsafe concept at/above this: unsafe_content (goes to review)


@torch.inference_mode()
def encode_images(clip: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """L2-normalised float32 image features (N, D) with ONE `clip.model.encode_image` call for the whole list.

    `clip` is a `generation.models.Clip`. All image scores (alignment, IQA, safety) reuse these features. Note that
    the result rows may differ in the last float bits with the batch size (fused attention kernels); a caller
    that needs batch-invariant scores calls this once per image.
    """
    pixels = torch.stack([clip.preprocess(im) for im in images]).to(clip.device)
    return torch.nn.functional.normalize(clip.model.encode_image(pixels).float(), dim=-1)


@torch.inference_mode()
def encode_texts(clip: Any, texts: Sequence[str]) -> torch.Tensor:
    """L2-normalised float32 text features (N, D), one `encode_text` call."""
    tokens = clip.tokenizer(list(texts)).to(clip.device)
    return torch.nn.functional.normalize(clip.model.encode_text(tokens).float(), dim=-1)


class TextFeatureCache:
    """Text features by text, so constant texts (IQA pairs, safety concepts) are encoded once per worker.

    Misses of one `get` are encoded in a single call. Least-recently-used entries beyond `max_entries` are dropped,
    so passing per-SKU prompts through it cannot grow memory without bound.
    """

    def __init__(self, clip: Any, max_entries: int = 4096):
        self.clip = clip
        self.max_entries = max_entries
        self._features: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._features)

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        """Features (len(texts), D) in the order given."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._features))
        if missing:
            for text, feat in zip(missing, encode_texts(self.clip, missing)):
                self._features[text] = feat
        out = []
        for t in texts:
            self._features.move_to_end(t)
            out.append(self._features[t])
        while len(self._features) > self.max_entries:
            self._features.popitem(last=False)
        return torch.stack(out)

    def pairs(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """Features (P, 2, D) of (positive, negative) prompt pairs, the `pair_feats` of `iqa_scores`."""
        flat = self.get([t for pair in pairs for t in pair])
        return flat.reshape(len(pairs), 2, -1)


def alignment(image_feats: torch.Tensor, prompt_feats: torch.Tensor) -> list[float]:
    """Cosine similarity of row i of `image_feats` with row i of `prompt_feats` (both normalised)."""
    return (image_feats * prompt_feats).sum(dim=-1).tolist()


def clip_score_100(cos: float) -> float:
    """torchmetrics' CLIPScore scale: 100 * max(cosine, 0)."""
    return 100.0 * max(cos, 0.0)


_SLUG_STOPWORDS = frozenset({"a", "an", "the", "photo", "image", "picture", "with", "of", "product", "and", "or"})


def pair_slugs(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Short unique names from each pair's positive prompt: "a sharp photo" -> "sharp",
    "a well-exposed photo" -> "well_exposed". Used as `iqa_<slug>` score keys."""
    slugs: list[str] = []
    for i, (positive, _) in enumerate(pairs):
        words = [w for w in re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", positive.lower()) if w not in _SLUG_STOPWORDS]
        slug = words[0].replace("-", "_") if words else f"pair{i}"
        slugs.append(slug if slug not in slugs else f"{slug}_{i}")
    return slugs


def iqa_scores(
    image_feats: torch.Tensor,
    pair_feats: torch.Tensor,
    pair_names: Sequence[str],
    logit_scale: float = 100.0,
) -> list[dict[str, float]]:
    """CLIP-IQA style zero-shot quality (Wang et al. 2023): for each (positive, negative) pair, the softmax of the
    two similarities x `logit_scale`, reported as the positive probability in 0..1 (higher = better).

    image_feats (N, D) and pair_feats (P, 2, D) normalised (`TextFeatureCache.pairs`); pair_names (P) are slugs
    (`pair_slugs`). Returns per image {"iqa_<name>": p, ..., "iqa_mean": mean p}.
    """
    if pair_feats.shape[0] != len(pair_names):
        raise ValueError(f"{pair_feats.shape[0]} prompt pairs but {len(pair_names)} names")
    sims = torch.einsum("nd,pkd->npk", image_feats.float(), pair_feats.float())  # (N, P, 2)
    probs = torch.softmax(sims * logit_scale, dim=-1)[..., 0]  # (N, P)
    keys = [f"iqa_{name}" for name in pair_names]
    rows = []
    for p in probs.tolist():
        row = dict(zip(keys, p))
        row["iqa_mean"] = float(sum(p) / len(p)) if p else 1.0
        rows.append(row)
    return rows


def safety_scores(image_feats: torch.Tensor, concept_feats: torch.Tensor) -> list[float]:
    """Per image, the max cosine to any unsafe/off-brand concept text (higher = riskier)."""
    return (image_feats.float() @ concept_feats.float().T).max(dim=1).values.tolist()


def clip_reasons(
    clip_cos: float | None,
    iqa_mean: float | None,
    unsafe_cos: float | None,
    thresholds: ClipThresholds = ClipThresholds(),
) -> list[str]:
    """Failing CLIP checks in `REASON_ORDER`; a None score means the check was not run."""
    reasons = []
    if clip_cos is not None and clip_cos < thresholds.clip_cos:
        reasons.append(LOW_CLIP_SCORE)
    if iqa_mean is not None and iqa_mean < thresholds.iqa_mean:
        reasons.append(LOW_QUALITY)
    if unsafe_cos is not None and unsafe_cos >= thresholds.unsafe_cos:
        reasons.append(UNSAFE)
    return reasons


# --------------------------------------------------------------------------------------------------------------
# Localisation: which region to repair, and its mask
# --------------------------------------------------------------------------------------------------------------


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
    gray = _gray(image)
    p = np.pad(gray, 1, mode="edge")
    gx = (p[1:-1, 2:] - p[1:-1, :-2]) / 2.0
    gy = (p[2:, 1:-1] - p[:-2, 1:-1]) / 2.0
    lap = _laplacian(gray)
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
