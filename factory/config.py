"""Configuration: typed defaults, TOML loading, CLI overrides.

Resolution order (later wins): the defaults below → a TOML file (`factory.toml` at the repo root, or `--config`)
→ CLI flags. The resolved config is written to every run's run.json.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = REPO_ROOT / "factory.toml"


@dataclass
class Bucket:
    name: str  # referenced by templates' `bucket` hint
    width: int
    height: int
    steps: int  # LCM steps for this bucket (4-8 is the LCM sweet spot)


def _production_buckets() -> list[Bucket]:
    # Square buckets in ascending size; "poster" is the landscape bucket picked by keyword rules.
    return [
        Bucket("small", 256, 256, 4),
        Bucket("medium", 384, 384, 4),
        Bucket("large", 512, 512, 6),
        Bucket("poster", 768, 512, 8),
    ]


@dataclass
class PathsConfig:
    skus: str = "data/skus"  # a day's file is <skus>/<date>.parquet (or a directory <skus>/<date>/)
    output: str = "data/output"  # outputs land in <output>/<date>/
    templates: str = "templates"  # one <category>.toml per category


@dataclass
class ModelConfig:
    pipeline: str = "data/models/tiny-sd"  # local diffusers directory (SD1.5-family or SDXL)
    lora: str = ""  # optional LCM-LoRA (or brand LoRA) weights path; fused before use
    clip_model: str = "tiny-clip"  # open_clip model name (built-in like "ViT-B-32", or a config in clip_config_dir)
    clip_pretrained: str = "data/models/tiny-clip/open_clip_model.safetensors"  # local checkpoint path
    clip_config_dir: str = "data/models/tiny-clip"  # extra open_clip model configs ("" for built-ins only)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (fp16 on cuda, fp32 on cpu) | float32 | float16 | bfloat16
    determinism: str = "auto"  # auto (batch-invariant on cpu, fast on cuda) | batch-invariant | fast
    quantization: str = "auto"  # auto (cpu: none, cuda: fp8 on sm89+ else int8-weight) | none | int8-weight |
    #                             int8-dynamic | fp8 -- UNet Linear layers only, cross-attention q/k/v kept float
    compile: str = "none"  # none | regional (compile_repeated_blocks) | full: torch.compile on CUDA, warmed per bucket
    guidance_scale: float = 1.0  # LCM: 1.0 (no CFG); >1 enables CFG and the negative prompt for non-distilled UNets


@dataclass
class PlannerConfig:
    buckets: list[Bucket] = field(default_factory=_production_buckets)
    landscape_bucket: str = "poster"  # target of the landscape keywords
    landscape_keywords: list[str] = field(default_factory=lambda: ["poster", "banner", "海报", "横版"])
    upscale_keywords: list[str] = field(default_factory=lambda: ["detailed", "hd", "高清", "细节", "精修"])
    max_variants: int = 8  # a row asking for more variants is rejected (protects the nightly budget)
    seed_scope: str = "date"  # date: seed from (sku_id, date, variant), a fresh image daily | sku: (sku_id, variant)


# Defaults of the quality gate (factory/checks.py uses the same lists).
IQA_PAIRS = [
    ["a sharp photo", "a blurry photo"],
    ["a clean product photo", "a distorted, deformed product photo"],
    ["a photo with natural colors", "an oversaturated photo"],
    ["a well-exposed photo", "an overexposed or underexposed photo"],
]
UNSAFE_CONCEPTS = [
    "violent or gory content",
    "nudity",
    "sexually explicit content",
    "a weapon",
    "a competitor's logo",
    "hate symbols",
    "a cigarette or vaping product",
    "alcohol",
    "drugs or drug paraphernalia",
]


@dataclass
class QualityConfig:
    """Quality-gate thresholds. CLIP cosines are model-specific: calibrate them (`adfactory calibrate`)."""

    clip_threshold: float = 0.20  # image-prompt cosine below this -> low_clip_score
    iqa_threshold: float = 0.40  # mean CLIP-IQA positive probability below this -> low_quality
    unsafe_threshold: float = 0.27  # max cosine to an unsafe concept at/above this -> unsafe_content
    blank_std: float = 0.02  # grayscale std below this -> blank
    overexposed_frac: float = 0.90  # fraction of pixels >= 250 above this -> overexposed
    underexposed_frac: float = 0.90  # fraction of pixels <= 5 above this -> underexposed
    blur_laplacian_var: float = 100.0  # variance of the Laplacian below this -> blurry
    saturation_mean: float = 0.80  # mean HSV saturation above this -> oversaturated
    iqa_pairs: list[list[str]] = field(default_factory=lambda: [list(p) for p in IQA_PAIRS])  # [positive, negative]
    unsafe_concepts: list[str] = field(default_factory=lambda: list(UNSAFE_CONCEPTS))  # brand-safety concepts
    categories: dict[str, dict[str, Any]] = field(default_factory=dict)  # [quality.categories.<name>] overrides

    def for_category(self, category: str, template_overrides: dict[str, Any] | None = None) -> QualityConfig:
        """Effective thresholds: global, then the template's [quality] table, then [quality.categories.<name>]."""
        cfg = dataclasses.replace(self, categories={})
        if template_overrides:
            cfg = _merge(cfg, template_overrides, f"template {category!r} [quality]")
        if category in self.categories:
            cfg = _merge(cfg, self.categories[category], f"[quality.categories.{category}]")
        for pair in cfg.iqa_pairs:
            if len(pair) != 2 or not all(isinstance(x, str) and x for x in pair):
                raise ConfigError(f"{category}: each quality.iqa_pairs entry must be [positive, negative] prompts")
        return cfg


@dataclass
class RepairConfig:
    mode: str = "inpaint"  # inpaint | off: fix repairable defects locally, then re-score
    max_attempts: int = 1  # inpaint tries per image; the best of original and attempts is kept
    strength: float = 0.4  # denoising strength inside the mask (ADetailer's default)
    dilate: int = 4  # px the defect box grows before feathering
    blur: int = 4  # px Gaussian feather of the mask edge
    padding: int = 32  # px of context around the mask the inpaint pipeline sees (padding_mask_crop)
    tile: int = 0  # px tile of the defect map; 0 = a quarter of the shorter image side
    top_k: int = 1  # worst tiles repaired per attempt
    inpaint_unet: str = ""  # optional dedicated 9-channel inpainting UNet dir (e.g. SD1.5-inpainting)


@dataclass
class CacheConfig:
    enabled: bool = True  # reuse a previous day's approved image when its cache key is unchanged
    lookback_days: int = 14  # how many earlier completed dates under the output root are searched


@dataclass
class RunConfig:
    executor: str = "ray"  # ray | local
    workers: int = 2  # pipeline replicas (Ray actors); one GPU each when CUDA is present
    batch_size: int = 4  # images per pipeline call; batches never mix resolutions
    padding: str = "auto"  # partial batches: auto (count on cuda, none on cpu) | count | size | none
    ray_address: str = ""  # join this cluster; "" = $RAY_ADDRESS if set, else start a local one
    cpus_per_worker: int = 1  # CPUs reserved per actor (and its torch threads); leave some for the driver
    max_restarts: int = 2  # a crashed worker process is restarted and its batch retried this many times
    fault_injection: str = ""  # testing only: "die_once:<sku_id>", "raise:<sku_id>", "oom:<sku_id>"


@dataclass
class FactoryConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    repair: RepairConfig = field(default_factory=RepairConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        run, planner = self.run, self.planner
        if run.padding not in ("auto", "count", "size", "none"):
            raise ConfigError(f"run.padding must be auto, count, size or none, got {run.padding!r}")
        if run.executor not in ("ray", "local"):
            raise ConfigError(f"run.executor must be 'ray' or 'local', got {run.executor!r}")
        for name in ("workers", "batch_size", "cpus_per_worker"):
            if getattr(run, name) < 1:
                raise ConfigError(f"run.{name} must be at least 1, got {getattr(run, name)}")
        if not planner.buckets:
            raise ConfigError("planner.buckets must list at least one bucket")
        names = [b.name for b in planner.buckets]
        if len(set(names)) != len(names):
            raise ConfigError(f"planner.buckets has duplicate names: {names}")
        for b in planner.buckets:
            if b.width % 8 or b.height % 8 or b.width <= 0 or b.height <= 0:
                raise ConfigError(f"bucket {b.name!r}: width and height must be positive multiples of 8")
            if not 1 <= b.steps <= 50:
                raise ConfigError(f"bucket {b.name!r}: steps must be between 1 and 50, got {b.steps}")
        if planner.seed_scope not in ("date", "sku"):
            raise ConfigError(f"planner.seed_scope must be 'date' or 'sku', got {planner.seed_scope!r}")
        if self.repair.mode not in ("inpaint", "off"):
            raise ConfigError(f"repair.mode must be 'inpaint' or 'off', got {self.repair.mode!r}")
        if not 0 < self.repair.strength <= 1 or self.repair.max_attempts < 0:
            raise ConfigError("repair.strength must be in (0, 1] and repair.max_attempts >= 0")
        for category in self.quality.categories:
            self.quality.for_category(category)  # unknown keys or bad types fail at load time
        if self.cache.lookback_days < 0:
            raise ConfigError(f"cache.lookback_days must be >= 0, got {self.cache.lookback_days}")
        if planner.landscape_bucket not in names:
            raise ConfigError(f"planner.landscape_bucket {planner.landscape_bucket!r} is not a bucket name")
        if self.model.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"model.device must be auto, cpu or cuda, got {self.model.device!r}")
        if self.model.quantization not in ("auto", "none", "int8-weight", "int8-dynamic", "fp8"):
            raise ConfigError(
                "model.quantization must be auto, none, int8-weight, int8-dynamic or fp8, "
                f"got {self.model.quantization!r}"
            )
        if self.model.quantization == "int8-weight" and self.model.determinism == "batch-invariant":
            raise ConfigError(
                "model.quantization 'int8-weight' is not batch-invariant on CPU (measured): use int8-dynamic or none"
            )
        if self.model.compile not in ("none", "regional", "full"):
            raise ConfigError(f"model.compile must be none, regional or full, got {self.model.compile!r}")
        if self.model.determinism not in ("auto", "batch-invariant", "fast"):
            raise ConfigError(
                f"model.determinism must be auto, batch-invariant or fast, got {self.model.determinism!r}"
            )
        if self.model.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ConfigError(f"model.dtype must be auto, float32, float16 or bfloat16, got {self.model.dtype!r}")


def _merge(obj: Any, data: dict[str, Any], where: str) -> Any:
    """Return a copy of dataclass `obj` with `data` merged in; unknown keys are errors (typos must not pass)."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    updates: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(fields)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            updates[key] = _merge(current, value, f"{where} [{key}]")
        elif key == "buckets":
            try:
                updates[key] = [Bucket(**b) for b in value]
            except TypeError as exc:
                raise ConfigError(
                    f"{where}: each [[planner.buckets]] needs name, width, height, steps ({exc})"
                ) from None
        else:
            expected = type(current)
            if expected is dict and isinstance(value, dict):
                updates[key] = value
                continue
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"{where}: {key} must be {expected.__name__}, got {value!r}")
            updates[key] = value
    return dataclasses.replace(obj, **updates)


def load_config(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> FactoryConfig:
    """Build the resolved config: defaults, then the TOML file, then `overrides` ({"run": {"workers": 4}, ...}).

    `path=None` reads `factory.toml` at the repo root if present.
    """
    cfg = FactoryConfig()
    file = Path(path) if path else (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None)
    if file is not None:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{file}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: invalid TOML ({exc})") from None
        cfg = _merge(cfg, data, str(file))
    if overrides:
        cleaned = {sec: {k: v for k, v in vals.items() if v is not None} for sec, vals in overrides.items()}
        cfg = _merge(cfg, {k: v for k, v in cleaned.items() if v}, "command line")
    try:
        cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}" if file is not None else str(exc)) from None
    return cfg


def resolve_path(p: str) -> Path:
    """Relative paths in config are relative to the current directory (the repo root for Makefile targets)."""
    return Path(p).expanduser()
