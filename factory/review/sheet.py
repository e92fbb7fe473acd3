"""The review sheet: one static, self-contained HTML page per night listing every SKU in review.

Rendered here as plain HTML (every manifest string — sku ids, prompts, reasons — goes through `html.escape`; no
manifest value ever reaches the page's script as code), plus a small inline script for the filters, the approve /
reject buttons and keys, and the CSV export (a Blob download: no server). A Content-Security-Policy lets only that
script (by its hash) run. Thumbnails are relative links to the night's PNGs on a local output, or embedded data URIs
(downscaled) when the output is an object store, so the page opens from disk either way.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import io
from collections import Counter
from dataclasses import dataclass
from importlib import resources

from factory.io.records import ImageRecord
from factory.review import manifests
from factory.review.manifests import NightOutputs

THUMB_PX = 256  # longest side of an embedded thumbnail (object stores only)
_SCORES = (  # (column, label, format) shown under each image
    ("clip_score", "clip", "{:.3f}"),
    ("iqa_mean", "iqa", "{:.3f}"),
    ("unsafe_score", "unsafe", "{:.3f}"),
    ("laplacian_var", "sharpness", "{:.0f}"),
    ("pixel_std", "std", "{:.1f}"),
    ("overexposed_frac", "over", "{:.3f}"),
    ("underexposed_frac", "under", "{:.3f}"),
    ("saturation_mean", "sat", "{:.3f}"),
)


def e(value: object) -> str:
    """Escape any value for HTML text and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


@dataclass
class Sku:
    sku_id: str
    category: str
    variants: list[ImageRecord]

    @property
    def reasons(self) -> list[str]:
        """Reason codes over all variants (a SKU's filter tags), in first-seen order."""
        seen: dict[str, None] = {}
        for r in self.variants:
            for code in (r.reason or "").split(","):
                if code:
                    seen.setdefault(code, None)
        return list(seen)

    @property
    def decision(self) -> str:
        return self.variants[0].review_decision or ""


def group_skus(review: list[ImageRecord]) -> list[Sku]:
    skus: dict[str, Sku] = {}
    for r in sorted(review, key=lambda r: r.key):
        skus.setdefault(r.sku_id, Sku(r.sku_id, r.category, [])).variants.append(r)
    return list(skus.values())


def write_sheet(night: NightOutputs) -> str:
    """Render the sheet of `night`'s review manifest and write it (atomically); returns its path or URL."""
    review = manifests.read_images(night, "review")
    run_ids = sorted({r.run_id for r in review}) or [manifests.read_run_info(night).get("run_id", "")]
    page = render(night, group_skus(review), run_ids[-1])  # resumed rows keep their first run's id: the newest
    return manifests.write_text(night, manifests.SHEET, page)


def render(night: NightOutputs, skus: list[Sku], run_id: str) -> str:
    script = resources.files("factory.review").joinpath("sheet.js").read_text("utf-8")
    style = resources.files("factory.review").joinpath("sheet.css").read_text("utf-8")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    csp = (
        f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src file: data: 'self'; "
        "base-uri 'none'; form-action 'none'"
    )
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cards = "\n".join(_card(night, s) for s in skus) or '<p class="empty">No SKU is in review for this night.</p>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{e(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>adfactory review {e(night.date)}</title>
<style>{style}</style></head>
<body data-date="{e(night.date)}" data-run-id="{e(run_id)}">
<header class="top">
  <h1>Review {e(night.date)}</h1>
  <p class="meta">run <code>{e(run_id)}</code> · {len(skus)} SKUs in review · sheet written {e(generated)}</p>
  <p class="tally"><span id="n-approve">0</span> approved · <span id="n-reject">0</span> rejected ·
    <span id="n-open">{len(skus)}</span> undecided · <span id="n-shown">{len(skus)}</span> shown
    <button type="button" id="export">Export decisions (CSV)</button></p>
  {_filters("category", "Category", Counter(s.category for s in skus))}
  {_filters("reason", "Reason", Counter(code for s in skus for code in s.reasons))}
  <p class="keys">Keys: <kbd>j</kbd>/<kbd>k</kbd> next/previous · <kbd>a</kbd> approve · <kbd>r</kbd> reject ·
    <kbd>u</kbd> undecided · <kbd>n</kbd> note. Export, then <code>adfactory review apply --date {e(night.date)}
    decisions.csv</code>.</p>
</header>
<main id="skus">
{cards}
</main>
<script>{script}</script>
</body></html>
"""


def _filters(kind: str, label: str, counts: Counter[str]) -> str:
    total = sum(counts.values()) if kind == "category" else None
    chips = [
        f'<button type="button" class="chip active" data-filter="{kind}" data-value="">all'
        f"{'' if total is None else f' <span class=count>{total}</span>'}</button>"
    ]
    chips += [
        f'<button type="button" class="chip" data-filter="{kind}" data-value="{e(v)}">{e(v)} '
        f'<span class="count">{n}</span></button>'
        for v, n in sorted(counts.items())
    ]
    return f'<nav class="filters" data-kind="{kind}"><span class="label">{label}</span> {"".join(chips)}</nav>'


def _card(night: NightOutputs, s: Sku) -> str:
    first = s.variants[0]
    reasons = " ".join(f'<span class="reason">{e(c)}</span>' for c in s.reasons)
    figures = _figures(night, s.variants)
    return f"""<article class="sku" tabindex="-1" data-sku="{e(s.sku_id)}" data-category="{e(s.category)}"
  data-reasons="{e(" ".join(s.reasons))}" data-decision="{e(s.decision)}">
 <header><h2 class="sku-id">{e(s.sku_id)}</h2> <span class="category">{e(s.category)}</span> {reasons}
  <span class="state"></span></header>
 <p class="prompt"><b>prompt</b> {e(first.prompt)}</p>
 <p class="negative"><b>negative</b> {e(first.negative_prompt)}</p>
 <div class="variants">{figures}</div>
 <div class="actions"><button type="button" class="approve">Approve <kbd>a</kbd></button>
  <button type="button" class="reject">Reject <kbd>r</kbd></button>
  <input type="text" class="note" maxlength="500" placeholder="note (optional)" value="{e(first.review_note)}"></div>
</article>"""


def _figures(night: NightOutputs, images: list[ImageRecord]) -> str:
    """The SKU's images: one figure each; with ad placements, one group per variant holding its placements (in
    the manifests' order: by placement name), so a reviewer sees a variant's crops side by side."""
    if not any(r.placement for r in images):
        return "\n".join(_figure(night, r) for r in images)
    by_variant: dict[int, list[ImageRecord]] = {}
    for r in images:
        by_variant.setdefault(r.variant, []).append(r)
    return "\n".join(
        f'<section class="placements" data-variant="{v}"><h3>v{v} · {len(rs)} placements</h3>'
        + "".join(_figure(night, r) for r in rs)
        + "</section>"
        for v, rs in by_variant.items()
    )


def _figure(night: NightOutputs, r: ImageRecord) -> str:
    scores = " · ".join(
        f"{label} {fmt.format(getattr(r, col))}" for col, label, fmt in _SCORES if getattr(r, col) is not None
    )
    repair = f"repaired ×{r.attempts}" if r.repaired else (f"{r.attempts} repair tries" if r.attempts else "")
    name = f" {e(r.placement)}" if r.placement else ""
    caption = (
        f'<figcaption><b>v{r.variant}{name}</b> {r.width}×{r.height} · <span class="why">{e(r.reason)}</span>'
        f"{' · ' + e(repair) if repair else ''}<br><span class=scores>{e(scores)}</span>"
        f"{f'<br><span class=detail>{e(r.detail)}</span>' if r.detail else ''}</figcaption>"
    )
    placement = f' data-placement="{e(r.placement)}"' if r.placement else ""
    return f'<figure class="variant"{placement}>{_frame(night, r)}{caption}</figure>'


def _frame(night: NightOutputs, r: ImageRecord) -> str:
    if not r.image_path:
        return '<div class="frame missing">no image</div>'
    src = _thumbnail_src(night, r.image_path)
    box = ""
    if r.repair_box and len(r.repair_box) == 4:
        x0, y0, x1, y1 = (int(v) for v in r.repair_box)
        box = (
            f'<svg class="box" viewBox="0 0 {int(r.width)} {int(r.height)}" preserveAspectRatio="none" '
            f'aria-label="repair box"><rect x="{x0}" y="{y0}" width="{max(x1 - x0, 0)}" '
            f'height="{max(y1 - y0, 0)}"/></svg>'
        )
    alt = f"{r.sku_id} variant {r.variant}" + (f" {r.placement}" if r.placement else "")
    return (
        f'<div class="frame" style="aspect-ratio:{int(r.width)}/{int(r.height)}">'
        f'<img src="{e(src)}" alt="{e(alt)}" loading="lazy">{box}</div>'
    )


def _thumbnail_src(night: NightOutputs, image_path: str) -> str:
    """A relative link on a local output; a downscaled PNG data URI on an object store (no credentials in a page)."""
    if night.local_dir is not None:
        return manifests.image_href_from_sheet(image_path)
    from PIL import Image

    with Image.open(io.BytesIO(manifests.image_bytes(night, image_path))) as im:
        im.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
