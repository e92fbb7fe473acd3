"""Adopting what an earlier attempt wrote: a rerun after an interrupted night re-scores the PNGs already in the store
for the same task instead of regenerating them.

A PNG is adopted only when it decodes completely, carries the planned cache key and its pixels still match their
label's hash (`factory.io.provenance.adoptable_image`); anything else is regenerated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from factory.generation.frames import Frames
from factory.inputs.bucketing import Batch, Task
from factory.io.layout import image_key
from factory.io.provenance import adoptable_image
from factory.io.storage import Store

log = logging.getLogger(__name__)


def adopt_or_generate(batch: Batch, store: Store, date: str, generate: Callable[[Batch], Frames]) -> tuple[Frames, int]:
    """The batch's images in task order and how many were adopted; the rest are generated in one call (per-sample
    seeds: the same images as in the whole batch). With nothing adopted the generated frames come back as they are
    (device tensor included); a mix is scored from the host images."""
    found = {i: _adopt(store, date, t) for i, t in enumerate(batch.tasks) if t.image_path in batch.adopt}
    found = {i: im for i, im in found.items() if im is not None}
    if not found:
        return generate(replace(batch, adopt=frozenset())), 0
    rest = tuple(t for i, t in enumerate(batch.tasks) if i not in found)
    made = iter(generate(replace(batch, tasks=rest, adopt=frozenset())).images if rest else [])
    return Frames([found[i] if i in found else next(made) for i in range(len(batch.tasks))]), len(found)


def _adopt(store: Store, date: str, task: Task) -> Any:
    try:
        data = store.get_bytes(image_key(date, task.image_path))
    except FileNotFoundError:
        return None
    image = adoptable_image(data, task)
    if image is None:
        log.info("not adopting %s (stale, altered or incomplete): regenerating it", task.image_path)
    return image
