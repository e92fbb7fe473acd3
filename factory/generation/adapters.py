"""Style LoRAs per batch: each adapter is loaded once per worker and stays loaded; batches switch the active set.

The LCM-LoRA (`model.lora`) is fused into the base weights by `models.load_pipeline` before anything here runs, so
it stays in effect under every adapter set (including none). Style adapters are peft layers on top:
`load_lora_weights(path, adapter_name=name)` the first time a batch needs one, then `set_adapters(names, weights)`
(or `disable_lora()` for a batch without adapters) whenever the next batch's set differs. Nothing is ever unloaded:
repeated load/unload grows host memory (diffusers #8532), and a loaded adapter costs only its LoRA matrices.

Numerics: a disabled peft layer returns its base layer's output unchanged, so images without adapters are
byte-identical to a worker that never loaded one; the LoRA matmuls are `F.linear` calls, so batch-invariant mode
(invariance.py) covers them and an adapter image does not depend on the batch size either.

Compiled UNets (`model.compile` on CUDA) switch by hotswap instead (`HotswapAdapters`): changing the set of active
peft adapters or their scales would retrace the compiled graph on every switch. There one fixed-shape adapter, `SLOT`,
holds the whole active set: every set is pre-combined into one LoRA (the matrices of its adapters concatenated along
the rank, each adapter's weight and alpha/r folded into its B), zero-padded to the rank of all configured adapters
together over the union of their target modules, and swapped in with `load_lora_weights(..., hotswap=True)` after
`enable_lora_hotswap`. Same shapes and scaling every time, so no recompilation. The empty set is all zeros, which adds
exactly 0.0: images without adapters keep the base model's bytes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from factory.config import AdapterConfig
from factory.errors import ModelError, ModelInputError
from factory.generation.lora_formats import load_lora
from factory.inputs.bucketing import parse_adapter_entry

log = logging.getLogger(__name__)

SLOT = "factory_adapter_slot"  # the one hotswapped adapter of a compiled UNet


def make_adapters(pipe: Any, configured: dict[str, AdapterConfig], hotswap: bool) -> Adapters:
    """The worker's adapter switcher: hotswap for a UNet that will be compiled (call before compiling)."""
    if hotswap and configured:
        return HotswapAdapters(pipe, configured)
    return Adapters(pipe, configured)


def load_adapter(pipe: Any, name: str, path: str) -> None:
    """Load a style LoRA (kohya / A1111, diffusers or peft format: `lora_formats.py`) as peft adapter `name`."""
    try:
        load_lora(pipe, Path(path), name)
    except ModelInputError as exc:
        raise ModelInputError(f"[lora.adapters.{name}] {exc}") from None
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


class HotswapAdapters(Adapters):
    """Switching for compiled UNets: one fixed-shape slot adapter, each set combined into it and hotswapped."""

    def __init__(self, pipe: Any, configured: dict[str, AdapterConfig]):
        super().__init__(pipe, configured)
        t0 = time.perf_counter()
        self.parts = _extract(pipe, configured)  # module -> adapter -> (A, B, unit scaling)
        self.rank = sum(_rank(p) for p in _by_adapter(self.parts).values())
        self.combined: dict[tuple[str, ...], dict[str, Any]] = {}  # cached per set: a switch is one copy
        pipe.enable_lora_hotswap(target_rank=self.rank)
        # not from the cache: the first load adopts these tensors as the slot's parameters, which hotswaps overwrite
        pipe.load_lora_weights(_combine(self.parts, {}, self.rank), adapter_name=SLOT)
        self.loaded = set(configured)
        self.load_s = time.perf_counter() - t0

    def activate(self, entries: tuple[str, ...]) -> None:
        if entries == self.active:
            return
        t0 = time.perf_counter()
        self.pipe.load_lora_weights(self._state_dict(entries), adapter_name=SLOT, hotswap=True)
        self.switch_s += time.perf_counter() - t0
        self.switches += 1
        self.active = entries

    def _state_dict(self, entries: tuple[str, ...]) -> dict[str, Any]:
        if entries not in self.combined:
            self.combined[entries] = _combine(self.parts, dict(map(parse_adapter_entry, entries)), self.rank)
        return dict(self.combined[entries])  # diffusers pops keys from the dict it is given


def _extract(pipe: Any, configured: dict[str, AdapterConfig]) -> dict[str, dict[str, tuple[Any, Any, float]]]:
    """Each adapter's LoRA matrices and alpha/r per UNet module: loaded through diffusers once (any format it
    reads), copied out, then deleted (once, at start-up: nothing is loaded or unloaded per batch)."""
    from peft.tuners.lora import LoraLayer

    for name, a in configured.items():
        load_adapter(pipe, name, a.path)
    parts: dict[str, dict[str, tuple[Any, Any, float]]] = {}
    for module_name, m in pipe.unet.named_modules():
        if not isinstance(m, LoraLayer):
            continue
        for name in configured:
            if name in m.lora_A:
                if m.use_dora.get(name):
                    raise ModelError(f"[lora.adapters.{name}]: DoRA adapters cannot be hotswapped (model.compile)")
                a, b = m.lora_A[name].weight.detach().clone(), m.lora_B[name].weight.detach().clone()
                parts.setdefault(module_name, {})[name] = (a, b, float(m.scaling[name]))
    if any(n in getattr(pipe.text_encoder, "peft_config", {}) for n in configured):
        raise ModelError("style adapters with text-encoder LoRA layers cannot be hotswapped (model.compile)")
    pipe.delete_adapters(list(configured))
    return parts


def _by_adapter(parts: dict[str, dict[str, tuple[Any, Any, float]]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for per_module in parts.values():
        for name, (a, _, _) in per_module.items():
            out.setdefault(name, []).append(a)
    return out


def _rank(a_matrices: list[Any]) -> int:
    return max(a.shape[0] for a in a_matrices)


def _combine(parts: dict[str, dict[str, tuple[Any, Any, float]]], weights: dict[str, float], rank: int) -> dict:
    """One LoRA equal to the weighted sum of the set's adapters: B_set @ A_set = sum_i w_i s_i B_i @ A_i."""
    import torch

    sd = {}
    for module_name, per_module in parts.items():
        a0, b0, _ = next(iter(per_module.values()))
        a = torch.zeros((rank, *a0.shape[1:]), dtype=a0.dtype, device=a0.device)
        b = torch.zeros((b0.shape[0], rank, *b0.shape[2:]), dtype=b0.dtype, device=b0.device)
        at = 0
        for name in sorted(weights):
            if name in per_module:
                ai, bi, scale = per_module[name]
                a[at : at + ai.shape[0]] = ai
                b[:, at : at + ai.shape[0]] = bi * (weights[name] * scale)
                at += ai.shape[0]
        sd[f"unet.{module_name}.lora_A.weight"] = a
        sd[f"unet.{module_name}.lora_B.weight"] = b
    return sd
