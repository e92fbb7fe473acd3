"""Hostile and sloppy input, one case each: a rejected row with a reason, or an up-front one-sentence failure.
Never a write outside the output directory, never a traceback, and the SKU invariant always holds."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.errors import FactoryError
from factory.job.run import run
from tests.conftest import DATE, REPO, read_manifests, with_run, write_skus

GOOD = {"sku_id": "GOOD-1", "category": "toys", "attrs": json.dumps({"product": "car"})}
SCHEMA = pa.schema([("sku_id", pa.string()), ("category", pa.string()), ("attrs", pa.string())])


def _files_outside(root: Path, allowed: list[Path]) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not any(p.is_relative_to(a) for a in allowed)]


def _write(path: Path, how) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    how(path)


def _parquet(rows, schema=None):
    return lambda p: pq.write_table(pa.Table.from_pylist(rows, schema=schema), p)


def _truncated(p: Path) -> None:
    _parquet([GOOD] * 20, SCHEMA)(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


UP_FRONT = {
    "empty file": lambda p: p.write_bytes(b""),
    "not parquet": lambda p: p.write_text("sku_id,category\nA,toys\n"),
    "truncated parquet": _truncated,
    "missing sku_id": _parquet([{"category": "toys"}]),
    "missing category": _parquet([{"sku_id": "A"}]),
    "int sku_id": _parquet([{"sku_id": 1, "category": "toys"}]),
    "list category": _parquet([{"sku_id": "A", "category": ["toys"]}]),
    "attrs of wrong type": _parquet([{"sku_id": "A", "category": "toys", "attrs": 5}]),
}


@pytest.mark.parametrize("case", sorted(UP_FRONT))
def test_file_level_problems_fail_up_front(cfg, tmp_path, case):
    path = tmp_path / "skus" / f"{DATE}.parquet"
    _write(path, UP_FRONT[case])
    with pytest.raises(FactoryError) as info:
        run(with_run(cfg, executor="local"), DATE)
    message = str(info.value)
    assert info.value.exit_code == 2 and str(path) in message and "\n" not in message
    assert not Path(cfg.paths.output).exists()


def test_template_with_a_syntax_error_fails_up_front(cfg, tmp_path, day_file):
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    (templates / "toys.toml").write_text('prompt = "unterminated\n')
    cfg = cfg.__class__(
        **{**cfg.__dict__, "paths": cfg.paths.__class__(cfg.paths.skus, cfg.paths.output, str(templates))}
    )
    with pytest.raises(FactoryError, match="toys.toml: invalid TOML") as info:
        run(with_run(cfg, executor="local"), DATE)
    assert info.value.exit_code == 2 and not Path(cfg.paths.output).exists()


def test_zero_rows_is_an_empty_successful_day(cfg, tmp_path, loaded_worker):
    write_skus(tmp_path / "skus" / f"{DATE}.parquet", [], SCHEMA)
    summary = run(with_run(cfg, executor="local"), DATE, worker=loaded_worker)
    assert summary.counts["input_rows"] == 0 and (Path(summary.output) / DATE / "_SUCCESS").is_file()
    assert read_manifests(summary.output) == {"approved": [], "review": [], "rejected": []}


REJECTED = {
    "null sku_id": ({"sku_id": None}, "missing_sku_id"),
    "empty sku_id": ({"sku_id": ""}, "missing_sku_id"),
    "whitespace sku_id": ({"sku_id": " \t "}, "missing_sku_id"),
    "NUL in sku_id": ({"sku_id": "A\x00B"}, "invalid_sku_id"),
    "newline in sku_id": ({"sku_id": "A\nB"}, "invalid_sku_id"),
    "300-char sku_id": ({"sku_id": "x" * 300}, "invalid_sku_id"),
    "unknown category": ({"category": "spaceships"}, "unknown_category"),
    "invalid JSON attrs": ({"attrs": '{"product": '}, "invalid_attrs"),
    "duplicate sku_id": ({"sku_id": "GOOD-1"}, "duplicate_sku_id"),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_bad_rows_are_rejected_and_the_run_goes_on(cfg, tmp_path, loaded_worker, case):
    change, reason = REJECTED[case]
    rows = [GOOD, {**GOOD, "sku_id": "BAD-1", **change}]
    write_skus(tmp_path / "skus" / f"{DATE}.parquet", rows, SCHEMA)
    summary = run(with_run(cfg, executor="local"), DATE, worker=loaded_worker)
    rejected = read_manifests(summary.output)["rejected"]
    assert [(r["source_row"], r["reason"]) for r in rejected] == [(1, reason)]
    assert summary.counts["approved_skus"] + summary.counts["review_skus"] == 1
    assert not _files_outside(tmp_path, [tmp_path / "out", tmp_path / "skus"])


ACCEPTED = {
    "slash": {"sku_id": "../../../escape/x"},
    "backslash": {"sku_id": "..\\..\\win"},
    "dotdot": {"sku_id": ".."},
    "absolute": {"sku_id": "/etc/passwd"},
    "non-ascii": {"sku_id": "鞋-👟-Ω"},
    "windows CON": {"sku_id": "CON"},
    "windows nul.txt": {"sku_id": "nul.txt"},
    "format syntax in value": {"attrs": json.dumps({"product": "{0.__class__.__mro__} %s %(x)s {product}"})},
    "control characters in value": {"attrs": json.dumps({"product": "car\x1b[31m\r\nred\x00"})},
    "10 kB value": {"attrs": json.dumps({"product": "very long " * 1000})},
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_hostile_but_valid_values_are_just_text(cfg, tmp_path, loaded_worker, case):
    row = {**GOOD, "sku_id": "H-1", **ACCEPTED[case]}
    write_skus(tmp_path / "skus" / f"{DATE}.parquet", [row], SCHEMA)
    summary = run(with_run(cfg, executor="local"), DATE, worker=loaded_worker)
    m = read_manifests(summary.output)
    [out] = m["approved"] + m["review"]
    assert out["sku_id"] == row["sku_id"]
    date_dir = Path(summary.output) / DATE
    image = (Path(summary.output) / out["image_path"]).resolve()
    assert image.is_relative_to(date_dir.resolve()) and image.is_file()
    assert image.parent.name == "toys" and image.name.count(".") == 1
    assert not _files_outside(tmp_path, [tmp_path / "out", tmp_path / "skus"])
    assert not any(c in out["prompt"] for c in "\x00\x1b\r\n")
    if case == "format syntax in value":
        assert "{0.__class__.__mro__} %s %(x)s {product}" in out["prompt"]
    if case == "10 kB value":
        assert out["prompt_truncated"] and out["prompt_tokens"] > 77 and summary.counts["prompts_truncated"] == 1
    else:
        assert out["prompt_truncated"] is False
