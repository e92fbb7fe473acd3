from pathlib import Path

import pytest

from factory.config import FactoryConfig, load_config
from factory.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_factory_toml_documents_the_defaults():
    assert load_config(REPO / "factory.toml") == FactoryConfig().absolute(REPO)
    assert load_config() == FactoryConfig().absolute(REPO)  # no --config: the repo's factory.toml


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "c.toml").write_text('[paths]\ntemplates = "tpl"\n')
    monkeypatch.chdir(tmp_path)  # anywhere but the config's directory
    cfg = load_config(conf / "c.toml", {"paths": {"output": "out"}})
    assert cfg.paths.templates == str(conf / "tpl")  # from the file: its directory
    assert cfg.paths.output == str(tmp_path / "out")  # from a flag: the working directory
    assert cfg.model.pipeline == str(REPO / "data" / "models" / "tiny-sd")  # a default: the repo


def test_errors_name_the_flag_not_the_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[run]\nworkers = 3\n")
    with pytest.raises(ConfigError, match=r"^command line --workers: run.workers must be at least 1") as info:
        load_config(f, {"run": {"workers": 0}})
    assert str(f) not in str(info.value)


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
        ("[repair]\ntile = -4\n", "repair.tile must be 0"),
        ("[repair]\ntile = 3\n", "repair.tile must be 0"),
        ("[repair]\ndilate = -1\n", "repair.dilate must be at least 0"),
        ("[repair]\nblur = -1\n", "repair.blur must be at least 0"),
        ("[repair]\npadding = -8\n", "repair.padding must be at least 0"),
        ("[quality]\nunsafe_concepts = []\n", "unsafe_concepts must list"),
        ("[quality]\niqa_pairs = []\n", "iqa_pairs must list"),
        ("[quality.categories.shoes]\niqa_pairs = []\n", r"\[quality.categories.shoes\]: iqa_pairs"),
        ("[planner]\nmax_variants = 0\n", "planner.max_variants must be at least 1"),
        ("[[planner.buckets]]\nname='x'\nwidth='64'\nheight=64\nsteps=4\n", "width must be int"),
        ("[[planner.buckets]]\nname='x'\nwidth=64\nheight=64\n", "needs exactly the keys"),
        ("[planner]\nbuckets = 3\n", "buckets must be a list"),
        ("[run]\nmax_error_share = 1.5\n", "max_error_share"),
        ("[run]\nfault_injection = 'explode:S1'\n", "fault_injection kind"),
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


def test_unreadable_config_files_are_one_clear_error(tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes("[run]\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
