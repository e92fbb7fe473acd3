"""Prompt templates: one TOML file per category, validated on load, rendered without ever parsing values.

A template's placeholders (`{brand}`) are parsed once, from the trusted template file. Rendering concatenates the
literal pieces with attribute values, so a value such as `{0.__class__}`, `%s` or `{` is inserted as plain text:
values never reach `str.format`, `%` or any other interpreter.
"""

from __future__ import annotations

import functools
import hashlib
import re
import string
import tomllib
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.errors import TemplateError

CATEGORY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")  # categories become directory names
# C0 and C1 controls (incl. NEL U+0085) and the Unicode line/paragraph separators: anything that breaks a line
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_FIELDS = {
    "prompt",
    "negative_prompt",
    "required",
    "optional",
    "bucket",
    "description",
    "quality",
    "adapters",
    "placements",
}


@dataclass(frozen=True)
class Template:
    category: str
    path: str
    prompt: tuple[tuple[str, str | None], ...]  # (literal text, placeholder name or None)
    negative_prompt: tuple[tuple[str, str | None], ...]
    required: tuple[str, ...]
    optional: dict[str, str] = field(hash=False)
    bucket: str  # resolution hint: a bucket name from config
    quality: dict[str, Any] = field(hash=False)  # [quality] overrides for this category (validated by config)
    version: str  # sha256 of the file, prefix: changes whenever the template changes
    adapters: tuple[str, ...] = ()  # style LoRAs ([lora.adapters.<name>]) applied to this category's images
    placements: tuple[str, ...] = ()  # ad placements ([placements.sizes]) to produce, in config order; () = none

    def render(self, attrs: dict[str, str]) -> tuple[str, str]:
        """Return (prompt, negative_prompt). `attrs` must contain every required attribute."""
        if None in attrs.values():
            attrs = {k: v for k, v in attrs.items() if v is not None}
        values = {**self.optional, **attrs}
        return _render(self.prompt, values), _render(self.negative_prompt, values)

    def missing(self, attrs: dict[str, str | None]) -> list[str]:
        return [name for name in self.required if not (attrs.get(name) or "").strip()]


@functools.lru_cache(maxsize=1 << 16)  # attribute values repeat (colours, brands, styles) across a day's rows
def clean_value(value: str) -> str:
    """Control characters and line breaks (newline, NEL, U+2028, NUL, escapes) become spaces.

    A value cannot break prompt or manifest lines.
    """
    if value.isascii() and value.isprintable():  # the common case: no control character to replace
        return value.strip()
    return _CONTROL_RE.sub(" ", value).strip()


def _render(parts: tuple[tuple[str, str | None], ...], values: dict[str, str]) -> str:
    out: list[str] = []
    for literal, name in parts:
        out.append(literal)
        if name is not None:
            out.append(clean_value(values[name]))
    return " ".join("".join(out).split())  # collapse whitespace left by empty optional values


def _parse(text: str, where: str, declared: set[str]) -> tuple[tuple[str, str | None], ...]:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise TemplateError(f"{where}: bad placeholder syntax ({exc}); write a literal brace as {{{{ or }}}}") from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            if not name.isidentifier() or spec or conversion:
                raise TemplateError(f"{where}: placeholder {{{name}}} must be a plain name like {{brand}}")
            if name not in declared:
                raise TemplateError(f"{where}: unknown placeholder {{{name}}} (declare it in required or [optional])")
        parts.append((literal, name))
    return tuple(parts)


def _adapters(data: dict[str, Any], path: Path, adapter_names: Collection[str]) -> tuple[str, ...]:
    names = data.get("adapters", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TemplateError(f"{path}: 'adapters' must be a list of adapter names")
    unknown = sorted(set(names) - set(adapter_names))
    if unknown:
        known = ", ".join(sorted(adapter_names)) or "none configured"
        raise TemplateError(f"{path}: unknown adapter {unknown[0]!r} (declare it in [lora.adapters]; known: {known})")
    return tuple(sorted(set(names)))


def _placements(data: dict[str, Any], path: Path, placement_names: Collection[str]) -> tuple[str, ...]:
    names = data.get("placements", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TemplateError(f"{path}: 'placements' must be a list of placement names")
    unknown = [n for n in names if n not in placement_names]
    if unknown:
        known = ", ".join(placement_names) or "none configured"
        raise TemplateError(
            f"{path}: unknown placement {unknown[0]!r} (declare it in [placements.sizes]; known: {known})"
        )
    return tuple(n for n in placement_names if n in names)


def load_template(
    path: Path, bucket_names: set[str], adapter_names: Collection[str] = (), placement_names: Collection[str] = ()
) -> Template:
    category = path.stem
    if not CATEGORY_RE.match(category):
        raise TemplateError(f"{path}: file name must be a category like 'shoes.toml' (lowercase letters, digits, _ -)")
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: invalid TOML ({exc})") from None
    unknown = set(data) - _FIELDS
    if unknown:
        raise TemplateError(f"{path}: unknown field(s) {sorted(unknown)} (allowed: {sorted(_FIELDS)})")
    for name in ("prompt", "negative_prompt", "bucket"):
        if not isinstance(data.get(name), str):
            raise TemplateError(f"{path}: missing field '{name}' (a string)")
    required = data.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) and r.isidentifier() for r in required):
        raise TemplateError(f"{path}: 'required' must be a list of attribute names")
    optional = data.get("optional", {})
    if not isinstance(optional, dict) or not all(isinstance(v, str) for v in optional.values()):
        raise TemplateError(f"{path}: [optional] must map attribute names to default strings")
    quality = data.get("quality", {})
    if not isinstance(quality, dict):
        raise TemplateError(f"{path}: [quality] must be a table of threshold overrides")
    if set(required) & set(optional):
        raise TemplateError(f"{path}: {sorted(set(required) & set(optional))} are both required and optional")
    if data["bucket"] not in bucket_names:
        raise TemplateError(f"{path}: bucket {data['bucket']!r} is not a configured bucket {sorted(bucket_names)}")
    declared = set(required) | set(optional)
    adapters = _adapters(data, path, adapter_names)
    placements = _placements(data, path, placement_names)
    return Template(
        category=category,
        path=str(path),
        prompt=_parse(data["prompt"], f"{path}: prompt", declared),
        negative_prompt=_parse(data["negative_prompt"], f"{path}: negative_prompt", declared),
        required=tuple(required),
        optional=dict(optional),
        bucket=data["bucket"],
        quality=quality,
        version=hashlib.sha256(raw).hexdigest()[:12],
        adapters=adapters,
        placements=placements,
    )


def load_templates(
    directory: str | Path,
    bucket_names: set[str],
    adapter_names: Collection[str] = (),
    placement_names: Collection[str] = (),
) -> dict[str, Template]:
    """Load and validate every `<category>.toml` in `directory`; the first invalid file stops the run.
    `adapter_names` / `placement_names`: the configured [lora.adapters] / [placements.sizes] (in config order); a
    template naming another adapter or placement is an error."""
    directory = Path(directory)
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise TemplateError(f"{directory}: no template files (*.toml) found")
    return {t.category: t for t in (load_template(f, bucket_names, adapter_names, placement_names) for f in files)}
