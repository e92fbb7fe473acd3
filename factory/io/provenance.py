"""What every PNG says about itself: the GB 45438-2025 implicit label (XMP), the AUTOMATIC1111 `parameters` text,
an optional visible label, optional C2PA signing, and `inspect()` which reads all of it back (`adfactory provenance
verify`). docs/review.md says which rule each mark serves.

Chunks after IHDR, in file order (text chunks written by `factory.io.png.png_bytes`):
  iTXt `XML:com.adobe.xmp`  XMP packet: `TC260:AIGC` (namespace TC260_NS) = the Annex E JSON {Label, ContentProducer,
                            ProduceID, ReservedCode1, ContentPropagator, PropagateID, ReservedCode2}, plus IPTC
                            `Iptc4xmpExt:DigitalSourceType` = trainedAlgorithmicMedia (what image hosts read)
  tEXt/iTXt `parameters`    prompt, "Negative prompt: ...", "Steps: .., Sampler: LCM, CFG scale: .., Seed: ..,
                            Size: WxH, Model hash: .., Model: .." (iTXt when the text is not Latin-1)
  tEXt `adfactory:cache_key` the task's cache key (factory.job.keys), only on an image as generated (not
                            repaired, no visible label): a rerun adopts such a file instead of regenerating it
  caBX                      the C2PA manifest store, only when `provenance.c2pa_cert`/`c2pa_key` are set
                            (c2pa inserts it right after IHDR and changes no other byte)

Determinism: nothing here depends on the run (no run id, no clock): ReservedCode1 is the SHA-256 of the pixels and
ProduceID is derived from the SKU, the variant and that hash, so the same pixels give the same bytes whatever the
batch size, worker count or executor, and a cross-day cache copy carries a label that is still true. C2PA signing is
the exception: a C2PA manifest has a random instance id and an ECDSA signature, so signed files differ in those
bytes between runs (their pixels, XMP and parameters do not).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from PIL import Image, ImageDraw, ImageFont

from factory.config import DEFAULT_LABEL_FONT, ProvenanceConfig
from factory.errors import ConfigError, InputError
from factory.io import watermark
from factory.io.png import PngText, png_bytes

TC260_NS = "http://www.tc260.org.cn/ns/AIGC/1.0/"
XMP_KEY = "XML:com.adobe.xmp"
PARAMETERS_KEY = "parameters"
CACHE_KEY_KEY = "adfactory:cache_key"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
_LABEL_KEYS = (
    "Label",
    "ContentProducer",
    "ProduceID",
    "ReservedCode1",
    "ContentPropagator",
    "PropagateID",
    "ReservedCode2",
)


def pixel_sha256(image: Image.Image) -> str:
    """SHA-256 (hex) of the RGB pixel bytes, row by row: `sha256(Image.open(f).convert("RGB").tobytes())`."""
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def produce_id(sku_id: str, variant: int, pixel_hash: str, placement: str = "") -> str:
    """The image's unique id (GB 45438 ProduceID): SKU hash, variant, placement and pixel hash, no run id (see
    docs/review.md)."""
    return f"{produce_id_stem(sku_id, variant, placement)}-{pixel_hash[:16]}"


def produce_id_stem(sku_id: str, variant: int, placement: str = "") -> str:
    """ProduceID without its pixel-hash part: what the watermark's payload is derived from (known before pixels).
    `-<placement>` follows the variant for an ad placement's image (`stem_of` still works: the pixel hash that
    follows the stem holds no `-`)."""
    suffix = f"-{placement}" if placement else ""
    return f"{hashlib.sha256(sku_id.encode()).hexdigest()[:16]}-v{variant}{suffix}"


def stem_of(pid: str) -> str:
    """The stem of a ProduceID (`produce_id_stem`): everything before the pixel hash."""
    return pid.rsplit("-", 1)[0]


def aigc_label(cfg: ProvenanceConfig, pid: str, pixel_hash: str) -> dict[str, str]:
    """The Annex E JSON, keys in the standard's order. Label "1": the content is AI-generated."""
    return {
        "Label": "1",
        "ContentProducer": cfg.producer,
        "ProduceID": pid,
        "ReservedCode1": pixel_hash,
        "ContentPropagator": cfg.propagator,
        "PropagateID": pid if cfg.propagator else "",
        "ReservedCode2": cfg.reserved_code2,
    }


def xmp_packet(label: dict[str, str]) -> str:
    """An XMP packet carrying `TC260:AIGC` (the label JSON as text) and the IPTC digital source type."""
    value = escape(json.dumps(label, ensure_ascii=False, separators=(",", ":")))
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        f' <rdf:RDF xmlns:rdf="{_RDF}">\n'
        f'  <rdf:Description rdf:about="" xmlns:TC260="{TC260_NS}" xmlns:Iptc4xmpExt="{_IPTC_EXT}">\n'
        f"   <TC260:AIGC>{value}</TC260:AIGC>\n"
        f"   <Iptc4xmpExt:DigitalSourceType>{TRAINED_ALGORITHMIC_MEDIA}</Iptc4xmpExt:DigitalSourceType>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    )


def a1111_parameters(task: Any, guidance_scale: float, model_hash: str, model_name: str) -> str:
    """The AUTOMATIC1111 `parameters` text that creative tools (A1111, ComfyUI loaders, Civitai) read back."""
    settings = {
        "Steps": task.steps,
        "Sampler": "LCM",
        "CFG scale": f"{guidance_scale:g}",
        "Seed": task.seed,
        "Size": f"{task.width}x{task.height}",
        "Model hash": model_hash,
        "Model": json.dumps(model_name) if any(c in model_name for c in ',:"') else model_name,
    }
    if task.placement:  # generated at the trained size, then fitted to the placement's pixels
        settings["Size"] = f"{task.render_width}x{task.render_height}"
        settings["Placement"] = f"{task.placement} {task.width}x{task.height} ({task.fit})"
    tail = ", ".join(f"{k}: {v}" for k, v in settings.items())
    return f"{task.prompt}\nNegative prompt: {task.negative_prompt}\n{tail}"


def label_font_path(cfg: ProvenanceConfig) -> Path:
    """The visible label's font file (`provenance.label_font`), checked: ConfigError (exit 2) with the fix when it
    is missing or not a font FreeType opens. Checked once before a night's first image (run, Stamper)."""
    path = Path(cfg.label_font).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"provenance.label_font: {path} not found; install fonts-wqy-microhei (make fonts) or point the setting "
            "at a TTF/TTC font with the label's CJK glyphs"
        )
    _font(str(path), 16)
    return path


def draw_visible_label(
    image: Image.Image, text: str, corner: str, size: float, font_path: str | Path = DEFAULT_LABEL_FONT
) -> Image.Image:
    """A copy with `text` in `corner`: glyph height >= `size` x the shorter side, white on a dark outline.
    Deterministic (FreeType rasterises the same way for the same font and size)."""
    short = min(image.size)
    target = max(1, round(size * short + 0.4999))
    px = target
    font = _font(str(font_path), px)
    while _text_height(font, text) < target:  # the em box is taller than the ink: grow until the ink is tall enough
        px += 1
        font = _font(str(font_path), px)
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    stroke = max(1, px // 12)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
    margin = max(1, round(0.02 * short))
    x = margin - left if corner.endswith("left") else out.width - margin - right
    y = margin - top if corner.startswith("top") else out.height - margin - bottom
    draw.text((x, y), text, font=font, fill=(255, 255, 255), stroke_width=stroke, stroke_fill=(0, 0, 0))
    return out


@functools.lru_cache(maxsize=32)
def _font(path: str, px: int) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(path, px)
    except OSError as exc:  # a file FreeType cannot read as a font
        raise ConfigError(f"provenance.label_font: {path} is not a TTF/TTC font FreeType can open ({exc})") from None


def _text_height(font: ImageFont.FreeTypeFont, text: str) -> int:
    left, top, right, bottom = font.getbbox(text)
    return bottom - top


@dataclass
class Stamped:
    data: bytes  # the PNG file
    produce_id: str
    pixel_hash: str


class Stamper:
    """Per worker: turns a kept image into the PNG bytes with every mark (and the C2PA signature if configured)."""

    def __init__(self, cfg: ProvenanceConfig, model_hash: str, model_name: str, guidance_scale: float):
        self.cfg, self.model_hash, self.model_name, self.guidance_scale = cfg, model_hash, model_name, guidance_scale
        self.signer = C2paSigner(cfg) if cfg.c2pa_cert else None
        self.font = label_font_path(cfg) if cfg.visible_label else None  # a missing font fails here, not per image
        # read once per worker; ConfigError naming provenance.watermark_secret_env when the variable is missing
        self._wm_secret = watermark.secret_from_env(cfg.watermark_secret_env) if cfg.watermark else None

    def png(self, image: Image.Image, task: Any, generated: bool = False) -> Stamped:
        """`generated`: the pixels are the pipeline's output for `task` as they are (not repaired)."""
        c = self.cfg
        if c.visible_label:  # changes pixels: drawn before the hash, so ReservedCode1 covers the labelled image
            image = draw_visible_label(image, c.visible_label, c.visible_label_corner, c.visible_label_size, self.font)
        if self._wm_secret is not None:  # the last pixel change: the hash, parameters and C2PA describe it
            stem = produce_id_stem(task.sku_id, task.variant, task.placement)
            key = watermark.payload_key(self._wm_secret, c.producer, stem)
            image = watermark.embed(image, key, self._wm_secret, c.watermark_strength)
        digest = pixel_sha256(image)
        pid = produce_id(task.sku_id, task.variant, digest, task.placement)
        chunks = [
            PngText(XMP_KEY, xmp_packet(aigc_label(c, pid, digest)), international=True),
            PngText(PARAMETERS_KEY, a1111_parameters(task, self.guidance_scale, self.model_hash, self.model_name)),
        ]
        # adoptable only when these pixels are the generation itself (no label drawn, no watermark embedded)
        if generated and task.cache_key and not c.visible_label and self._wm_secret is None:
            chunks.append(PngText(CACHE_KEY_KEY, task.cache_key))
        data = png_bytes(image, chunks)
        if self.signer is not None:
            data = self.signer.sign(data, Path(task.image_path).name)
        return Stamped(data, pid, digest)


def adoptable_image(data: bytes, task: Any) -> Image.Image | None:
    """The generated image an earlier attempt wrote for `task`, or None: it must decode completely, carry `task`'s
    cache key (same prompt, seed, size, steps, model and numerics, adapters) and pixels matching its label's hash
    (ReservedCode1), so a truncated, altered or stale file is regenerated instead."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            text = dict(getattr(im, "text", {}))
            image = im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    if not task.cache_key or text.get(CACHE_KEY_KEY) != task.cache_key or image.size != (task.width, task.height):
        return None
    label, _ = _read_xmp(text.get(XMP_KEY, ""))
    if label is None or label.get("ReservedCode1") != pixel_sha256(image):
        return None
    return image


class C2paSigner:
    """C2PA manifest (a `c2pa.created` action, digital source type trainedAlgorithmicMedia) signed with the
    configured certificate chain; no thumbnail (it would add ~30 KB per image and duplicate the pixels)."""

    def __init__(self, cfg: ProvenanceConfig):
        import c2pa

        try:
            chain, key = Path(cfg.c2pa_cert).read_bytes(), Path(cfg.c2pa_key).read_bytes()
        except OSError as exc:
            raise ConfigError(f"provenance.c2pa_cert/c2pa_key: cannot read {exc.filename} ({exc.strerror})") from None
        self._lock = threading.Lock()
        alg = getattr(c2pa.C2paSigningAlg, cfg.c2pa_alg.upper())
        try:
            self.signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg, chain, key, None))
        except c2pa.C2paError as exc:
            raise ConfigError(f"provenance.c2pa_cert/c2pa_key: not a usable {cfg.c2pa_alg} signer ({exc})") from None
        self.context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})

    @classmethod
    def check(cls, cfg: ProvenanceConfig) -> None:
        """Sign a 1-pixel PNG once, so a wrong chain or key stops the run before any image (ConfigError, exit 2)."""
        import c2pa

        try:
            cls(cfg).sign(png_bytes(Image.new("RGB", (1, 1))), "check.png")
        except c2pa.C2paError as exc:
            raise ConfigError(f"provenance.c2pa_cert/c2pa_key: signing fails ({exc})") from None

    def sign(self, png: bytes, title: str) -> bytes:
        import c2pa

        manifest = {
            "claim_generator_info": [{"name": "adfactory"}],
            "title": title,
            "assertions": [
                {
                    "label": "c2pa.actions",
                    "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA}]},
                }
            ],
        }
        out = io.BytesIO()
        # one native signer serves the worker's writer threads: c2pa-python does not document it as thread-safe
        with self._lock, c2pa.Builder(json.dumps(manifest), context=self.context) as builder:
            builder.sign(self.signer, "image/png", io.BytesIO(png), out)
        return out.getvalue()


@dataclass
class Report:
    """What one file carries, as `adfactory provenance verify` prints it."""

    path: str
    label: dict[str, str] | None = None  # the TC260:AIGC JSON
    digital_source_type: str | None = None
    parameters: str | None = None
    pixel_hash: str = ""  # of the pixels as they are now
    c2pa: dict[str, Any] | None = None  # {"state": Valid | Trusted | Invalid, "source_type", "issuer", "failures"}
    problems: list[str] = field(default_factory=list)
    watermark: dict[str, Any] | None = None  # WatermarkCheck.result(); None: not checked (no secret)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """Human-readable lines: what the file carries, then OK or each problem."""
        lines = [f"{self.path}:"]
        if self.label is not None:
            lines.append(f"  GB 45438 label (XMP TC260:AIGC): {json.dumps(self.label, ensure_ascii=False)}")
        if self.digital_source_type:
            lines.append(f"  IPTC digital source type: {self.digital_source_type}")
        if self.parameters is not None:
            lines.append("  parameters: " + self.parameters.replace("\n", " | "))
        if self.c2pa is not None:
            c = self.c2pa
            lines.append(f"  C2PA: {c['state']} (source type {c['source_type']}, issuer {c['issuer']})")
        else:
            lines.append("  C2PA: none")
        lines.append(f"  pixel sha256: {self.pixel_hash}")
        lines.append("  " + describe_watermark(self.watermark))
        lines += [f"  PROBLEM: {p}" for p in self.problems] or ["  OK: label present and pixel hash matches"]
        return "\n".join(lines)


@dataclass(frozen=True)
class WatermarkCheck:
    """How `inspect` looks for the watermark: the secret, the bucket sizes a rescaled copy is tried at, and whether
    a missing or mismatched watermark is a problem (`provenance.watermark` on)."""

    secret: bytes = field(repr=False)  # never printed
    sizes: tuple[tuple[int, int], ...] = ()
    required: bool = False

    def check(self, image: Image.Image, label: dict[str, str] | None, report: Report) -> None:
        expected = None
        if label and label.get("ProduceID"):
            stem = stem_of(label["ProduceID"])
            expected = watermark.payload_key(self.secret, label.get("ContentProducer", ""), stem)
        d = watermark.detect(image, self.secret, expected, self.sizes)
        report.watermark = {
            "found": d.found, "payload": d.payload, "bit_error_rate": round(d.bit_error_rate, 4),
            "z": round(d.z, 2), "scale": d.scale, "expected": expected.hex() if expected else "", "matches": [],
        }  # fmt: skip
        if self.required and not d.found:
            report.problems.append("no watermark found (provenance.watermark is on)")
        elif d.found and expected is not None and d.key != expected:
            report.problems.append("watermark payload does not match the label's ProduceID")


def describe_watermark(w: dict[str, Any] | None) -> str:
    """One line: the watermark as `verify` and `detect` print it."""
    if w is None:
        return "watermark: not checked (no secret: set the variable named by provenance.watermark_secret_env)"
    if not w["found"]:
        return f"watermark: not found (sync z {w['z']}, bit error rate {w['bit_error_rate']})"
    scale = "" if w["scale"] == "1" else f", read after rescaling to {w['scale']}"
    matches = "".join(f"\n    matches {m}" for m in w["matches"]) or (
        "\n    no manifest row has this payload" if w.get("searched") else ""
    )
    return (
        f"watermark: found, payload {w['payload']} (bit error rate {w['bit_error_rate']}, sync z {w['z']}{scale})"
        + matches
    )


def verify_files(
    files: list[Path], trust_anchors: Path | None = None, wm: WatermarkCheck | None = None
) -> list[Report]:
    """`inspect` each file; InputError (exit 2) for a missing file or an unreadable trust-anchor file."""
    anchors = ""
    if trust_anchors is not None:
        try:
            anchors = trust_anchors.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--trust-anchors {trust_anchors}: cannot read ({exc})") from None
    for f in files:
        if not f.is_file():
            raise InputError(f"{f}: no such file")
    return [inspect(f, anchors, wm) for f in files]


def inspect(path: str | Path, trust_anchors: str = "", wm: WatermarkCheck | None = None) -> Report:
    """Read every mark of a PNG and check it: the label exists, ReservedCode1 equals the pixels' hash now, a
    C2PA manifest (if any) validates (against `trust_anchors`, PEM, when given), and with `wm` the watermark.
    InputError: not a readable image."""
    report = Report(str(path))
    try:
        with Image.open(path) as im:
            im.load()
            text = dict(getattr(im, "text", {}))
            report.pixel_hash = pixel_sha256(im)
            pixels = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None
    report.parameters = text.get(PARAMETERS_KEY)
    if XMP_KEY in text:
        report.label, report.digital_source_type = _read_xmp(text[XMP_KEY])
    if report.label is None:
        report.problems.append("no GB 45438 implicit label (XMP TC260:AIGC)")
    elif report.label.get("ReservedCode1") != report.pixel_hash:
        report.problems.append("pixel hash mismatch: the pixels changed after labelling (ReservedCode1)")
    if report.parameters is None:
        report.problems.append("no parameters text")
    report.c2pa = _read_c2pa(Path(path), trust_anchors)
    if report.c2pa is not None and report.c2pa["state"] == "Invalid":
        report.problems.append(f"C2PA manifest invalid: {', '.join(report.c2pa['failures'])}")
    if wm is not None:
        wm.check(pixels, report.label, report)
    return report


def _read_xmp(packet: str) -> tuple[dict[str, str] | None, str | None]:
    try:
        root = ET.fromstring(packet.encode("utf-8"))
    except ET.ParseError:
        return None, None
    node = root.find(f".//{{{TC260_NS}}}AIGC")
    source = root.find(f".//{{{_IPTC_EXT}}}DigitalSourceType")
    label = None
    if node is not None and node.text:
        try:
            parsed = json.loads(node.text)
        except ValueError:
            parsed = None
        label = parsed if isinstance(parsed, dict) else None
    return label, source.text if source is not None else None


def _read_c2pa(path: Path, trust_anchors: str) -> dict[str, Any] | None:
    import c2pa

    settings: dict[str, Any] = {"verify": {"verify_trust": bool(trust_anchors)}}
    if trust_anchors:
        settings["trust"] = {"trust_anchors": trust_anchors}
    with path.open("rb") as fh:
        try:
            reader = c2pa.Reader.try_create("image/png", fh, context=c2pa.Context.from_dict(settings))
        except c2pa.C2paError as exc:
            return {"state": "Invalid", "source_type": None, "issuer": None, "failures": [str(exc)]}
    if reader is None:
        return None
    with reader:
        manifest = reader.get_active_manifest() or {}
        results = (reader.get_validation_results() or {}).get("activeManifest", {})
        assertions = [x for x in manifest.get("assertions", []) if x.get("label", "").startswith("c2pa.actions")]
        actions = [a for x in assertions for a in x.get("data", {}).get("actions", [])]
        return {
            "state": reader.get_validation_state(),
            "source_type": next((a.get("digitalSourceType") for a in actions if "digitalSourceType" in a), None),
            "issuer": manifest.get("signature_info", {}).get("issuer"),
            "failures": [f["code"] for f in results.get("failure", [])],
        }
