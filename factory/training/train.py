"""`adfactory train-lora`: the one typed entry point (`train(cfg, args)`) the CLI and the tests call.

Order: check the flags, check every image and caption (exit 2 naming the file, before any model loads), load the
base model from the config as a night does, train, then write the LoRA and `train.json` (both atomically, through
the output Store).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from dataclasses import asdict
from typing import Any

from factory.config import FactoryConfig, resolve_path
from factory.errors import ConfigError
from factory.io.storage import open_store
from factory.training.common import WEIGHTS_NAME, TrainArgs, load_base, lora_bytes, loss_summary
from factory.training.data import read_examples
from factory.training.lcm_distill import LOSS_TYPES, distill
from factory.training.lora import train_lora

METHODS = ("lora", "lcm-distill")


def validate_args(args: TrainArgs) -> None:
    """One sentence naming the flag for every bad value (ConfigError: exit 2)."""
    checks = [
        (args.method in METHODS, f"--method {args.method!r} must be one of {', '.join(METHODS)}"),
        (args.rank >= 1, f"--rank {args.rank} must be at least 1"),
        (args.steps >= 1, f"--steps {args.steps} must be at least 1"),
        (args.lr > 0, f"--lr {args.lr} must be positive"),
        (args.batch_size >= 1, f"--batch-size {args.batch_size} must be at least 1"),
        (args.resolution >= 8 and args.resolution % 8 == 0, f"--resolution {args.resolution}: a multiple of 8"),
        (args.loss_type in LOSS_TYPES, f"--loss-type {args.loss_type!r} must be one of {', '.join(LOSS_TYPES)}"),
        (0 <= args.w_min <= args.w_max, f"--w-min {args.w_min} / --w-max {args.w_max}: need 0 <= w-min <= w-max"),
        (args.huber_c > 0, f"--huber-c {args.huber_c} must be positive"),
        (not (args.text_encoder and args.method != "lora"), "--text-encoder applies to --method lora only"),
        (not args.output.is_file(), f"{args.output}: --output is a file, not a directory"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def train(cfg: FactoryConfig, args: TrainArgs) -> dict[str, Any]:
    """Train a LoRA on `args.images` against the config's base model; returns what train.json records."""
    validate_args(args)
    examples = read_examples(args.images, args.caption, args.resolution)
    started, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
    base = load_base(cfg)
    if args.method == "lora":
        losses = train_lora(base, args, examples, cfg.model.guidance_scale)
        weights = lora_bytes(base.pipe.unet, base.pipe.text_encoder if args.text_encoder else None)
    else:
        losses, student = distill(base, args, examples)
        weights = lora_bytes(student, convert=False)
    loss_start, loss_end = loss_summary(losses)
    summary = {
        "method": args.method,
        "steps": len(losses),
        "loss_start": loss_start,
        "loss_end": loss_end,
        "images": len(examples),
        "base_model": {
            "pipeline": str(resolve_path(cfg.model.pipeline)),
            "lora": str(resolve_path(cfg.model.lora)) if cfg.model.lora else None,  # fused before training
            "fingerprint": base.fingerprint,
            # LCM UNets: the guidance embedding trained under (that of model.guidance_scale, as a night passes it)
            "guidance_scale": cfg.model.guidance_scale if base.pipe.unet.config.time_cond_proj_dim else None,
        },
        "arguments": {k: str(v) if hasattr(v, "__fspath__") else v for k, v in asdict(args).items()},
        "weights": WEIGHTS_NAME,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "device": base.device,
        "started_at": started.isoformat(timespec="seconds"),
        "time_s": round(time.perf_counter() - t0, 3),
        "losses": [round(x, 6) for x in losses],
    }
    store = open_store(str(args.output), what="--output")  # atomic writes, files get the umask's mode
    store.put_bytes(WEIGHTS_NAME, weights)
    store.put_bytes("train.json", (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode())
    return summary
