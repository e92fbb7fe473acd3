"""The gate's repair retry, ADetailer-style: mask the worst region for the failing checks, inpaint it (same seed
lineage, LCM, moderate strength), re-score, keep the better image; up to `repair.max_attempts` times."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from factory.config import RepairConfig
from factory.quality import defects, reasons
from factory.quality.gate import Assessment, Gate

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

    def __init__(
        self,
        pipe: Any,
        gate: Gate,
        cfg: RepairConfig,
        guidance_scale: float,
        batch_invariant: bool,
        repairer: Any = None,
    ):
        """`repairer`: what inpaints (`repair_batch`); default a `Repairer` over `pipe`'s modules (the simulated
        device of the benchmarks passes its own)."""
        if repairer is None:
            from factory.quality.repair import Repairer

            # from_pipe: the inpaint pipeline shares the generation weights (no second copy in memory).
            repairer = Repairer(pipe, cfg.inpaint_unet or None, batch_invariant)
        self.repairer = repairer
        self.gate, self.cfg, self.guidance_scale = gate, cfg, guidance_scale

    @classmethod
    def build(
        cls,
        pipe: Any,
        gate: Gate,
        cfg: RepairConfig,
        guidance_scale: float,
        batch_invariant: bool,
        repairer: Any = None,
    ) -> RepairRetry | None:
        """None when repair is off (mode "off" or no attempts)."""
        if cfg.mode == "off" or cfg.max_attempts == 0:
            return None
        return cls(pipe, gate, cfg, guidance_scale, batch_invariant, repairer)

    def run(
        self,
        tasks: list[Any],
        images: list[Any],
        assessments: list[Assessment],
        device: Callable[[], AbstractContextManager] = contextlib.nullcontext,
        host: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    ) -> list[RepairOutcome]:
        """Repair a batch's repairable images: per attempt, one inpaint call per (size, steps) group and one
        re-scoring pass over every candidate. An image's result does not depend on the others in the batch.
        `device` / `host`: entered around each attempt's inpaint calls / its re-scoring (a worker's stage locks,
        when the caller holds neither; the masks are computed under neither)."""
        outs = [RepairOutcome(im, a, initial_reasons=a.reasons) for im, a in zip(images, assessments)]
        boxes: list[Box | None] = [None] * len(outs)
        for attempt in range(self.cfg.max_attempts):
            todo = [
                i for i, o in enumerate(outs) if o.assessment.reasons and reasons.is_repairable(o.assessment.reasons)
            ]
            if not todo:
                break
            candidates = self._attempt({i: (tasks[i], outs[i]) for i in todo}, attempt, device)
            with host():
                scored = self.gate.assess(
                    [candidates[i][0] for i in todo], [tasks[i].prompt for i in todo], [tasks[i].category for i in todo]
                )
            for i, a in zip(todo, scored):
                out, (candidate, changed) = outs[i], candidates[i]
                out.attempts = attempt + 1
                if a.badness() < out.assessment.badness():
                    out.image, out.assessment = candidate, a
                    boxes[i] = _union(boxes[i], changed)
                    out.repaired, out.repair_box = True, list(boxes[i])
        return outs

    def _masks(
        self, todo: dict[int, tuple[Any, RepairOutcome]]
    ) -> tuple[dict[int, defects.DefectMask], dict[tuple[tuple[int, int], tuple[int, int], int], list[int]]]:
        """Per index of `todo`: its defect mask (host work, no model), and the indices grouped by (image size,
        inpaint size, steps), one inpaint call each, in index order."""
        from factory.quality.repair import inpaint_size

        r = self.cfg
        masks: dict[int, defects.DefectMask] = {}
        groups: dict[tuple[tuple[int, int], tuple[int, int], int], list[int]] = {}
        for i, (task, out) in todo.items():
            image = out.image
            tile = r.tile or max(8, min(image.size) // 4)
            masks[i] = defects.defect_mask(
                image, out.assessment.reasons, tile=tile, top_k=r.top_k, dilate=r.dilate, blur=r.blur
            )
            work = inpaint_size(image.size, (task.render_width, task.render_height))  # a placement: its trained size
            groups.setdefault((image.size, work, task.steps), []).append(i)
        return masks, groups

    def _attempt(
        self,
        todo: dict[int, tuple[Any, RepairOutcome]],
        attempt: int,
        device: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    ) -> dict[int, tuple[Any, Box]]:
        """A candidate (image, changed box) per index of `todo`: masks per image, then (inside `device`) one
        inpaint call per (size, steps) group, in index order."""
        from factory.quality.repair import RepairItem

        r = self.cfg
        masks, groups = self._masks(todo)
        result: dict[int, tuple[Any, Box]] = {}
        with device():
            for (_, work, steps), idx in groups.items():
                items = [
                    RepairItem(
                        todo[i][1].image,
                        masks[i].mask,
                        todo[i][0].prompt,
                        todo[i][0].negative_prompt,
                        todo[i][0].seed,
                        attempt,
                    )
                    for i in idx
                ]
                painted = self.repairer.repair_batch(items, r.strength, steps, r.padding, self.guidance_scale, work)
                result.update({i: (im, masks[i].changed) for i, im in zip(idx, painted)})
        return result


def no_repair(image: Any, a: Assessment) -> RepairOutcome:
    return RepairOutcome(image, a, initial_reasons=a.reasons)


def _union(a: Box | None, b: Box) -> Box:
    if a is None:
        return b
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])
