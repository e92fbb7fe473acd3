"""End to end: real parquet in, a real local Ray cluster, real tiny pipelines, parquet manifests out."""

import hashlib
import json
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from factory.io.layout import read_manifest
from factory.io.records import MANIFEST_SCHEMAS
from factory.io.storage import open_store
from factory.job.run import run
from tests.conftest import DATE, SAMPLE_SCHEMA, cli, demo_config_file, make_cfg, sample_rows, with_run, write_skus


def image_digests(date_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(date_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((date_dir / "images").rglob("*.png"))
    }


def manifest_rows(output: str, name: str) -> list[dict]:
    rows = read_manifest(open_store(output), name, DATE).to_pylist()
    return [{k: v for k, v in r.items() if k not in ("run_id", "source_file")} for r in rows]


@pytest.fixture(scope="module")
def ray_run(tiny_models, tmp_path_factory, ray_cluster):
    """The reference run: Ray executor, 2 workers, batch size 4."""
    tmp = tmp_path_factory.mktemp("ray_run")
    cfg = with_run(make_cfg(tiny_models, tmp), executor="ray", workers=2, batch_size=4)
    write_skus(Path(cfg.paths.skus) / f"{DATE}.parquet", sample_rows(), SAMPLE_SCHEMA)
    return cfg, run(cfg, DATE)


def test_manifests_schemas_and_conservation(ray_run):
    cfg, summary = ray_run
    out = Path(summary.output)
    date_dir = out / DATE
    tables = {name: read_manifest(open_store(summary.output), name, DATE) for name in MANIFEST_SCHEMAS}
    for name, table in tables.items():
        assert table.schema.equals(MANIFEST_SCHEMAS[name], check_metadata=False), name
    approved = tables["approved"].to_pylist()
    review = tables["review"].to_pylist()
    rejected = tables["rejected"].to_pylist()

    # every unique input SKU in exactly one manifest; every input row accounted for
    input_ids = {r["sku_id"] for r in sample_rows()}
    a, v = {r["sku_id"] for r in approved}, {r["sku_id"] for r in review}
    j = {r["sku_id"] for r in rejected if r["reason"] != "duplicate_sku_id"}
    assert not (a & v) and not (a & j) and not (v & j)
    assert a | v | j == input_ids
    assert len(approved) + len(review) == 9  # 8 valid SKUs, one with 2 variants
    assert len(rejected) == 4 and {r["reason"] for r in rejected} == {
        "missing_sku_id",
        "unknown_category",
        "missing_attribute",
        "duplicate_sku_id",
    }
    assert a and v, "the test threshold should split the sample between approved and review"
    assert all(r["reason"] for r in review)

    # images exist, inside the date directory, with the planned size; image_path is relative to the output root
    from PIL import Image

    for r in approved + review:
        path = (out / r["image_path"]).resolve()
        assert path.is_relative_to(date_dir.resolve()) and path.is_file()
        assert Image.open(path).size == (r["width"], r["height"])
    assert {r["bucket"] for r in approved + review} >= {"small", "medium", "poster"}
    assert not list(Path(cfg.paths.output).parent.rglob("passwd*"))

    run_json = json.loads((date_dir / "run.json").read_text())
    assert run_json["counts"]["images_planned"] == 9 and run_json["images_per_s"] > 0
    assert run_json["config"]["run"]["executor"] == "ray" and run_json["executor"]["workers"] == 2
    assert {"read_s", "plan_s", "generate_s", "score_s", "write_images_s", "total_s"} <= set(run_json["timings"])
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize(
    "executor, workers, batch_size",
    [("local", 1, 1), ("ray", 1, 3), ("local", 1, 4)],
)
def test_same_bytes_whatever_batch_size_workers_and_executor(
    ray_run, tiny_models, tmp_path, request, executor, workers, batch_size
):
    ref_cfg, ref = ray_run
    if (executor, workers, batch_size) == ("local", 1, 4):
        _, summary = request.getfixturevalue("local_night")  # the session's night of exactly this config
    else:
        cfg = with_run(make_cfg(tiny_models, tmp_path), executor=executor, workers=workers, batch_size=batch_size)
        summary = run(cfg, DATE, skus_path=Path(ref_cfg.paths.skus) / f"{DATE}.parquet")
    assert image_digests(Path(summary.output) / DATE) == image_digests(Path(ref.output) / DATE)
    for name in MANIFEST_SCHEMAS:
        assert manifest_rows(summary.output, name) == manifest_rows(ref.output, name)


def test_cli_bad_input_is_one_sentence_and_writes_nothing(tmp_path):
    bad = tmp_path / "skus.parquet"
    bad.write_text("this is not parquet")
    out = tmp_path / "out"
    res = cli("run", "--date", DATE, "--skus", str(bad), "--output", str(out), "--executor", "local")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and str(bad) in res.stderr
    assert "Traceback" not in res.stderr and not out.exists()
    res = cli("run", "--date", "2026-13-45", "--output", str(out))
    assert res.returncode == 2 and "YYYY-MM-DD" in res.stderr
    res = cli("run", "--date", DATE, "--skus", str(tmp_path / "missing.parquet"), "--output", str(out))
    assert res.returncode == 2 and "SKU file not found" in res.stderr and not out.exists()


def test_cli_validate_prints_rejections_and_writes_nothing(day_file, cfg, tmp_path):
    res = cli("validate", "--date", DATE, "--skus", str(day_file))
    assert res.returncode == 0, res.stderr
    assert "rejected rows: 4" in res.stdout and "unknown_category" in res.stdout
    assert "9 images planned" in res.stdout
    assert not Path(cfg.paths.output).exists()


def test_cli_run_on_its_own_local_ray_cluster(day_file, cfg, tmp_path):
    """The command cron runs: `adfactory run`, starting its own local Ray cluster, though an earlier `ray start`
    left a `ray_current_cluster` file naming a cluster that is gone (it must not be joined); its log is clean
    (stderr is a pipe, not a TTY) and its outputs readable as the umask says."""
    config = demo_config_file(tmp_path / "factory.toml", cfg)
    out = tmp_path / "cli-out"
    ray_tmp = Path(tempfile.mkdtemp(prefix="adf-ray-", dir="/tmp"))  # short: Ray's socket paths live under it
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")  # stale, from an earlier `ray start`
    try:
        res = cli(
            "run", "--date", DATE, "--skus", str(day_file), "--output", str(out), "--config", str(config),
            "--workers", "2", "--batch-size", "2",
            cwd=tmp_path,
            env={"RAY_ADDRESS": "", "RAY_TMPDIR": str(ray_tmp)},
            umask=0o022,
        )  # fmt: skip
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "approved SKUs" in res.stdout and "images/s" in res.stdout
    run_json = json.loads((out / DATE / "run.json").read_text())
    assert run_json["executor"]["executor"] == "ray" and run_json["counts"]["rejected_rows"] == 4
    # cron log: no library noise, no colour codes, nothing from workers (last line: 100 %)
    for noise in ("_pytree", "torchao", "Token authentication", "\x1b[", "(Worker", "(pid="):
        assert noise not in res.stderr, (noise, res.stderr[-2000:])
    assert "(100%)" in res.stderr.strip().splitlines()[-1]
    for p in (out / DATE).rglob("*"):  # images, parts, manifests, run.json, _SUCCESS (written by Ray workers too)
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p
