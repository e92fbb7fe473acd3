"""Style LoRAs per batch: each adapter is loaded once per worker and stays loaded; batches switch the active set.

The LCM-LoRA (`model.lora`) is fused into the base weights by `models.load_pipeline` before anything here runs, so
it stays in effect under every adapter set (including none). Style adapters are peft layers on top:
`load_lora_weights(path, adapter_name=name)` the first time a batch needs one, then `set_adapters(names, weights)`
(or `disable_lora()` for a batch without adapters) whenever the next batch's set differs. Nothing is ever unloaded:
repeated load/unload grows host memory (diffusers #8532), and a loaded adapter costs only its LoRA matrices.

Numerics: a disabled peft layer returns its base layer's output unchanged, so images without adapters are
byte-identical to a worker that never loaded one; the LoRA matmuls are `F.linear` calls, so batch-invariant mode
(invariance.py) covers them and an adapter image does not depend on the batch size either.

Compiled UNets (`model.compile` on CUDA) switch by hotswap instead (`SLOT`, see `HotswapAdapters`): changing the
set of active peft adapters or their scales would retrace the compiled graph on every switch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from factory.config import AdapterConfig
from factory.errors import ModelError
from factory.inputs.planner import parse_adapter_entry

log = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what `save_lora_weights` writes in a directory


def load_adapter(pipe: Any, name: str, path: str) -> None:
    """`load_lora_weights` for a LoRA file or a directory holding `pytorch_lora_weights.safetensors`."""
    p = Path(path)
    try:
        if p.is_file():
            pipe.load_lora_weights(str(p.parent), weight_name=p.name, adapter_name=name)
        else:
            pipe.load_lora_weights(str(p), adapter_name=name)
    except Exception as exc:  # diffusers/peft raise many types; the operator needs the adapter and the cause
        raise ModelError(f"[lora.adapters.{name}] {path}: cannot load LoRA ({type(exc).__name__}: {exc})") from exc


class Adapters:
    """The active adapter set of one worker's pipeline; counts switches and the time they take."""

    def __init__(self, pipe: Any, configured: dict[str, AdapterConfig]):
        self.pipe, self.configured = pipe, configured
        self.loaded: set[str] = set()
        self.active: tuple[str, ...] = ()  # "name@weight" entries; () = no style adapter (the base + LCM model)
        self.switches = 0
        self.switch_s = 0.0  # set_adapters / disable_lora time
        self.load_s = 0.0  # first-use load_lora_weights time

    def activate(self, entries: tuple[str, ...]) -> None:
        """Make `entries` ("name@weight", a batch's `adapters`) the active set; a no-op when it already is."""
        if entries == self.active:
            return
        wanted = [parse_adapter_entry(e) for e in entries]
        for name, _ in wanted:
            if name not in self.loaded:
                t0 = time.perf_counter()
                load_adapter(self.pipe, name, self.configured[name].path)
                self.loaded.add(name)
                self.load_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        self._apply(wanted)
        self.switch_s += time.perf_counter() - t0
        self.switches += 1
        self.active = entries

    def _apply(self, wanted: list[tuple[str, float]]) -> None:
        if not wanted:
            self.pipe.disable_lora()
            return
        self.pipe.enable_lora()
        self.pipe.set_adapters([n for n, _ in wanted], [w for _, w in wanted])

    def stats(self) -> dict[str, float]:
        return {"adapter_switches": self.switches, "adapter_switch_s": self.switch_s, "adapter_load_s": self.load_s}
