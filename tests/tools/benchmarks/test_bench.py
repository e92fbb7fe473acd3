"""The benchmark in quick mode: every configuration runs and the JSON has every field (targets are checked by
running `make bench`, not by timed tests)."""

import json
import subprocess
import sys

from factory.tools.benchmarks.bench import bench, format_table
from tests.conftest import REPO, with_run


def test_bench_quick_reports_every_field(cfg):
    r = bench(with_run(cfg, batch_size=4), n_skus=6, repeats=1, soak=4, sim_skus=4)
    assert set(r["images_per_s"]) == {
        "A_naive",
        "B_seed000_padded",
        "C_bucketed",
        "D_full_no_repair",
        "D_full_with_repair",
        "C_bucketed_fast_numerics",
        "D_full_no_repair_fast_numerics",
        "C_adapters_switching_every_batch",
        "C_adapter_always_on",
    }
    assert all(v > 0 for v in r["images_per_s"].values())
    assert set(r["ratios"]) == {
        "C/A",
        "C/B",
        "D/C",
        "D_repair/C",
        "C_fast/A",
        "D_fast/C_fast",
        "C_adapters_switching/C",
    }
    a = r["adapters"]
    assert a["switches_timed"] >= 2 and a["switch_ms_mean"] > 0 and a["soak"]["batches"] == 4
    assert r["pixel_waste"]["C"] >= 1.0 and r["pixel_waste"]["B"] >= r["pixel_waste"]["C"]
    q = r["quantization"]
    assert q["default_mode"] == "none" and q["compared_mode"] == "int8-dynamic"
    assert q["linear_weight_bytes_quantized"] < q["linear_weight_bytes_float"]
    assert q["bytes_ratio_quantized_layers"] <= 0.3 and q["psnr_db_min"] > 20
    assert r["soak"]["batches"] == 4 and r["soak"]["rss_mb_at_100pct"] > 0
    assert r["peak_rss_mb"] > 0 and r["skus"] == 6 and r["images"] == 7
    sim = r["simulated_device"]
    assert sim["images"] >= 4 and sim["C_images_per_s"] > 0
    for night in (sim["batches_in_flight_1"], sim["batches_in_flight_2"]):
        assert 0 < night["device_busy_fraction"] <= 1 and 0 < night["night_over_generator"] <= 1.2
        assert set(night["host_ms_per_image"]) == {"score", "repair", "encode_write_wait"}
    assert set(sim["repair_on"]) == {"between-calls", "split"}
    for night in sim["repair_on"].values():
        assert 0 < night["night_over_generator"] <= 1.2 and night["rounds"] == [night["night_over_generator"]]
        assert night["repair"]["images"] == night["repair"]["attempts"] >= 0
    assert "C/A" in format_table(r) and "simulated device" in format_table(r)


def test_bench_cli_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    config = tmp_path / "c.toml"
    config.write_text((REPO / "tests" / "bench_quick.toml").read_text())
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "factory.cli",
            "dev",
            "bench",
            "--skus",
            "4",
            "--sim-skus",
            "0",  # the simulated-device night is covered in-process above
            "--config",
            str(config),
            "--json",
            out,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "images/s" in res.stdout and json.loads(out.read_text())["skus"] == 4
