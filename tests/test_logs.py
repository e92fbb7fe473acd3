"""Quiet by default: a night's stderr is the factory's own lines; the known-harmless library messages of
`factory.logs.HARMLESS` are dropped where they are emitted, and `--verbose` drops nothing."""

import io
import json
import logging
import subprocess
import sys

from factory import logs
from tests.conftest import DATE, cli, cli_env, make_cfg, small_config_file, write_skus

ROWS = [
    {"sku_id": "L1", "category": "shoes", "attrs": json.dumps({"brand": "Peak", "color": "red"}), "variants": 1},
]
# A quantized night imports torchao (through diffusers), which provokes both messages in a fresh process.
TORCHAO_NOISE = ("register_constant() on Enum subclasses is deprecated", "Unable to import `torchao` Tensor objects")


def test_a_night_shows_no_library_noise_unless_verbose(tiny_models, tmp_path):
    config = small_config_file(tmp_path / "c.toml", make_cfg(tiny_models, tmp_path))
    config.write_text(config.read_text().replace("[model]\n", '[model]\nquantization = "int8-dynamic"\n', 1))
    skus = write_skus(tmp_path / f"{DATE}.parquet", ROWS)
    args = ("--date", DATE, "--skus", str(skus), "--config", str(config), "--executor", "local")
    quiet = cli("run", *args, "--output", str(tmp_path / "out"))
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    run_json = json.loads((tmp_path / "out" / DATE / "run.json").read_text())
    assert run_json["runtime"]["quantization"] == "int8-dynamic"  # torchao was imported: the noise was provoked
    for noise in TORCHAO_NOISE:
        assert noise not in quiet.stderr, quiet.stderr[-2000:]
    lines = [ln for ln in quiet.stderr.splitlines() if ln.strip()]
    assert lines and all(" INFO " in ln for ln in lines), lines  # the factory's own progress lines, nothing else

    # --verbose (what the CLI's setup(verbose=True) does), the same imports, without the night's cost: unfiltered
    code = (
        "from factory import logs; logs.setup(verbose=True); "
        "from factory.generation.models import import_libraries; import_libraries('int8-dynamic')"
    )
    verbose = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=cli_env(), cwd=tmp_path
    )
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    for noise in TORCHAO_NOISE:
        assert noise in verbose.stderr, verbose.stderr[-2000:]


def test_tiny_clip_without_weights_is_quiet_but_other_models_are_not(tiny_models, monkeypatch):
    """open_clip's "no pretrained weights" note (a root-logger warning) for the tiny model `make models` builds
    with random weights on purpose, from the library itself; the same note for any other model stays."""
    import open_clip

    monkeypatch.delenv(logs.VERBOSE_ENV, raising=False)
    open_clip.add_model_config(tiny_models["clip"])
    other = logging.LogRecord(
        "root", logging.WARNING, open_clip.factory.__file__, 1, "No pretrained weights loaded for model 'ViT-B-32'.",
        None, None,
    )  # fmt: skip
    try:
        for verbose in (False, True):
            out = io.StringIO()
            logs.setup(verbose=verbose, stream=out)
            open_clip.create_model("tiny-clip")
            logging.getLogger().handle(other)
            text = out.getvalue()
            assert ("'tiny-clip'" in text) == verbose, text
            assert "'ViT-B-32'" in text
            assert logs.verbose() == verbose  # what a Ray worker started now would inherit
    finally:
        logs.setup(verbose=False)


def test_quiet_is_idempotent_and_only_drops_the_listed_messages():
    pytree = logging.getLogger("torch.utils._pytree")
    logs.quiet(True)
    logs.quiet(True)
    assert pytree.filters.count(logs._FILTERS["torch.utils._pytree"]) == 1
    path = "/x/site-packages/torch/utils/_pytree.py"
    record = lambda level, msg: logging.LogRecord(pytree.name, level, path, 1, msg, None, None)  # noqa: E731
    note = "<enum 'X'> ... Calling register_constant() on Enum subclasses is deprecated and will be an error"
    assert not pytree.filter(record(logging.WARNING, note))
    assert pytree.filter(record(logging.ERROR, note))  # another level: kept
    assert pytree.filter(record(logging.WARNING, "something else"))
    logs.quiet(False)
    assert logs._FILTERS["torch.utils._pytree"] not in pytree.filters
