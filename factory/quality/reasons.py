"""Reason codes of the quality gate, the order they are reported in, and which ones inpainting can repair.

Local defects (a blurred or clipped region, a CLIP-IQA "distorted" verdict) may be fixed by masked inpainting;
global ones (blank, oversaturated palette, prompt mismatch, unsafe content) cannot, and go to review.
"""

from __future__ import annotations

from collections.abc import Sequence

BLANK = "blank"
OVEREXPOSED = "overexposed"
UNDEREXPOSED = "underexposed"
BLURRY = "blurry"
OVERSATURATED = "oversaturated"
LOW_CLIP_SCORE = "low_clip_score"
LOW_QUALITY = "low_quality"
UNSAFE = "unsafe_content"
NEAR_DUPLICATE = "near_duplicate"  # CLIP image cosine to an earlier SKU of the night's category (quality/duplicates)
REFERENCE_MATCH = "reference_match"  # CLIP image cosine to an image of quality.reference_dir

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
    NEAR_DUPLICATE,
    REFERENCE_MATCH,
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
#   near_duplicate / reference_match   decided at finalize over the whole night, after repair; a person decides
#                  whether a look-alike (of another SKU's image, or of a protected reference) may ship.


def sort_reasons(reasons: Sequence[str]) -> list[str]:
    """Deduplicated reasons in `REASON_ORDER` (unknown codes last, alphabetically)."""
    rank = {r: i for i, r in enumerate(REASON_ORDER)}
    return sorted(set(reasons), key=lambda r: (rank.get(r, len(rank)), r))


def is_repairable(reasons: Sequence[str]) -> bool:
    """True when there is something to fix and every reason is a local defect (any global one -> review)."""
    return bool(reasons) and all(r in REPAIRABLE for r in reasons)
