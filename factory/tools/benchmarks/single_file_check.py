"""Full-size single-file checks with random weights: the shipped configs and the LDM renaming at real shapes.

    python -m factory.tools.benchmarks.single_file_check sd15 DIR   # ~7 GB RAM: a 2.1 GB fp16 file, loaded back
    python -m factory.tools.benchmarks.single_file_check sdxl       # ~6 GB RAM: SDXL's components one by one

`sd15`: a full-size random SD1.5 with an LCM UNet (`build_random_sd15`, fp16) is written as an original-layout
single file in DIR and loaded through `load_single_file` with the shipped `sd15` configs; every tensor must equal
the source. `sdxl`: each full-size SDXL component built from the shipped `sdxl` configs is renamed to the LDM layout
and converted back by the functions `load_single_file` calls (an SDXL file whole needs more memory than a 23 GB
shared machine has). Prints one line per component and the peak RSS; exits 1 if any tensor differs.
"""

from __future__ import annotations

import gc
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _equal(name: str, ref: dict[str, Any], got: Any) -> bool:
    import torch

    got = got.state_dict()
    ok = got.keys() == ref.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    print(f"{name:<16} {len(ref)} tensors, {'all equal' if ok else 'DIFFER'}", flush=True)
    return ok


def check_sd15(directory: Path) -> bool:
    import torch
    from safetensors.torch import save_file

    from factory.generation.single_file import inspect_checkpoint, load_single_file
    from factory.tools.builders.ldm_layout import to_ldm
    from factory.tools.builders.tiny_models import build_random_sd15

    pipe = build_random_sd15(torch.float16)
    ref = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()} for c in ("unet", "vae", "text_encoder")}
    sd = to_ldm(pipe)
    del pipe
    gc.collect()
    directory.mkdir(parents=True, exist_ok=True)
    f = directory / "random-sd15-lcm.safetensors"
    save_file(sd, str(f))
    print(f"file             {f}: {f.stat().st_size / 1e9:.2f} GB, {len(sd)} keys", flush=True)
    del sd
    print(f"detected         {inspect_checkpoint(f)}", flush=True)
    t0 = time.perf_counter()
    loaded = load_single_file(f, "auto", torch.float16)
    print(f"load_single_file {time.perf_counter() - t0:.1f} s with the shipped sd15 configs", flush=True)
    return all([_equal(c, r, getattr(loaded, c)) for c, r in ref.items()])


def check_sdxl() -> bool:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from factory.generation.single_file import SHIPPED_CONFIGS
    from factory.tools.builders.ldm_layout import clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm

    root, kw = SHIPPED_CONFIGS / "sdxl", {"local_files_only": True, "torch_dtype": torch.float16}
    torch.set_default_dtype(torch.float16)  # built in fp16: an fp32 SDXL UNet alone is 10 GB
    try:
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
    finally:
        torch.set_default_dtype(torch.float32)
    sd = clip_to_ldm(te.state_dict(), "conditioner.embedders.0.transformer.")
    sd |= open_clip_to_ldm(te2.state_dict(), "conditioner.embedders.1.model.") | vae_to_ldm(
        vae.state_dict(), vae.config
    )
    sd = {k: v.contiguous() for k, v in sd.items()}
    ok = [
        _equal("text_encoder", te.state_dict(), create_diffusers_clip_model_from_ldm(
            CLIPTextModel, sd, subfolder="text_encoder", config=str(root), **kw)),
        _equal("text_encoder_2", te2.state_dict(), create_diffusers_clip_model_from_ldm(
            CLIPTextModelWithProjection, sd, subfolder="text_encoder_2", config=str(root), **kw)),
        _equal("vae", vae.state_dict(), AutoencoderKL.from_single_file(sd, config=str(root), subfolder="vae", **kw)),
    ]  # fmt: skip
    del te, te2, vae, sd
    gc.collect()
    torch.set_default_dtype(torch.float16)
    try:
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
    finally:
        torch.set_default_dtype(torch.float32)
    sd = unet_to_ldm(unet.state_dict(), unet.config)
    print(f"unet LDM keys    {len(sd)}", flush=True)
    got = UNet2DConditionModel.from_single_file(sd, config=str(root), subfolder="unet", **kw)
    return all(ok) and _equal("unet", unet.state_dict(), got)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("sd15", "sdxl") or (argv[0] == "sd15" and len(argv) != 2):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    ok = check_sd15(Path(argv[1])) if argv[0] == "sd15" else check_sdxl()
    print(f"peak RSS         {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
