"""`adfactory report`: one static, self-contained HTML page over the last N nights of an output root.

Built only from the manifest tables (outcomes per category, reject and review reasons) and each night's run.json
(status, wall time, images/s, workers), with pyarrow, so it works on a local root and on s3:// alike. Charts are
inline SVG; the page has no script and loads nothing (its CSP says so). Cost per image = device-hour price x
workers (one device each) x the night's wall time / images generated.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from factory.io import layout
from factory.io.records import SIBLING_IN_REVIEW
from factory.io.storage import Store

REPORT_FILE = "report.html"  # under the output root
OUTCOMES = ("first_pass", "repaired", "review")


@dataclass
class NightStats:
    date: str
    status: str  # ok | failed | incomplete (manifests without a run.json: a night that stopped mid-finalize)
    run_id: str = ""
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)  # category -> first_pass/repaired/review
    rejected: Counter[str] = field(default_factory=Counter)  # input rows per reason
    review_reasons: Counter[str] = field(default_factory=Counter)  # review images per gate reason
    images_generated: int = 0
    total_s: float = 0.0
    images_per_s: float = 0.0
    workers: int = 1

    @property
    def images(self) -> int:
        return sum(sum(c.values()) for c in self.outcomes.values())

    def share(self, outcome: str, category: str | None = None) -> float:
        rows = [self.outcomes[category]] if category else list(self.outcomes.values())
        total = sum(sum(c.values()) for c in rows)
        return sum(c[outcome] for c in rows) / total if total else 0.0

    def cost_per_image(self, device_hour_price: float) -> float | None:
        if not device_hour_price or not self.images_generated:
            return None
        return device_hour_price * self.workers * self.total_s / 3600 / self.images_generated


def night_dates(store: Store) -> list[str]:
    """Dates with a manifest partition (every night that got as far as writing its manifests), ascending."""
    dates = set()
    for kind in layout.MANIFEST_KINDS:
        for path in store.list(layout.table_dir(kind)):
            part = path.split("/")[2] if path.count("/") >= 3 else ""
            if part.startswith(f"{layout.PARTITION_COLUMN}="):
                dates.add(part.split("=", 1)[1])
    return sorted(dates)


def _columns(store: Store, kind: str, date: str, columns: list[str]) -> dict[str, list]:
    try:
        with store.open_input_file(layout.partition_path(kind, date)) as f:
            return pq.read_table(f, columns=columns).to_pydict()
    except FileNotFoundError:
        return {c: [] for c in columns}


def night_stats(store: Store, date: str) -> NightStats:
    try:
        info = json.loads(store.get_bytes(layout.run_info_path(date)))
    except FileNotFoundError:
        info = {}
    s = NightStats(date, info.get("status", "incomplete"), info.get("run_id", ""))
    s.images_generated = int(info.get("counts", {}).get("images_generated", 0))
    s.total_s = float(info.get("timings", {}).get("total_s", 0.0))
    s.images_per_s = float(info.get("images_per_s", 0.0))
    s.workers = int(info.get("config", {}).get("run", {}).get("workers", 1))
    approved = _columns(store, "approved", date, ["category", "repaired"])
    for cat, repaired in zip(approved["category"], approved["repaired"]):
        s.outcomes.setdefault(cat, Counter())["repaired" if repaired else "first_pass"] += 1
    review = _columns(store, "review", date, ["category", "reasons"])
    for cat, reasons in zip(review["category"], review["reasons"]):
        s.outcomes.setdefault(cat, Counter())["review"] += 1
        s.review_reasons.update(reasons or [SIBLING_IN_REVIEW])
    s.rejected.update(_columns(store, "rejected", date, ["reason"])["reason"])
    return s


def collect(store: Store, nights: int) -> list[NightStats]:
    """The last `nights` nights with outputs, oldest first."""
    return [night_stats(store, d) for d in night_dates(store)[-nights:]]


def write_report(store: Store, nights: int, device_hour_price: float = 0.0) -> str:
    """Render the report of the last `nights` nights to `<output>/report.html` (atomically); returns its URL."""
    page = render(collect(store, nights), store.url(""), device_hour_price)
    store.put_bytes(REPORT_FILE, page.encode("utf-8"))
    return store.url(REPORT_FILE)


e = html.escape


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _cell(value: str, key: str, date: str, category: str = "") -> str:
    cat = f' data-category="{e(category)}"' if category else ""
    return f'<td data-key="{e(key)}" data-date="{e(date)}"{cat}>{e(value)}</td>'


def _nights_table(stats: list[NightStats], price: float) -> str:
    head = "<tr><th>night</th><th>status</th><th>images</th>" + "".join(
        f"<th>{o.replace('_', ' ')}</th>" for o in OUTCOMES
    )
    head += "<th>rejected rows</th><th>images/s</th><th>cost / image</th></tr>"
    rows = []
    for s in stats:
        cost = s.cost_per_image(price)
        cells = [_cell(s.status, "status", s.date), _cell(str(s.images), "images", s.date)]
        cells += [_cell(_pct(s.share(o)), f"{o}_share", s.date) for o in OUTCOMES]
        cells += [_cell(str(sum(s.rejected.values())), "rejected", s.date)]
        cells += [_cell(f"{s.images_per_s:.2f}", "images_per_s", s.date)]
        cells += [_cell("—" if cost is None else f"{cost:.5f}", "cost_per_image", s.date)]
        cls = ' class="failed"' if s.status != "ok" else ""
        rows.append(f"<tr{cls}><th>{e(s.date)}</th>{''.join(cells)}</tr>")
    return f'<table id="nights">{head}{"".join(rows)}</table>'


def _category_table(stats: list[NightStats]) -> str:
    cats = sorted({c for s in stats for c in s.outcomes})
    head = "<tr><th>category</th>" + "".join(f"<th>{e(s.date)}</th>" for s in stats) + "</tr>"
    rows = []
    for cat in cats:
        cells = []
        for s in stats:
            if cat not in s.outcomes:
                cells.append("<td>—</td>")
                continue
            approved = s.share("first_pass", cat) + s.share("repaired", cat)
            bar = f'<span class="bar" style="width:{100 * approved:.0f}%"></span>'
            cells.append(_cell(_pct(approved), "approve_share", s.date, cat).replace("</td>", f"{bar}</td>"))
        rows.append(f"<tr><th>{e(cat)}</th>{''.join(cells)}</tr>")
    return f'<table id="categories">{head}{"".join(rows)}</table>'


def _reason_table(stats: list[NightStats], attr: str, table_id: str) -> str:
    reasons = sorted({r for s in stats for r in getattr(s, attr)})
    head = "<tr><th>reason</th>" + "".join(f"<th>{e(s.date)}</th>" for s in stats) + "</tr>"
    rows = [
        f"<tr><th>{e(r)}</th>"
        + "".join(_cell(str(getattr(s, attr)[r]), f"{table_id}:{r}", s.date) for s in stats)
        + "</tr>"
        for r in reasons
    ]
    return f'<table id="{table_id}">{head}{"".join(rows) or "<tr><td>none</td></tr>"}</table>'


def _line_chart(stats: list[NightStats], values: list[float], label: str, fmt: str) -> str:
    """An inline SVG line over the nights (failed nights as red dots)."""
    w, h, pad = 640, 160, 30
    top = max(values, default=0) or 1.0
    n = max(len(values) - 1, 1)
    pts = [(pad + i * (w - 2 * pad) / n, h - pad - v / top * (h - 2 * pad)) for i, v in enumerate(values)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" class="{"ok" if s.status == "ok" else "failed"}">'
        f"<title>{e(s.date)}: {format(v, fmt)}</title></circle>"
        for (x, y), s, v in zip(pts, stats, values)
    )
    axis = f'<text x="{pad}" y="14">{e(label)} (max {format(top, fmt)})</text>'
    return (
        f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img"><polyline points="{line}"/>{dots}{axis}</svg>'
    )


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
table{border-collapse:collapse;margin:8px 0 24px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child{text-align:left}tr.failed{background:#fde2e2}
.bar{display:block;height:4px;background:#3a7d44;margin-top:2px}
svg{border:1px solid #ddd;margin:8px 16px 8px 0}polyline{fill:none;stroke:#2b6cb0;stroke-width:2}
circle.ok{fill:#2b6cb0}circle.failed{fill:#c53030}text{font-size:12px;fill:#444}
"""


def render(stats: list[NightStats], root: str, device_hour_price: float = 0.0) -> str:
    failed = [s.date for s in stats if s.status != "ok"]
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    approve = [s.share("first_pass") + s.share("repaired") for s in stats]
    charts = (
        _line_chart(stats, approve, "approved share", ".1%")
        + _line_chart(stats, [s.share("repaired") for s in stats], "repair share", ".1%")
        + _line_chart(stats, [s.images_per_s for s in stats], "images/s", ".2f")
    )
    price = f"{device_hour_price:g} per device-hour" if device_hour_price else "no device-hour price given"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>adfactory report</title><style>{STYLE}</style></head>
<body data-nights="{len(stats)}">
<h1>adfactory: the last {len(stats)} nights</h1>
<p class="meta">output <code>{e(root)}</code> · cost {e(price)} · written {e(generated)}</p>
<p id="failed">{"Failed or incomplete nights: " + e(", ".join(failed)) if failed else "No failed nights."}</p>
<section>{charts}</section>
<h2>Nights</h2>{_nights_table(stats, device_hour_price)}
<h2>Approved share per category</h2>{_category_table(stats)}
<h2>Review reasons (images)</h2>{_reason_table(stats, "review_reasons", "review")}
<h2>Reject reasons (input rows)</h2>{_reason_table(stats, "rejected", "rejected")}
</body></html>
"""
