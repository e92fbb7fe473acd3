"""Style LoRA adapters per batch, end to end on the tiny model: only the adapted category's images change, the
bytes do not depend on batch size or executor, switches are counted, keys follow the adapter files and weights.

The style LoRAs are random (factory/tools/builders/style_lora.py): these tests prove plumbing, never a style.
"""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.config import AdapterConfig, LoraSection
from factory.errors import EXIT_BAD_INPUT, ConfigError, InputError, TemplateError
from factory.generation.runtime import resolve
from factory.io.layout import read_manifest
from factory.io.storage import open_store
from factory.job import keys
from factory.job.night_plan import plan, summarize
from factory.job.run import run
from factory.tools.builders.style_lora import write_style_lora
from tests.conftest import DATE, REPO, make_cfg, with_run, write_skus

SCHEMA = pa.schema(
    [("sku_id", pa.string()), ("category", pa.string()), ("attrs", pa.string()), ("adapters", pa.string())]
)


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {"style": write_style_lora(root / "style", seed=0).parent, "brand": write_style_lora(root / "brand", seed=1)}


def templates_with(tmp_path: Path, category: str, adapters: list[str]) -> Path:
    """A copy of the repo's templates where `category` names `adapters`."""
    tpl = tmp_path / "templates"
    shutil.copytree(REPO / "templates", tpl)
    f = tpl / f"{category}.toml"
    f.write_text(f"adapters = {json.dumps(adapters)}\n" + f.read_text())
    return tpl


def adapter_cfg(tiny_models, tmp_path, loras, style_weight=0.8, adapters=True):
    cfg = make_cfg(tiny_models, tmp_path)
    cfg = dataclasses.replace(cfg, repair=dataclasses.replace(cfg.repair, mode="off"))
    if not adapters:
        return cfg
    configured = {
        "style": AdapterConfig(str(loras["style"]), style_weight),
        "brand": AdapterConfig(str(loras["brand"])),
    }
    paths = dataclasses.replace(cfg.paths, templates=str(templates_with(tmp_path, "toys", ["style"])))
    return dataclasses.replace(cfg, paths=paths, lora=LoraSection(configured))


def two_category_day(path: Path) -> Path:
    """toys (the template names the style adapter) and food (no adapter; one SKU adds the brand adapter)."""
    rows = [{"sku_id": f"T{i}", "category": "toys", "attrs": json.dumps({"product": f"toy {i}"})} for i in range(3)]
    rows += [{"sku_id": f"F{i}", "category": "food", "attrs": json.dumps({"product": f"dish {i}"})} for i in range(3)]
    rows[-1]["adapters"] = "brand"
    return write_skus(path, rows, SCHEMA)


def digests(summary) -> dict[str, str]:
    images = Path(summary.output) / DATE / "images"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(images.rglob("*.png"))}


def manifest(summary, kind: str) -> list[dict]:
    return read_manifest(open_store(summary.output), kind, DATE).to_pylist()


def run_json(summary) -> dict:
    return json.loads((Path(summary.output) / DATE / "run.json").read_text())


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory, loras):
    """The same day without adapters, and with adapters at batch sizes 1 and 3 (local executor)."""
    day = two_category_day(tmp_path_factory.mktemp("day") / "day.parquet")
    out = {}
    for name, batch_size, on in (("plain", 3, False), ("bs1", 1, True), ("bs3", 3, True)):
        tmp = tmp_path_factory.mktemp(name)
        cfg = with_run(adapter_cfg(tiny_models, tmp, loras, adapters=on), executor="local", batch_size=batch_size)
        out[name] = (cfg, run(cfg, DATE, day))
    return day, out


def test_only_the_adapted_images_change_and_bytes_ignore_batch_size(runs):
    _, r = runs
    plain, bs1, bs3 = (digests(r[n][1]) for n in ("plain", "bs1", "bs3"))
    assert bs1 == bs3 and len(bs1) == 6
    changed = {name.split("-")[0] for name in plain if plain[name] != bs3[name]}
    assert changed == {"T0", "T1", "T2"}  # the category whose template names the adapter; F0, F1 untouched
    # without [lora.adapters] the SKU asking for the brand adapter is rejected, not generated without it
    rejected = manifest(r["plain"][1], "rejected")
    assert [(x["sku_id"], x["reason"]) for x in rejected] == [("F2", "unknown_adapter")]
    rows = manifest(r["bs3"][1], "approved")
    rows += manifest(r["bs3"][1], "review")
    by_sku = {row["sku_id"]: row["adapters"] for row in rows}
    assert by_sku == {
        "T0": ["style@0.8"],
        "T1": ["style@0.8"],
        "T2": ["style@0.8"],
        "F0": [],
        "F1": [],
        "F2": ["brand@1.0"],
    }


def test_run_json_counts_switches(runs):
    _, r = runs
    info = run_json(r["bs3"][1])["adapters"]
    # one worker, batches ordered by adapter set (none first): one switch per distinct set
    assert info["sets"] == ["brand@1.0", "style@0.8"] and info["switches"] == 2 and info["images_with_adapters"] == 4
    assert info["switch_s"] >= 0 and info["load_s"] > 0 and set(info["configured"]) == {"style", "brand"}
    plain = run_json(r["plain"][1])["adapters"]
    assert plain["switches"] == 0 and plain["sets"] == []


def test_ray_executor_gives_the_same_bytes(runs, tiny_models, tmp_path, loras, ray_cluster):
    day, r = runs
    cfg = with_run(adapter_cfg(tiny_models, tmp_path, loras), executor="ray", workers=1, batch_size=2)
    summary = run(cfg, DATE, day)
    assert digests(summary) == digests(r["bs3"][1])


def test_keys_follow_adapter_weight_and_file(tiny_models, tmp_path, loras):
    day = two_category_day(tmp_path / "day.parquet")
    brand = tmp_path / "brand.safetensors"
    shutil.copy(loras["brand"], brand)

    def cache_keys(style_weight, tag=""):
        cfg = adapter_cfg(tiny_models, tmp_path / f"c{style_weight}{tag}", loras, style_weight)
        cfg.lora.adapters["brand"] = AdapterConfig(str(brand))
        mkey = keys.model_key(cfg, resolve(cfg, "cpu"))
        fps = keys.adapter_fingerprints(cfg)
        return {t.sku_id: keys.cache_key(t, mkey, fps) for t in plan(cfg, DATE, day).tasks}

    base, reweighted = cache_keys(0.8), cache_keys(0.5)
    assert {s for s in base if base[s] != reweighted[s]} == {"T0", "T1", "T2"}
    brand.write_bytes(brand.read_bytes()[:-8] + bytes(8))  # other bytes, same size and name
    refiled = cache_keys(0.8, tag="refiled")
    assert {s for s in base if base[s] != refiled[s]} == {"F2"}
    plain = adapter_cfg(tiny_models, tmp_path / "plain", loras, adapters=False)
    mkey = keys.model_key(plain, resolve(plain, "cpu"))
    no_adapters = {t.sku_id: keys.cache_key(t, mkey) for t in plan(plain, DATE, day).tasks}
    assert no_adapters["F0"] == base["F0"]  # keys of images without adapters did not change


def test_bad_adapter_config_is_exit_2(tiny_models, tmp_path, loras):
    day = two_category_day(tmp_path / "day.parquet")
    cfg = adapter_cfg(tiny_models, tmp_path, loras)
    unknown = dataclasses.replace(cfg, lora=LoraSection({"brand": cfg.lora.adapters["brand"]}))
    with pytest.raises(TemplateError, match=r"toys\.toml: unknown adapter 'style'") as exc:
        plan(unknown, DATE, day)
    assert exc.value.exit_code == EXIT_BAD_INPUT
    missing = dataclasses.replace(cfg, lora=LoraSection({**cfg.lora.adapters, "style": AdapterConfig("/nope")}))
    with pytest.raises(ConfigError, match=r"\[lora.adapters.style\] path /nope"):
        plan(missing, DATE, day)
    quantized = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, quantization="int8-dynamic"))
    with pytest.raises(ConfigError, match="cannot be combined with"):
        quantized.validate()
    assert resolve(cfg, "cuda", (9, 0)).quantization == "none"  # auto: float when adapters are configured


def test_unknown_sku_adapter_rejects_the_row(tiny_models, tmp_path, loras):
    cfg = adapter_cfg(tiny_models, tmp_path, loras)
    rows = [
        {"sku_id": "A", "category": "food", "attrs": '{"product": "a"}', "adapters": "brand, nope"},
        {"sku_id": "B", "category": "food", "attrs": '{"product": "b"}', "adapters": " brand ,,style"},
    ]
    p = plan(cfg, DATE, write_skus(tmp_path / "d.parquet", rows, SCHEMA))
    assert [(r.sku_id, r.reason) for r in p.rejected] == [("A", "unknown_adapter")]
    assert "'nope'" in p.rejected[0].detail
    assert [t.adapters for t in p.tasks] == [("brand@1.0", "style@0.8")]
    listed = pa.schema(
        [
            ("sku_id", pa.string()),
            ("category", pa.string()),
            ("product", pa.string()),
            ("adapters", pa.list_(pa.string())),
        ]
    )
    row = {"sku_id": "C", "category": "food", "product": "c", "adapters": ["brand"]}
    day = write_skus(tmp_path / "l.parquet", [row], listed)
    assert [t.adapters for t in plan(cfg, DATE, day).tasks] == [("brand@1.0",)]
    pq.write_table(
        pa.table({"sku_id": ["D"], "category": ["food"], "product": ["d"], "adapters": [3]}), tmp_path / "bad.parquet"
    )
    with pytest.raises(InputError, match="column 'adapters' must be list<string>"):
        plan(cfg, DATE, tmp_path / "bad.parquet")
    # `adfactory validate` counts batches per adapter set too (none, brand, style: three batches of <= 4)
    summary = summarize(cfg, DATE, two_category_day(tmp_path / "day.parquet"))
    assert summary.images == 6 and summary.batches == 3 and [r.reason for r in summary.rejected] == []


def test_hotswap_slot_matches_set_adapters(cfg, loras):
    """The compiled-UNet path (one hotswapped slot) gives the set_adapters images; run here without compiling."""
    import numpy as np
    import torch

    from factory.generation.adapters import SLOT, Adapters, HotswapAdapters
    from factory.generation.models import load_pipeline

    configured = {"style": AdapterConfig(str(loras["style"]), 0.8), "brand": AdapterConfig(str(loras["brand"]))}

    def images(pipe):
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        out = pipe(prompt=["a", "b"], width=64, height=64, num_inference_steps=2, guidance_scale=1.0, generator=gens)
        return [np.asarray(im).astype(int) for im in out.images]

    plain, swapped = (load_pipeline(cfg.model, "cpu", torch.float32) for _ in range(2))
    base = images(plain)
    switcher, hotswap = Adapters(plain, configured), HotswapAdapters(swapped, configured)
    assert list(swapped.unet.peft_config) == [SLOT] and hotswap.rank == 8
    for entries in [(), ("brand@1.0",), ("brand@1.0", "style@0.8"), (), ("style@0.8",)]:
        switcher.activate(entries)
        hotswap.activate(entries)
        a, b = images(plain), images(swapped)
        assert all(np.abs(x - y).max() <= 1 for x, y in zip(a, b)), entries  # float sums may differ by a level
        assert all(np.array_equal(x, y) for x, y in zip(b, base)) == (entries == ())  # empty slot adds exact zeros
    assert hotswap.switches == 4 and list(swapped.unet.peft_config) == [SLOT]


@pytest.mark.slow  # two CLI subprocesses; the same error is covered in-process by test_bad_adapter_config_is_exit_2
def test_cli_style_lora_and_unknown_template_adapter_is_exit_2(tmp_path, tiny_models, cfg):
    from tests.conftest import cli, demo_config_file

    res = cli("dev", "init-style-lora", str(tmp_path / "style"), "--seed", "3")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "style" / "pytorch_lora_weights.safetensors").is_file()
    config = demo_config_file(tmp_path / "night.toml", cfg)
    config.write_text(
        config.read_text().replace(
            f'templates = "{REPO / "templates"}"', f'templates = "{templates_with(tmp_path, "toys", ["styel"])}"'
        )
        + f'\n[lora.adapters.style]\npath = "{tmp_path / "style"}"\nweight = 0.7\n'
    )
    day = two_category_day(tmp_path / "day.parquet")
    res = cli("validate", "--date", DATE, "--skus", str(day), "--config", str(config))
    assert res.returncode == 2 and "toys.toml: unknown adapter 'styel'" in res.stderr and "Traceback" not in res.stderr
