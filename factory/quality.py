"""Quality gate (basic): open_clip image-prompt cosine similarity, computed for a whole batch in one forward pass.

Reason codes written to review.parquet:
  low_clip_score     the image-prompt cosine similarity is below `quality.clip_threshold`
  sibling_in_review  this variant passed, but another variant of the same SKU did not (a SKU has one outcome)
"""

from __future__ import annotations

from typing import Any

import torch

from factory.models import Clip

LOW_CLIP_SCORE = "low_clip_score"
SIBLING_IN_REVIEW = "sibling_in_review"


@torch.inference_mode()
def clip_scores(clip: Clip, images: list[Any], prompts: list[str]) -> list[float]:
    """Cosine similarity of each image with its own prompt (one image and one text forward for the batch)."""
    pixels = torch.stack([clip.preprocess(im) for im in images]).to(clip.device)
    tokens = clip.tokenizer(prompts).to(clip.device)
    image_features = torch.nn.functional.normalize(clip.model.encode_image(pixels).float(), dim=-1)
    text_features = torch.nn.functional.normalize(clip.model.encode_text(tokens).float(), dim=-1)
    return (image_features * text_features).sum(dim=-1).tolist()


def decide(score: float, threshold: float) -> list[str]:
    """The failing reasons of one image; empty means approved."""
    return [] if score >= threshold else [LOW_CLIP_SCORE]
