"""Ad placements: which trained size a placement generates at, and how the image becomes its exact pixels.

A placement (`[placements.sizes]`: feed 1080x1080, story 1080x1920, ...) is generated at the aspect bucket
(`[[planner.aspect_buckets]]`, the sizes the model was trained at) whose aspect ratio is nearest to the placement's
(distance |ln(a/b)|, ties to the first listed), with the step count of the bucket the complexity rules chose for the
SKU. Those (size, steps) pairs are *generation buckets*, named `<aspect bucket>-s<steps>` and batched like any
bucket, so a batch stays homogeneous in generated size and steps. After generation, before the quality gate, each
image is fitted to its placement's pixels (`fit_image`): the gate scores and repairs what is delivered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from factory.config import AspectBucket, Bucket, PlacementsConfig, PlannerConfig


@dataclass
class PlacementBucket(Bucket):
    """A generation bucket of placements: an aspect bucket's size with a complexity bucket's steps. Never the
    source or target of a padding = "size" promotion (its images have their own delivered sizes)."""


def generation_name(aspect: AspectBucket, steps: int) -> str:
    return f"{aspect.name}-s{steps}"


def nearest_aspect(width: int, height: int, aspects: list[AspectBucket]) -> AspectBucket:
    """The aspect bucket whose aspect ratio is nearest to width:height (log distance; ties: the first listed)."""
    target = math.log(width / height)
    return min(aspects, key=lambda a: abs(math.log(a.width / a.height) - target))


def generation_buckets(planner: PlannerConfig, placements: PlacementsConfig) -> list[Bucket]:
    """Every bucket a night may batch: the configured buckets (in config order), then one generation bucket per
    (aspect bucket a configured placement is nearest to, step count of a configured bucket). A pure function of the
    config, so plan order and batch ids never depend on which placements a day asks for."""
    out: list[Bucket] = list(planner.buckets)
    if not placements.sizes:
        return out
    used = {nearest_aspect(p.width, p.height, planner.aspect_buckets).name for p in placements.sizes.values()}
    steps = sorted({b.steps for b in planner.buckets})
    for a in planner.aspect_buckets:
        if a.name in used:
            out += [PlacementBucket(generation_name(a, s), a.width, a.height, s) for s in steps]
    return out


def fit_image(image: Any, width: int, height: int, mode: str) -> Any:
    """`image` (PIL) at exactly width x height: `crop` resizes it to cover the size (Lanczos) and cuts the centre;
    `stretch` resizes to the size, distorting the aspect ratio. An image of the right size is returned as it is."""
    if image.size == (width, height):
        return image
    if mode == "stretch":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    w, h = image.size
    scale = max(width / w, height / h)
    # the covering size, never below the target on either side (rounding could leave a 1 px gap)
    cover = (max(width, round(w * scale)), max(height, round(h * scale)))
    resized = image.resize(cover, Image.Resampling.LANCZOS)
    left, top = (cover[0] - width) // 2, (cover[1] - height) // 2
    return resized.crop((left, top, left + width, top + height))
