"""The gate's repair retry, ADetailer-style: mask the worst region for the failing checks, inpaint it (same seed
lineage, LCM, moderate strength), re-score, keep the better image; up to `repair.max_attempts` times."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factory.config import RepairConfig
from factory.quality import defects, reasons
from factory.quality.gate import Assessment, Gate

REPAIR_MODES = ("inpaint", "off")
Box = tuple[int, int, int, int]


@dataclass
class RepairOutcome:
    image: Any  # PIL image: the repaired one, or the original when no attempt was better
    assessment: Assessment
    initial_reasons: list[str]
    repaired: bool = False
    attempts: int = 0
    repair_box: list[int] | None = None

    def columns(self) -> dict[str, Any]:
        return {
            "initial_reasons": self.initial_reasons,
            "repaired": self.repaired,
            "attempts": self.attempts,
            "repair_box": self.repair_box,
        }


class RepairRetry:
    """Per worker: the inpaint pipeline (sharing the generation weights) and the gate that re-scores."""

    def __init__(self, pipe: Any, gate: Gate, cfg: RepairConfig, guidance_scale: float, batch_invariant: bool):
        from factory.quality.repair import Repairer

        # from_pipe: the inpaint pipeline shares the generation weights (no second copy in memory).
        self.repairer = Repairer(pipe, cfg.inpaint_unet or None, batch_invariant)
        self.gate, self.cfg, self.guidance_scale = gate, cfg, guidance_scale

    @classmethod
    def build(
        cls, pipe: Any, gate: Gate, cfg: RepairConfig, guidance_scale: float, batch_invariant: bool
    ) -> RepairRetry | None:
        """None when repair is off (mode "off" or no attempts)."""
        if cfg.mode == "off" or cfg.max_attempts == 0:
            return None
        return cls(pipe, gate, cfg, guidance_scale, batch_invariant)

    def __call__(self, task: Any, image: Any, a: Assessment) -> RepairOutcome:
        out = RepairOutcome(image, a, initial_reasons=a.reasons)
        box: Box | None = None
        for attempt in range(self.cfg.max_attempts):
            if not out.assessment.reasons or not reasons.is_repairable(out.assessment.reasons):
                break
            candidate, changed = self._attempt(task, out.image, out.assessment, attempt)
            scored = self.gate.assess([candidate], [task.prompt], [task.category])[0]
            out.attempts = attempt + 1
            if scored.badness() < out.assessment.badness():
                out.image, out.assessment = candidate, scored
                box = _union(box, changed)
                out.repaired, out.repair_box = True, list(box)
        return out

    def _attempt(self, task: Any, image: Any, a: Assessment, attempt: int) -> tuple[Any, Box]:
        r = self.cfg
        tile = r.tile or max(8, min(image.size) // 4)
        defect = defects.defect_mask(image, a.reasons, tile=tile, top_k=r.top_k, dilate=r.dilate, blur=r.blur)
        candidate = self.repairer.repair(
            image,
            task.prompt,
            task.negative_prompt,
            task.seed,
            defect.mask,
            strength=r.strength,
            steps=task.steps,
            padding=r.padding,
            guidance_scale=self.guidance_scale,
            attempt=attempt,
        )
        return candidate, defect.changed


def no_repair(image: Any, a: Assessment) -> RepairOutcome:
    return RepairOutcome(image, a, initial_reasons=a.reasons)


def _union(a: Box | None, b: Box) -> Box:
    if a is None:
        return b
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])
