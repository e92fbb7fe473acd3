"""CLIP scores sharing one image forward: `encode_images` (ONE `encode_image` call for the list) feeds `alignment`
(image-prompt cosine), `iqa_scores` (CLIP-IQA style antonym-prompt pairs) and `safety_scores` (max cosine to
unsafe/off-brand concepts). Constant texts (IQA pairs, safety concepts) are encoded once per worker by
`TextFeatureCache`."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from factory.config import QualityConfig
from factory.quality.reasons import LOW_CLIP_SCORE, LOW_QUALITY, UNSAFE

if TYPE_CHECKING:  # torch is imported where it is used, so importing this module stays cheap
    import torch


@dataclass(frozen=True)
class ClipThresholds:
    """Image-level limits on CLIP scores for `clip_reasons`. Cosines depend on the CLIP model: calibrate per model
    (and per category) in config (`[quality]`)."""

    clip_cos: float  # image-prompt cosine below this: low_clip_score (as quality.clip_threshold)
    iqa_mean: float  # mean positive-prompt probability over the IQA pairs below this: low_quality
    unsafe_cos: float  # max cosine to an unsafe concept at/above this: unsafe_content (goes to review)

    @classmethod
    def of(cls, q: QualityConfig) -> ClipThresholds:
        return cls(q.clip_threshold, q.iqa_threshold, q.unsafe_threshold)


def encode_images(clip: Any, images: Sequence[Image.Image], pixels: torch.Tensor | None = None) -> torch.Tensor:
    """L2-normalised float32 image features (N, D) with ONE `clip.model.encode_image` call for the whole list.

    `clip` is a `quality.clip_model.Clip`; `pixels`, when given, the same images as one (N, H, W, 3) uint8 tensor
    (the worker's, on its device). All image scores (alignment, IQA, safety) reuse these features. Note that
    the result rows may differ in the last float bits with the batch size (fused attention kernels); a caller
    that needs batch-invariant scores calls this once per image.
    """
    import torch

    with torch.inference_mode():
        batch = clip_input(clip, images, pixels)
        return torch.nn.functional.normalize(clip.model.encode_image(batch).float(), dim=-1)


def clip_input(clip: Any, images: Sequence[Image.Image], pixels: torch.Tensor | None = None) -> torch.Tensor:
    """The (N, 3, h, w) CLIP input on `clip.device`: batched torch ops per image size (`clip.transform`), or
    open_clip's PIL transform image by image (quality.preprocess = "pil")."""
    import torch

    if clip.transform is None:
        return torch.stack([clip.preprocess(im) for im in images]).to(clip.device)
    from factory.quality.clip_preprocess import preprocess_pixels
    from factory.quality.pixels import size_groups

    groups = [(idx, preprocess_pixels(rgb.to(clip.device), clip.transform)) for idx, rgb in size_groups(images, pixels)]
    if len(groups) == 1:
        return groups[0][1]
    out = torch.empty((len(images), *groups[0][1].shape[1:]), device=clip.device)
    for idx, x in groups:
        out[torch.tensor(idx, device=clip.device)] = x
    return out


def encode_texts(clip: Any, texts: Sequence[str]) -> torch.Tensor:
    """L2-normalised float32 text features (N, D), one `encode_text` call."""
    import torch

    with torch.inference_mode():
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
        import torch

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
    import torch

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
    thresholds: ClipThresholds,
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
