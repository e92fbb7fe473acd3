"""jobs/ray_job.py under `ray job submit`: output and model paths that cannot work in a job are refused (exit 2);
a real two-node loopback cluster runs a night submitted with --working-dir (slow: `make test-all`)."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import DATE, REPO, SAMPLE_SCHEMA, TEST_BUCKETS, sample_rows, write_skus
from tests.jobs.ray_cluster import LoopbackCluster

JOB_ENV = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"metadata": {"job_submission_id": "raysubmit_test"}})}


def _job(*args, cwd, env=JOB_ENV):
    """jobs/ray_job.py as a Ray job's entrypoint would run it (the job supervisor's environment variable set)."""
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "ray_job.py"), *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _night_config(path: Path, cfg, **model) -> Path:
    """A night config with absolute model paths (those may also be given as `model` overrides)."""
    m = {"pipeline": cfg.model.pipeline, "clip_pretrained": cfg.model.clip_pretrained}
    m |= {"clip_config_dir": cfg.model.clip_config_dir, **model}
    lines = ["[model]", *(f'{k} = "{v}"' for k, v in m.items())]
    lines += ["[paths]", f'templates = "{REPO / "templates"}"', "[quality]", "clip_threshold = -0.15"]
    lines += ["[repair]", 'mode = "off"', "[run]", 'executor = "ray"', "workers = 3", "batch_size = 4"]
    for b in TEST_BUCKETS:
        lines += ["[[planner.buckets]]", f'name = "{b.name}"', f"width = {b.width}", f"height = {b.height}"]
        lines.append(f"steps = {b.steps}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_relative_output_is_refused_under_a_ray_job(cfg, day_file, tmp_path):
    conf = _night_config(tmp_path / "night.toml", cfg)
    r = _job("run", "--date", DATE, "--skus", str(day_file), "--config", str(conf), "--output", "out", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: --output out is relative: under a Ray job") and r.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_an_output_inside_the_job_working_dir_and_missing_models_are_refused(cfg, day_file, tmp_path):
    conf = _night_config(tmp_path / "night.toml", cfg)  # sets no [paths] output: the default is in the repo
    r = _job("run", "--date", DATE, "--skus", str(day_file), "--config", str(conf), cwd=REPO)
    assert r.returncode == 2 and "inside the Ray job's temporary working directory" in r.stderr, r.stderr
    conf = _night_config(tmp_path / "rel.toml", cfg, pipeline="models/sd")  # relative to the (uploaded) config
    r = _job(
        "run", "--date", DATE, "--skus", str(day_file), "--config", str(conf), "--output", str(tmp_path / "o"), cwd=REPO
    )
    assert r.returncode == 2 and "model.pipeline" in r.stderr and "does not exist" in r.stderr, r.stderr


def test_outside_a_ray_job_the_entry_point_is_the_cli(cfg, tmp_path):
    r = _job("validate", "--date", DATE, "--skus", str(tmp_path / "none.parquet"), cwd=tmp_path, env={})
    assert r.returncode == 2 and "SKU file not found" in r.stderr  # the CLI's own check, not the job's


def _manifest(out: Path, kind: str) -> list[dict]:
    """Rows of one manifest under `out`, whatever the layout (a file per date or a table per kind)."""
    files = [p for p in out.rglob("*.parquet") if "_parts" not in p.parts and (p.stem == kind or kind in p.parts)]
    return [row for f in sorted(files) for row in pq.read_table(f).to_pylist()]


@pytest.mark.slow
def test_a_night_on_a_two_node_cluster_submitted_with_ray_job_submit(cfg, tmp_path):
    day = write_skus(tmp_path / "skus" / f"{DATE}.parquet", sample_rows(), SAMPLE_SCHEMA)
    conf, out = _night_config(tmp_path / "night.toml", cfg), tmp_path / "out"
    cluster = LoopbackCluster()
    try:
        cluster.start_head(num_cpus=2)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_cpus(3)  # 3 workers x 1 CPU only fit when the second node has joined
        args = ["run", "--date", DATE, "--skus", str(day), "--config", str(conf)]
        r = cluster.submit(REPO, sys.executable, "jobs/ray_job.py", *args, "--output", str(out))
        assert r.returncode == 0 and "succeeded" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
        images = _manifest(out, "approved") + _manifest(out, "review")
        assert len(images) == 9 and len({i["sku_id"] for i in images}) == 8  # 8 valid SKUs, one with 2 variants
        assert len(_manifest(out, "rejected")) == 4
        assert len(list(out.rglob("*.png"))) == 9  # written by workers on both nodes into the shared output
        run_json = json.loads(next(out.rglob("run.json")).read_text())
        assert run_json["executor"] == {"executor": "ray", "workers": 3, "gpus_per_worker": 0, "workers_lost": 0}
        r = cluster.submit(REPO, sys.executable, "jobs/ray_job.py", *args, "--output", "relative-out")
        assert r.returncode != 0 and "--output relative-out is relative" in r.stdout + r.stderr
    finally:
        cluster.stop()
