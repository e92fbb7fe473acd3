import hashlib

import open_clip
import pytest
import torch

from factory.config import ModelConfig
from factory.errors import ModelError
from factory.generation.models import load_pipeline
from factory.quality.clip_model import load_clip
from factory.tools.builders.tiny_models import build_clip_tokenizer, init_tiny


def _digest(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_init_tiny_is_deterministic(tmp_path):
    a = init_tiny(tmp_path / "a")
    b = init_tiny(tmp_path / "b")
    da, db = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert da == db and len(da) >= 10
    assert (a["pipeline"] / "model_index.json").is_file() and (b["clip"] / "tiny-clip.json").is_file()


def test_tokenizer_matches_open_clip():
    tok = build_clip_tokenizer()
    assert tok.model_max_length == 77
    for text in ["a red running shoe, HD", "产品摄影 运动鞋", "{0.__class__} %s"]:
        ids = tok(text).input_ids
        assert ids == open_clip.tokenize([text])[0][: len(ids)].tolist()


def test_tiny_model_loads_through_the_real_checkpoint_path(tiny_models):
    cfg = ModelConfig(
        pipeline=str(tiny_models["pipeline"]),
        clip_pretrained=str(tiny_models["clip"] / "open_clip_model.safetensors"),
        clip_config_dir=str(tiny_models["clip"]),
    )
    pipe = load_pipeline(cfg, "cpu", torch.float32)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    assert pipe.unet.config.time_cond_proj_dim is not None
    clip = load_clip(cfg, "cpu")
    assert clip.model.visual.image_size == (32, 32)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no model_index.json"):
        load_pipeline(ModelConfig(pipeline=str(tmp_path)), "cpu", torch.float32)
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_clip(ModelConfig(clip_pretrained=str(tmp_path / "x.pt"), clip_config_dir=""), "cpu")


def test_a_night_without_quantization_never_imports_torchao_or_ray():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from factory.generation.models import import_libraries\n"
        "import_libraries('none')\n"
        "import factory.job.run, factory.cli\n"
        "assert 'torchao' not in sys.modules and 'ray' not in sys.modules, 'imported'\n"
        "from factory.generation.quantize import quantize_unet\n"
        "import torchao\n"  # un-hidden: a later quantizing worker in the same process still gets it
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
