"""The quality gate: every check for a batch of images, from one CLIP image forward pass plus pixel heuristics.

Checks (reason codes; thresholds in `[quality]`, per category overridable):
  low_clip_score   image-prompt cosine < clip_threshold                 (global mismatch: not repairable)
  low_quality      mean CLIP-IQA positive probability < iqa_threshold   (repairable)
  unsafe_content   max cosine to an unsafe concept >= unsafe_threshold  (never approved, never repaired)
  blank            near-uniform image                                   (not repairable: nothing to fix)
  overexposed / underexposed   too many clipped pixels                  (repairable)
  blurry           variance of the Laplacian < blur_laplacian_var       (repairable)
  oversaturated    mean HSV saturation > saturation_mean                (not repairable: a global colour shift)
An image is approved when no check fails. The scores live in quality/pixels.py and quality/clip_scores.py; this
module applies the thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from factory.config import QualityConfig
from factory.quality import clip_scores
from factory.quality import pixels as pixel_checks
from factory.quality import reasons as codes
from factory.quality.clip_model import Clip


@dataclass
class Assessment:
    """All scores of one image and the checks it fails."""

    clip_score: float  # image-prompt cosine
    clip_score_100: float  # torchmetrics-style 100 * max(cos, 0)
    iqa_mean: float
    iqa: dict[str, float]  # per antonym pair: probability of the positive prompt
    unsafe_score: float  # max cosine to an unsafe concept
    pixels: dict[str, float]  # pixel_std, overexposed_frac, underexposed_frac, laplacian_var, saturation_mean
    reasons: list[str] = field(default_factory=list)
    embedding: list[float] | None = None  # the L2-normalised CLIP image features (near-duplicate search at finalize)

    def badness(self) -> tuple[int, float]:
        """Lower is better: fewer failing checks, then higher alignment (to keep the better of two images)."""
        return len(self.reasons), -self.clip_score

    def columns(self) -> dict[str, Any]:
        return {
            "clip_score": self.clip_score,
            "clip_score_100": self.clip_score_100,
            "iqa_mean": self.iqa_mean,
            "iqa": self.iqa,
            "unsafe_score": self.unsafe_score,
            **self.pixels,
            "reasons": self.reasons,
            "clip_embedding": self.embedding,
        }


def failing_checks(scores: dict[str, Any], q: QualityConfig) -> list[str]:
    """Reason codes of the checks that `scores` (pixel metrics + clip_score, iqa_mean, unsafe_score) fail under
    `q`. Used on fresh images and on a cached image's stored scores alike."""
    found = pixel_checks.pixel_reasons(scores, pixel_checks.PixelThresholds.of(q)) + clip_scores.clip_reasons(
        scores["clip_score"], scores["iqa_mean"], scores["unsafe_score"], clip_scores.ClipThresholds.of(q)
    )
    return codes.sort_reasons(found)


class PassingGate:
    """`model.pipeline = "null"` (no model, no CLIP): every image passes, unscored. For orchestration benchmarks."""

    def assess(
        self, images: list[Any], prompts: list[str], categories: list[str], pixels: Any = None
    ) -> list[Assessment]:
        return [Assessment(None, None, None, None, None, {}) for _ in images]  # type: ignore[arg-type]


class Gate:
    """Per worker: holds the CLIP model and a cache of constant text features (IQA pairs, unsafe concepts)."""

    def __init__(self, clip: Clip, thresholds: dict[str, QualityConfig], per_image: bool):
        self.clip = clip
        self.texts = clip_scores.TextFeatureCache(clip)
        self.per_image = per_image  # batch-invariant mode: one CLIP forward per image (see worker.py)
        self.thresholds = thresholds  # per category, built once at plan time (factory.job.night_plan)

    def config(self, category: str) -> QualityConfig:
        return self.thresholds[category]

    def assess(
        self, images: list[Any], prompts: list[str], categories: list[str], pixels: Any = None
    ) -> list[Assessment]:
        """`pixels`: the same images as one (N, H, W, 3) uint8 tensor where they are (the worker's device tensor);
        without it the images are scored from the PIL images (one host tensor per size)."""
        if self.per_image and len(images) > 1:
            one = (lambda i: None) if pixels is None else (lambda i: pixels[i : i + 1])
            return [
                a
                for i in range(len(images))
                for a in self.assess(images[i : i + 1], prompts[i : i + 1], categories[i : i + 1], one(i))
            ]
        feats = clip_scores.encode_images(self.clip, images, pixels)  # one image forward for every CLIP check
        aligned = clip_scores.alignment(feats, clip_scores.encode_texts(self.clip, prompts))
        all_metrics = pixel_checks.pixel_metrics_batch(images, pixels)  # batched torch, equal to pixel_metrics
        out = []
        for i, category in enumerate(categories):
            q = self.config(category)
            pairs = [tuple(p) for p in q.iqa_pairs]
            iqa = clip_scores.iqa_scores(feats[i : i + 1], self.texts.pairs(pairs), clip_scores.pair_slugs(pairs))[0]
            unsafe = clip_scores.safety_scores(feats[i : i + 1], self.texts.get(q.unsafe_concepts))[0]
            metrics = all_metrics[i]
            iqa_mean = iqa.pop("iqa_mean")
            reasons = failing_checks(
                {**metrics, "clip_score": aligned[i], "iqa_mean": iqa_mean, "unsafe_score": unsafe}, q
            )
            out.append(
                Assessment(
                    clip_score=aligned[i],
                    clip_score_100=clip_scores.clip_score_100(aligned[i]),
                    iqa_mean=iqa_mean,
                    iqa=iqa,
                    unsafe_score=unsafe,
                    pixels=metrics,
                    reasons=reasons,
                    embedding=feats[i].tolist(),
                )
            )
        return out
