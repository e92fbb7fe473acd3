"""The baseline of `adfactory dev bench --e2e`: what a user writes first, run as its own process.

`python -m factory.tools.benchmarks.plain_loop TASKS.json OUT_DIR`: load the diffusers pipeline, then one pipeline
call per image (the same prompts, sizes, steps and seeds as the factory's night), each written as a PNG; nothing is
gated, repaired or recorded. It imports only torch and diffusers, so its wall time is a fair whole-process baseline.
TASKS.json: {"pipeline": DIR, "guidance_scale": G, "threads": N, "tasks": [{"name", "prompt", "negative_prompt",
"width", "height", "steps", "seed"}, ...]}
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    spec = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    import torch
    from diffusers import DiffusionPipeline, LCMScheduler

    torch.set_num_threads(spec["threads"])
    pipe = DiffusionPipeline.from_pretrained(spec["pipeline"], local_files_only=True)
    if not isinstance(pipe.scheduler, LCMScheduler):
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    t_loaded = time.perf_counter()
    for t in spec["tasks"]:
        with torch.inference_mode():
            image = pipe(
                prompt=t["prompt"],
                negative_prompt=t["negative_prompt"],
                width=t["width"],
                height=t["height"],
                num_inference_steps=t["steps"],
                guidance_scale=spec["guidance_scale"],
                generator=torch.Generator("cpu").manual_seed(t["seed"]),
            ).images[0]
        image.save(out / f"{t['name']}.png")
    done = time.perf_counter()
    print(json.dumps({"startup_s": t_loaded - t0, "loop_s": done - t_loaded, "images": len(spec["tasks"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
