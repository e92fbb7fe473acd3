"""The one-command device proof (`make bench-gpu`, `bench_gpu --quick`) end to end on this CPU with the tiny
models: every key of the JSON, sane ratios, the same image count in every stage. Speed targets are for a GPU run."""

import json
from pathlib import Path

from factory.tools.benchmarks import gpu_proof
from factory.tools.benchmarks.bench_gpu import main
from tests.conftest import REPO

STAGES = {"machine", "build", "load", "C", "night_repair_off", "night_repair_on", "summary"}
STAGES |= {f"quant_{m}" for m in gpu_proof.QUANT_MODES}


def test_quick_proof_on_cpu_reports_every_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # data/demo.toml, data/models
    out = tmp_path / "bench-gpu-cpu.json"
    main(["--quick", "--device", "cpu", "--json", str(out), "--skus", "8"])
    r = json.loads(out.read_text())
    assert set(r) == STAGES and not [k for k, v in r.items() if "error" in v or "skipped" in v]
    c, off, on, s = r["C"], r["night_repair_off"], r["night_repair_on"], r["summary"]
    assert c["images"] == off["images"] == on["images"] == off["counts"]["images_planned"] > 0
    assert off["counts"]["generation_errors"] == on["counts"]["generation_errors"] == 0
    for night in (off, on):
        assert 0 < night["night_over_C"] <= 1.5 and night["images_per_s"] > 0
        assert set(night["run_json_runtime"]) == {"quantization", "compile", "batch_size", "why"}
    assert on["repair"]["images_attempted"] >= 1 and off["timings"]["repair_s"] == 0
    assert 0 < s["night_over_C_repair_off"] <= 1.5 and 0 < s["night_over_C_repair_on"] <= 1.5
    assert s["device"] == "cpu" and s["peak_tflops"] is None and set(s["fraction_of_peak"].values()) == {None}
    q = s["quantization"]
    assert q["none"]["status"] == q["int8-weight"]["status"] == "ok" and q["fp8"]["status"] == "unavailable"
    assert 0 < q["int8-weight"]["speedup_vs_none"] <= 1.5 and q["int8-weight"]["saved_mib"] > 0
    auto = r["load"]["runtime"]["quantization"]
    assert s["auto_pick"]["quantization"] == auto and "measured on cpu" in s["auto_pick"]["why"]
    assert set(s["max_allocated_gib"]) == {"load", "C", "night_repair_off", "night_repair_on"}
    assert r["load"]["process_peak_rss_gib"] > 0


def test_peak_slug_and_fraction():
    assert gpu_proof.peak_tflops("NVIDIA H200") == gpu_proof.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_proof.peak_tflops("NVIDIA H100 PCIe") == 756.0 and gpu_proof.peak_tflops("NVIDIA L40S") == 362.0
    assert gpu_proof.peak_tflops("NVIDIA GeForce RTX 3090") is None and gpu_proof.peak_tflops(None) is None
    assert gpu_proof.device_slug("NVIDIA H200") == "h200" and gpu_proof.device_slug(None) == "cpu"
    assert gpu_proof.device_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    # the issue's ceiling: 172 img/s is 100 % of an H200's 989 TFLOPS at 5.74 TFLOP per image
    assert abs(gpu_proof.fraction_of_peak(172.3, 989.0) - 1.0) < 0.01
    assert gpu_proof.fraction_of_peak(10.0, None) is None


def test_a_stage_past_the_budget_is_skipped_and_written(tmp_path):
    report = gpu_proof.BudgetReport(tmp_path / "r.json", budget_s=5)
    report.stage("fits", lambda: {"x": 1})
    report.stage("too_long", lambda: {"x": 2}, need_s=60)
    data = json.loads(Path(tmp_path / "r.json").read_text())
    assert data["fits"]["x"] == 1 and "wall budget" in data["too_long"]["skipped"]


def test_the_default_json_never_replaces_another_bench_s_results(tmp_path):
    assert gpu_proof.default_json("l4", tmp_path) == str(tmp_path / "bench-gpu-l4.json")
    (tmp_path / "bench-gpu-h200.json").write_text('{"final_run_compile_full": {}}')
    assert gpu_proof.default_json("h200", tmp_path) == str(tmp_path / "bench-gpu-h200-quick.json")
    (tmp_path / "bench-gpu-l4.json").write_text('{"summary": {}}')  # an earlier quick proof: rewritten
    assert gpu_proof.default_json("l4", tmp_path) == str(tmp_path / "bench-gpu-l4.json")
