"""Configuration: typed defaults, TOML loading, CLI overrides.

Resolution order (later wins): the defaults below → a TOML file (`factory.toml` at the repo root, or `--config`)
→ CLI flags. Relative paths in a file resolve against that file's directory, relative paths given as flags against
the working directory. Allowed values of each mode live in the leaf `factory.modes`, which the implementing modules
import too: config imports nothing above it. "auto" values are resolved once per run by
`factory.generation.runtime.resolve`. The config and the resolved runtime are written to every run's run.json.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.errors import ConfigError
from factory.io.paths import looks_like_uri
from factory.modes import (
    BATCH_SIZE_MODES,
    C2PA_ALGS,
    COMPILE_MODES,
    CORNERS,
    DETERMINISM_MODES,
    DEVICES,
    DTYPES,
    EXECUTORS,
    FAULT_KINDS,
    LINEAGE_TRANSPORTS,
    MIN_LABEL_SIZE,
    NULL_PIPELINE,
    PADDING_MODES,
    PLACEMENT_FITS,
    PREPROCESS_MODES,
    QUANT_MODES,
    REPAIR_MODES,
    SEED_SCOPES,
    SINGLE_FILE_FAMILIES,
    WATERMARK_STRENGTHS,
)

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
class AspectBucket:
    """A size the model was trained at (`[[planner.aspect_buckets]]`): placements generate at the nearest aspect."""

    name: str
    width: int
    height: int


def _sd15_aspect_buckets() -> list[AspectBucket]:
    # SD1.5 and its fine-tunes: 512 px square, and the 2:3 / 3:2 sizes they are commonly fine-tuned at.
    return [AspectBucket("square", 512, 512), AspectBucket("portrait", 512, 768), AspectBucket("landscape", 768, 512)]


@dataclass
class PlacementSize:
    """An ad placement's delivered pixels (`[placements.sizes]`)."""

    width: int
    height: int


def _ad_placements() -> dict[str, PlacementSize]:
    return {
        "feed": PlacementSize(1080, 1080),  # 1:1
        "portrait": PlacementSize(1080, 1350),  # 4:5
        "story": PlacementSize(1080, 1920),  # 9:16
        "link": PlacementSize(1200, 628),  # 1.91:1
    }


@dataclass
class PlacementsConfig:
    """Ad placements (factory/inputs/placements.py; docs/placements.md). A template's `placements` (or a SKU's
    `placements` column) names the ones to produce; none named: one image per variant at its bucket's size."""

    fit: str = "crop"  # crop (resize to cover + centre crop) | stretch (resize to the exact pixels)
    sizes: dict[str, PlacementSize] = field(default_factory=_ad_placements)  # name -> delivered pixels


PLACEMENT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")  # part of image file names
MAX_PLACEMENT_SIDE = 8192


@dataclass
class PathsConfig:
    skus: str = "data/skus"  # a day's file is <skus>/<date>.parquet (or a directory <skus>/<date>/)
    output: str = "data/output"  # outputs land in <output>/<date>/
    templates: str = "templates"  # one <category>.toml per category


@dataclass
class ModelConfig:
    pipeline: str = "data/models/tiny-sd"  # local diffusers directory or single-file .safetensors/.ckpt (SD1.5-family
    #                                       or SDXL); "null": no model
    single_file_config: str = "auto"  # a single-file pipeline's configs: auto (<stem>.config/ next to the file, else
    #                                   the shipped set of the family its keys show) | sd15 | sdxl | <config dir>
    lora: str = ""  # optional LCM-LoRA (or brand LoRA) weights path; fused before use
    clip_model: str = "tiny-clip"  # open_clip model name (built-in like "ViT-B-32", or a config in clip_config_dir)
    clip_pretrained: str = "data/models/tiny-clip/open_clip_model.safetensors"  # local checkpoint path
    clip_config_dir: str = "data/models/tiny-clip"  # extra open_clip model configs ("" for built-ins only)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (fp16 on cuda, fp32 on cpu) | float32 | float16 | bfloat16
    determinism: str = "auto"  # auto (batch-invariant on cpu, fast on cuda) | batch-invariant | fast
    quantization: str = "auto"  # auto (= none: measured slower on CPU and H200) | none | int8-weight |
    #                             int8-dynamic | fp8 -- UNet Linear layers only, cross-attention q/k/v kept float
    compile: str = "none"  # none | regional (compile_repeated_blocks) | full: torch.compile on CUDA, warmed per bucket
    guidance_scale: float = 1.0  # LCM: 1.0 (no CFG); >1 enables CFG and the negative prompt for non-distilled UNets


ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # provenance.watermark_secret_env
ADAPTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # peft adapter names; part of batch ids


@dataclass
class AdapterConfig:
    path: str  # a LoRA (kohya / A1111, diffusers or peft): a .safetensors file or a directory holding one
    weight: float = 1.0  # LoRA scale in set_adapters (1.0: as trained)
    trigger_words: list[str] = field(default_factory=list)  # put at the start of the prompt of every image using it


MAX_TRIGGER_WORD = 100  # characters; a trigger word is a token or short phrase, not a prompt


@dataclass
class LoraSection:
    """Style LoRAs applied per batch (factory/generation/adapters.py); `model.lora` (the LCM-LoRA) stays fused."""

    adapters: dict[str, AdapterConfig] = field(default_factory=dict)  # [lora.adapters.<name>]


@dataclass
class PlannerConfig:
    buckets: list[Bucket] = field(default_factory=_production_buckets)
    landscape_bucket: str = "poster"  # target of the landscape keywords
    landscape_keywords: list[str] = field(default_factory=lambda: ["poster", "banner", "海报", "横版"])
    upscale_keywords: list[str] = field(default_factory=lambda: ["detailed", "hd", "高清", "细节", "精修"])
    max_variants: int = 8  # a row asking for more variants is rejected (protects the nightly budget)
    seed_scope: str = "date"  # date: seed from (sku_id, date, variant), a fresh image daily | sku: (sku_id, variant)
    # the sizes the model was trained at: a placement generates at the one of nearest aspect ratio (steps from
    # the bucket the complexity rules chose)
    aspect_buckets: list[AspectBucket] = field(default_factory=_sd15_aspect_buckets)


# Defaults of the quality gate (factory.toml documents the same values; a test keeps them in sync).
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
    near_duplicate: float = 0.94  # CLIP image cosine to an earlier SKU of the night's category >= this -> review
    reference_threshold: float = 0.94  # CLIP image cosine to an image of reference_dir >= this -> review (>1: off)
    reference_dir: str = ""  # images the night must not resemble (competitor logos, protected artwork); "" = none
    preprocess: str = "torch"  # torch | pil: CLIP's resize/crop/normalise as batched torch ops, or open_clip's PIL
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


# The visible label's CJK font: Debian's fonts-wqy-microhei (WenQuanYi Micro Hei, CJK + Latin), which `make fonts`
# installs. Any TTF/TTC with the label's glyphs will do (e.g. Noto Sans CJK); another font changes the label's pixels.
DEFAULT_LABEL_FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"


@dataclass
class ProvenanceConfig:
    """What every PNG says about itself (factory/io/provenance.py; docs/review.md)."""

    producer: str = "adfactory"  # GB 45438 ContentProducer: your organisation's name or code
    propagator: str = ""  # GB 45438 ContentPropagator (a distributor's code); "" leaves it to the platform
    reserved_code2: str = ""  # GB 45438 ReservedCode2 (free use by the producer)
    visible_label: str = ""  # explicit label drawn on the image, e.g. "AI生成"; "" = off
    visible_label_corner: str = "bottom-right"  # bottom-right | bottom-left | top-right | top-left
    visible_label_size: float = 0.05  # text height as a share of the shorter side (GB 45438: at least 0.05)
    label_font: str = DEFAULT_LABEL_FONT  # TTF/TTC the visible label is drawn with (needs its CJK glyphs)
    c2pa_cert: str = ""  # PEM certificate chain (signer first, then intermediates); with c2pa_key: C2PA signing on
    c2pa_key: str = ""  # PEM private key of the signing certificate
    c2pa_alg: str = "es256"  # es256 | es384 | ps256 (must match the key)
    watermark: bool = False  # invisible keyed watermark in the pixels (factory/io/watermark.py; off: bytes unchanged)
    watermark_secret_env: str = "ADFACTORY_WATERMARK_SECRET"  # env var holding the key; the key is never in a config
    watermark_strength: float = 2.0  # luma change in grey levels (~43 dB PSNR at 2.0); docs/watermark.md


@dataclass
class CacheConfig:
    enabled: bool = True  # reuse a previous day's approved image when its cache key is unchanged
    lookback_days: int = 14  # how many earlier completed dates under the output root are searched


@dataclass
class RunConfig:
    executor: str = "ray"  # ray | local
    workers: int = 2  # pipeline replicas (Ray actors); one GPU each when CUDA is present
    batch_size: int = 4  # images per pipeline call; batches never mix resolutions
    batch_size_mode: str = "fixed"  # fixed (batch_size) | auto (from the workers' free GPU memory; CPU: batch_size)
    padding: str = "auto"  # partial batches: auto (count on cuda, none on cpu) | count | size | none
    ray_address: str = ""  # join this cluster; "" = $RAY_ADDRESS if set, else start a local one
    cpus_per_worker: int = 1  # CPUs reserved per actor (and its torch threads); leave some for the driver
    batches_in_flight: int = 2  # per worker: 2 = the next batch generates while this one is scored and written
    max_restarts: int = 2  # a crashed worker process is restarted and its batch retried this many times
    max_error_share: float = 0.5  # more generation_error images than this share: the night fails (exit 1)
    part_images: int = 2000  # the driver writes one resume part per this many finished images ...
    part_seconds: float = 60.0  # ... or per this many seconds, whichever comes first (factory/job/parts.py)
    fault_injection: str = ""  # testing only: "die_once:<sku_id>", "raise:<sku_id>", "oom:<sku_id>"


@dataclass
class StorageConfig:
    """Object-store settings (factory/io/storage.py). No credentials here: run.json records the resolved config.
    Keys come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) or the AWS SDK's default chain."""

    endpoint: str = ""  # e.g. "http://127.0.0.1:8333"; "" = $AWS_ENDPOINT_URL_S3, then $AWS_ENDPOINT_URL, else AWS
    region: str = ""  # "" = $AWS_REGION, then $AWS_DEFAULT_REGION, else us-east-1
    addressing: str = "auto"  # auto (path-style with a custom endpoint, virtual-hosted on AWS) | path | virtual
    lock: str = "auto"  # auto (local and s3: exclusive-create, others: lease) | exclusive-create
    #                     | lease -- see docs/operations.md "Storage" for what each guarantees
    lease_seconds: int = 300  # an object-store lock not renewed for this long is stale and may be taken over
    writer_threads: int = 0  # each worker's PNG writer threads; 0 = 2 on a local disk, 16 on an object store
    # Transient object-store errors (network, throttling, 5xx) are retried this many times, waiting retry_backoff_s,
    # then twice that, ... (each wait at most 30 s), on top of the SDK's own retries; then the night stops
    # (docs/faults.md).
    retries: int = 3
    retry_backoff_s: float = 0.5


@dataclass
class MetricsConfig:
    """Prometheus metrics of each night (factory/ops/metrics.py; docs/monitoring.md). Off by default."""

    textfile: str = ""  # node_exporter textfile-collector file (*.prom), rewritten atomically per night; "" = off
    pushgateway: str = ""  # Pushgateway URL, e.g. "http://127.0.0.1:9091" (pushadd per night); "" = off
    job: str = "adfactory"  # the Pushgateway `job` label
    instance: str = ""  # the Pushgateway grouping label `instance`; "" = the output root
    live: bool = True  # on the ray executor, progress through ray.util.metrics while the night runs
    timeout_s: float = 10.0  # Pushgateway request timeout; a failed push is logged, never fails the night


@dataclass
class LineageConfig:
    """OpenLineage RunEvents of each night (factory/ops/lineage.py). Off by default."""

    transport: str = "none"  # none | file | http
    url: str = ""  # http: the OpenLineage server, e.g. "http://marquez:5000"
    endpoint: str = "api/v1/lineage"  # http: the path events are POSTed to
    file: str = ""  # file: a JSON-lines file, one event appended per line
    namespace: str = "adfactory"  # the job's namespace
    job_name: str = "nightly"  # the job's name
    timeout_s: float = 5.0  # http request timeout; a failed emit is logged, never fails the night


@dataclass
class FactoryConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    repair: RepairConfig = field(default_factory=RepairConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)
    run: RunConfig = field(default_factory=RunConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    placements: PlacementsConfig = field(default_factory=PlacementsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    lineage: LineageConfig = field(default_factory=LineageConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Refuse values that would make every image fail, before anything runs (ConfigError, exit 2)."""
        _validate_run(self.run)
        _validate_planner(self.planner)
        _validate_placements(self.placements, self.planner)
        _validate_model(self.model)
        _validate_quality_repair(self.quality, self.repair)
        _validate_adapters(self.lora, self.model)
        _validate_provenance(self.provenance)
        _at_least("storage.writer_threads", self.storage.writer_threads, 0)
        if self.cache.lookback_days < 0:
            raise ConfigError(f"cache.lookback_days must be >= 0, got {self.cache.lookback_days}")
        _validate_ops(self.metrics, self.lineage)

    def absolute(self, base: Path) -> FactoryConfig:
        """Relative paths resolved against `base` (a config file's directory; the working directory for flags)."""

        def fix(p: str) -> str:
            return str((base / Path(p).expanduser()).resolve()) if p and not looks_like_uri(p) else p

        paths, m = self.paths, self.model
        return dataclasses.replace(
            self,
            paths=dataclasses.replace(
                paths, skus=fix(paths.skus), output=fix(paths.output), templates=fix(paths.templates)
            ),
            model=dataclasses.replace(
                m,
                pipeline=m.pipeline if m.pipeline == NULL_PIPELINE else fix(m.pipeline),
                lora=fix(m.lora),
                single_file_config=m.single_file_config
                if m.single_file_config in ("auto", *SINGLE_FILE_FAMILIES)
                else fix(m.single_file_config),
                clip_pretrained=fix(m.clip_pretrained),
                clip_config_dir=fix(m.clip_config_dir),
            ),
            repair=dataclasses.replace(self.repair, inpaint_unet=fix(self.repair.inpaint_unet)),
            quality=dataclasses.replace(self.quality, reference_dir=fix(self.quality.reference_dir)),
            provenance=dataclasses.replace(
                self.provenance,
                c2pa_cert=fix(self.provenance.c2pa_cert),
                c2pa_key=fix(self.provenance.c2pa_key),
                label_font=fix(self.provenance.label_font),
            ),
            lora=LoraSection({n: dataclasses.replace(a, path=fix(a.path)) for n, a in self.lora.adapters.items()}),
            metrics=dataclasses.replace(self.metrics, textfile=fix(self.metrics.textfile)),
            lineage=dataclasses.replace(self.lineage, file=fix(self.lineage.file)),
        )


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name} must be at least {low}, got {value}")


def _validate_run(run: RunConfig) -> None:
    _one_of("run.padding", run.padding, ("auto", *PADDING_MODES))
    _one_of("run.executor", run.executor, tuple(EXECUTORS))
    _one_of("run.batch_size_mode", run.batch_size_mode, BATCH_SIZE_MODES)
    for name in ("workers", "batch_size", "cpus_per_worker"):
        _at_least(f"run.{name}", getattr(run, name), 1)
    _at_least("run.max_restarts", run.max_restarts, 0)
    if run.batches_in_flight not in (1, 2):  # one batch per stage (factory/generation/stages.py): more buys nothing
        raise ConfigError(f"run.batches_in_flight must be 1 or 2, got {run.batches_in_flight}")
    _at_least("run.part_images", run.part_images, 1)
    if not run.part_seconds > 0:
        raise ConfigError(f"run.part_seconds must be greater than 0, got {run.part_seconds}")
    if not 0 <= run.max_error_share <= 1:
        raise ConfigError(f"run.max_error_share must be between 0 and 1, got {run.max_error_share}")
    if run.fault_injection:
        _one_of("run.fault_injection kind", run.fault_injection.partition(":")[0], FAULT_KINDS)


def _validate_planner(planner: PlannerConfig) -> None:
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
    _one_of("planner.seed_scope", planner.seed_scope, SEED_SCOPES)
    _at_least("planner.max_variants", planner.max_variants, 1)
    if planner.landscape_bucket not in names:
        raise ConfigError(f"planner.landscape_bucket {planner.landscape_bucket!r} is not a bucket name")


def _validate_placements(p: PlacementsConfig, planner: PlannerConfig) -> None:
    _one_of("placements.fit", p.fit, PLACEMENT_FITS)
    for name, size in p.sizes.items():
        if not PLACEMENT_NAME_RE.match(name):
            raise ConfigError(
                f"[placements.sizes] {name!r}: placement names are 1-32 lowercase letters, digits, '_' or '-'"
            )
        if not (1 <= size.width <= MAX_PLACEMENT_SIDE and 1 <= size.height <= MAX_PLACEMENT_SIDE):
            raise ConfigError(f"[placements.sizes] {name!r}: width and height must be 1..{MAX_PLACEMENT_SIDE} pixels")
    names = [a.name for a in planner.aspect_buckets]
    if len(set(names)) != len(names):
        raise ConfigError(f"planner.aspect_buckets has duplicate names: {names}")
    if p.sizes and not names:
        raise ConfigError("planner.aspect_buckets must list the model's trained sizes when placements are configured")
    buckets = {b.name for b in planner.buckets}
    for a in planner.aspect_buckets:
        if not ADAPTER_NAME_RE.match(a.name):
            raise ConfigError(f"aspect bucket {a.name!r}: names are 1-64 letters, digits, '_' or '-'")
        if a.width % 8 or a.height % 8 or a.width <= 0 or a.height <= 0:
            raise ConfigError(f"aspect bucket {a.name!r}: width and height must be positive multiples of 8")
        clash = sorted(buckets & {f"{a.name}-s{b.steps}" for b in planner.buckets})
        if clash:  # a placement's generation bucket is named <aspect bucket>-s<steps> (factory.inputs.placements)
            raise ConfigError(f"aspect bucket {a.name!r}: its generation bucket {clash[0]!r} is also a bucket name")


def _validate_model(model: ModelConfig) -> None:
    _one_of("model.device", model.device, ("auto", *DEVICES))
    _one_of("model.quantization", model.quantization, ("auto", *QUANT_MODES))
    _one_of("model.compile", model.compile, COMPILE_MODES)
    _one_of("model.determinism", model.determinism, ("auto", *DETERMINISM_MODES))
    _one_of("model.dtype", model.dtype, ("auto", *DTYPES))
    if not model.single_file_config:
        raise ConfigError(
            f"model.single_file_config must be auto, {', '.join(SINGLE_FILE_FAMILIES)} or a config directory"
        )
    if model.pipeline == NULL_PIPELINE and model.lora:
        raise ConfigError(f"model.lora must be empty with model.pipeline = {NULL_PIPELINE!r} (there is no model)")
    if model.quantization == "int8-weight" and model.determinism == "batch-invariant":
        raise ConfigError(
            "model.quantization 'int8-weight' is not batch-invariant on CPU (measured): use int8-dynamic or none"
        )


def _validate_quality_repair(quality: QualityConfig, repair: RepairConfig) -> None:
    _check_gate(quality, "quality")
    _one_of("quality.preprocess", quality.preprocess, PREPROCESS_MODES)
    for category, overrides in quality.categories.items():
        for name in ("reference_dir", "preprocess"):
            if name in overrides:
                raise ConfigError(f"[quality.categories.{category}]: {name} is global; set it in [quality]")
        _check_gate(quality.for_category(category), f"[quality.categories.{category}]")
    _one_of("repair.mode", repair.mode, REPAIR_MODES)
    if not 0 < repair.strength <= 1:
        raise ConfigError(f"repair.strength must be in (0, 1], got {repair.strength}")
    for name in ("max_attempts", "dilate", "blur", "padding"):
        _at_least(f"repair.{name}", getattr(repair, name), 0)
    _at_least("repair.top_k", repair.top_k, 1)
    if repair.tile != 0 and repair.tile < 8:
        raise ConfigError(f"repair.tile must be 0 (a quarter of the shorter side) or at least 8 px, got {repair.tile}")


def _validate_adapters(lora: LoraSection, model: ModelConfig) -> None:
    for name, a in lora.adapters.items():
        where = f"[lora.adapters.{name}]"
        if not ADAPTER_NAME_RE.match(name):
            raise ConfigError(f"{where}: adapter names are 1-64 letters, digits, '_' or '-' (starting alphanumeric)")
        if not a.path:
            raise ConfigError(f"{where}: path must name a LoRA file or directory")
        if not math.isfinite(a.weight):
            raise ConfigError(f"{where}: weight must be a finite number, got {a.weight}")
        for word in a.trigger_words:
            # Literal text put into prompts (and the PNG's parameters line): one line, printable, short.
            if not word.strip() or not word.isprintable() or len(word) > MAX_TRIGGER_WORD:
                raise ConfigError(
                    f"{where}: trigger_words must be non-empty printable one-line strings of at most "
                    f"{MAX_TRIGGER_WORD} characters, got {word[:MAX_TRIGGER_WORD]!r}"
                )
    if lora.adapters and model.quantization not in ("auto", "none"):
        # Adapters stay unfused peft layers over float Linear weights; quantizing would skip or break them.
        raise ConfigError(
            f"model.quantization {model.quantization!r} cannot be combined with [lora.adapters] (style adapters run "
            f"unfused in float); use 'none' or 'auto' (= none when adapters are configured)"
        )


def _validate_provenance(p: ProvenanceConfig) -> None:
    if not p.producer.strip():
        raise ConfigError("provenance.producer must name the producer (GB 45438 ContentProducer)")
    _one_of("provenance.visible_label_corner", p.visible_label_corner, CORNERS)
    _one_of("provenance.c2pa_alg", p.c2pa_alg, C2PA_ALGS)
    if not MIN_LABEL_SIZE <= p.visible_label_size <= 0.5:
        raise ConfigError(
            f"provenance.visible_label_size must be between {MIN_LABEL_SIZE} and 0.5 of the shorter side, "
            f"got {p.visible_label_size}"
        )
    if bool(p.c2pa_cert) != bool(p.c2pa_key):
        raise ConfigError("provenance.c2pa_cert and provenance.c2pa_key must be set together (C2PA signing)")
    _validate_watermark(p)


def _validate_watermark(p: ProvenanceConfig) -> None:
    # the secret itself is checked where it is read (run start, each worker): other commands need no secret
    low, high = WATERMARK_STRENGTHS
    if not low <= p.watermark_strength <= high:
        raise ConfigError(
            f"provenance.watermark_strength must be between {low} and {high} grey levels, got {p.watermark_strength}"
        )
    if p.watermark and not ENV_NAME_RE.match(p.watermark_secret_env):
        raise ConfigError(
            "provenance.watermark_secret_env must name an environment variable (letters, digits, '_'), "
            f"got {p.watermark_secret_env!r}"
        )


_HTTP_URL = re.compile(r"^https?://[^/\s]+(/\S*)?$")


def _validate_ops(metrics: MetricsConfig, lineage: LineageConfig) -> None:
    if metrics.textfile and not metrics.textfile.endswith(".prom"):
        raise ConfigError(f"metrics.textfile must end in .prom (what node_exporter reads), got {metrics.textfile!r}")
    if metrics.pushgateway and not _HTTP_URL.match(metrics.pushgateway):
        raise ConfigError(f"metrics.pushgateway must be an http(s)://host:port URL, got {metrics.pushgateway!r}")
    if not metrics.job.strip():
        raise ConfigError("metrics.job must name the Pushgateway job label")
    _one_of("lineage.transport", lineage.transport, LINEAGE_TRANSPORTS)
    if lineage.transport == "http" and not _HTTP_URL.match(lineage.url):
        raise ConfigError(f"lineage.url must be an http(s)://host:port URL with transport 'http', got {lineage.url!r}")
    if lineage.transport == "file" and not lineage.file:
        raise ConfigError("lineage.file must name the events file with transport 'file'")
    if not (lineage.namespace.strip() and lineage.job_name.strip()):
        raise ConfigError("lineage.namespace and lineage.job_name must not be empty")
    for name, value in (("metrics.timeout_s", metrics.timeout_s), ("lineage.timeout_s", lineage.timeout_s)):
        if not value > 0:
            raise ConfigError(f"{name} must be greater than 0, got {value}")


def _check_gate(q: QualityConfig, where: str) -> None:
    for name in ("near_duplicate", "reference_threshold"):
        if getattr(q, name) < -1:  # a cosine; above 1 turns the check off
            raise ConfigError(f"{where}: {name} is a cosine threshold and must be at least -1, got {getattr(q, name)}")
    if not q.iqa_pairs:
        raise ConfigError(f"{where}: iqa_pairs must list at least one [positive, negative] pair")
    if not q.unsafe_concepts or not all(isinstance(c, str) and c for c in q.unsafe_concepts):
        raise ConfigError(f"{where}: unsafe_concepts must list at least one non-empty concept")


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
            if not isinstance(value, list):
                raise ConfigError(f"{where}: buckets must be a list of [[planner.buckets]] tables")
            updates[key] = [_bucket(b, f"{where} [[planner.buckets]] #{i + 1}") for i, b in enumerate(value)]
        elif key == "aspect_buckets":
            if not isinstance(value, list):
                raise ConfigError(f"{where}: aspect_buckets must be a list of [[planner.aspect_buckets]] tables")
            updates[key] = [
                _typed(AspectBucket, b, f"{where} [[planner.aspect_buckets]] #{i + 1}") for i, b in enumerate(value)
            ]
        elif key == "sizes":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: sizes must be a table of name = {{ width = W, height = H }}")
            updates[key] = {n: _typed(PlacementSize, v, f"{where} [placements.sizes] {n}") for n, v in value.items()}
        elif key == "adapters":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: adapters must be [lora.adapters.<name>] tables")
            updates[key] = {n: _adapter(a, f"{where} [lora.adapters.{n}]") for n, a in value.items()}
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


def _bucket(entry: Any, where: str) -> Bucket:
    return _typed(Bucket, entry, where)


def _typed(kind: type, entry: Any, where: str) -> Any:
    """A table with exactly the fields of dataclass `kind` (of str / int fields) as an instance of it."""
    types = {f.name: f.type for f in dataclasses.fields(kind)}  # "str" / "int" (postponed annotations)
    if not isinstance(entry, dict) or set(entry) != set(types):
        raise ConfigError(f"{where}: needs exactly the keys {', '.join(types)}")
    for key, t in types.items():
        value = entry[key]
        if type(value).__name__ != t:
            raise ConfigError(f"{where}: {key} must be {t}, got {value!r}")
    return kind(**entry)


def _adapter(entry: Any, where: str) -> AdapterConfig:
    if not isinstance(entry, dict) or "path" not in entry or set(entry) - {"path", "weight", "trigger_words"}:
        raise ConfigError(f"{where}: needs 'path' (a LoRA file or directory), optionally 'weight' and 'trigger_words'")
    path, weight, words = entry["path"], entry.get("weight", 1.0), entry.get("trigger_words", [])
    if not isinstance(path, str):
        raise ConfigError(f"{where}: path must be str, got {path!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ConfigError(f"{where}: weight must be a number, got {weight!r}")
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ConfigError(f"{where}: trigger_words must be a list of strings, got {words!r}")
    return AdapterConfig(path=path, weight=float(weight), trigger_words=list(words))


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{file}: is a directory, not a TOML config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML ({exc})") from None


def load_config(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> FactoryConfig:
    """Build the config: defaults, then the TOML file, then `overrides` ({"run": {"workers": 4}, ...}, from flags).

    `path=None` reads the repo's `factory.toml`. Relative paths in a file resolve against that file's directory,
    relative paths given as flags against the working directory, and defaults against the repo root (where
    factory.toml, which documents them, lives). Errors name where the value came from: the file or the flag.
    """
    file = Path(path) if path else (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None)
    cfg = FactoryConfig().absolute(REPO_ROOT)  # the defaults are factory.toml's values, relative to the repo
    if file is not None:
        cfg = _merge(cfg, _read_toml(file), str(file))
        try:
            cfg.validate()
        except ConfigError as exc:
            raise ConfigError(f"{file}: {exc}") from None
        cfg = cfg.absolute(file.resolve().parent)
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is None:
                continue
            flag = f"--{key.replace('_', '-')}"  # the CLI's flags are named after their config keys
            cfg = _merge(cfg, {section: {key: value}}, f"command line {flag}")
            try:
                cfg.validate()
            except ConfigError as exc:
                raise ConfigError(f"command line {flag}: {exc}") from None
    return cfg.absolute(Path.cwd())


def resolve_path(p: str) -> Path:
    """A config path as a Path (load_config already made it absolute; programmatic configs may be relative)."""
    return Path(p).expanduser()
