from pathlib import Path

import pytest

from factory.config import FactoryConfig, load_config
from factory.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_factory_toml_documents_the_defaults():
    assert load_config(REPO / "factory.toml") == FactoryConfig()


def test_demo_config_loads():
    cfg = load_config(REPO / "data" / "demo.toml")
    assert [b.width for b in cfg.planner.buckets] == [64, 96, 128, 192]


def test_overrides_win_and_none_is_ignored(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[run]\nworkers = 3\nbatch_size = 8\n")
    cfg = load_config(f, {"run": {"workers": 5, "batch_size": None}})
    assert (cfg.run.workers, cfg.run.batch_size) == (5, 8)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[run]\nworkerz = 3\n", "unknown key 'workerz'"),
        ("[run]\nworkers = 'two'\n", "workers must be int"),
        ("[run]\nexecutor = 'spark'\n", "run.executor must be"),
        ("[run\n", "invalid TOML"),
        ("[[planner.buckets]]\nname='x'\nwidth=100\nheight=64\nsteps=4\n", "multiples of 8"),
        ("[model]\ndeterminism = 'sometimes'\n", "model.determinism"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, text, message):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(f)
    assert str(f) in str(info.value) or "run." in str(info.value) or "model." in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
