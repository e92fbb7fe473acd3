"""A null night (no model: orchestration, PNG writes and storage only) on a real two-node loopback Ray cluster, with
the driver's memory measured: `adfactory dev scale-bench null-night` as its own process joined to the cluster, the
workers on both nodes (slow: `make test-all`).

The size is ADFACTORY_CLUSTER_NIGHT_ROWS: by default 41 000 rows, 49 873 images (the issue's 50 k-image night; ~2 min
of night plus ~1 min of cluster on 2 shared cores); a smaller one for a quick look, e.g. 4000. The figures are
printed (run with -s) and recorded in docs/performance-driver.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from factory.tools.benchmarks.scale_bench import BENCH_DATE
from tests.conftest import cli_args, cli_env
from tests.jobs.ray_cluster import ray_env

ROWS = int(os.environ.get("ADFACTORY_CLUSTER_NIGHT_ROWS", "41000"))
DRIVER_RSS_BOUND_MB = 1024  # issue bound: 1.0 GB for a 200 k-image night; this night is 4-40x smaller


@pytest.mark.slow  # a two-node cluster and a 50 k-image night (~3 min on 2 cores): make test-all
def test_a_null_night_on_two_nodes_keeps_the_driver_small(two_nodes, tmp_path):
    result = tmp_path / "bench.json"
    args = cli_args("dev", "scale-bench", "null-night", "--rows", str(ROWS), "--workdir", str(tmp_path))
    args += ["--executor", "ray", "--workers", "2", "--batch-size", "16", "--json", str(result)]
    env = {**cli_env(), **ray_env(), "RAY_ADDRESS": f"127.0.0.1:{two_nodes.gcs_port}"}
    env["PYTHONPATH"] = cli_env()["PYTHONPATH"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    bench = json.loads(result.read_text())
    out = tmp_path / "out" / BENCH_DATE
    run_json = json.loads((out / "run.json").read_text())
    driver, counts = run_json["driver"], run_json["counts"]
    print(
        f"\ncluster null night: {ROWS} rows, {counts['images_generated']} images, {bench['wall_s']} s, "
        f"driver peak RSS {driver['peak_rss_mb']} MB, driver CPU {driver['cpu_ms_per_image']} ms/image, "
        f"load {bench['load_average']}"
    )
    # two 1-CPU workers on a 1 + 1 CPU cluster: one on each node
    assert run_json["executor"] == {"executor": "ray", "workers": 2, "gpus_per_worker": 0, "workers_lost": 0}
    assert counts["images_generated"] == counts["images_planned"] == bench["images"] > ROWS
    assert counts["generation_errors"] == 0 and (out / "_SUCCESS").is_file()
    assert len(list((out / "images").rglob("*.png"))) == counts["images_generated"]
    assert 0 < driver["peak_rss_mb"] <= DRIVER_RSS_BOUND_MB
    shutil.rmtree(tmp_path / "out")  # 50 k PNGs: not left in pytest's kept temp dirs
