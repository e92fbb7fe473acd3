from pathlib import Path

import pytest

from factory.errors import TemplateError
from factory.inputs.prompts import load_template, load_templates

REPO = Path(__file__).resolve().parents[2]
BUCKETS = {"small", "medium", "large", "poster"}


def test_shipped_templates_load():
    templates = load_templates(REPO / "templates", BUCKETS)
    assert len(templates) >= 8
    assert {"shoes", "dress", "electronics"} <= set(templates)


@pytest.mark.parametrize(
    "value",
    ["{0.__class__}", "{brand}", "{", "}", "%s%d", "{color!r:>10}", "${HOME}", "a\nb\x00c", "鞋子 {}"],
)
def test_attribute_values_are_inserted_literally(value):
    shoes = load_templates(REPO / "templates", BUCKETS)["shoes"]
    prompt, negative = shoes.render({"brand": value, "color": "red"})
    expected = " ".join(value.replace("\n", " ").replace("\x00", " ").split())
    assert expected in prompt
    assert "<class" not in prompt and "{" not in negative


def test_optional_defaults_and_overrides():
    shoes = load_templates(REPO / "templates", BUCKETS)["shoes"]
    assert "side view" in shoes.render({"brand": "A", "color": "b"})[0]
    assert "top view" in shoes.render({"brand": "A", "color": "b", "angle": "top"})[0]
    assert shoes.missing({"color": "red", "brand": "  "}) == ["brand"]


def _write(tmp_path, text, name="cat.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = 'prompt = "a {x}"\nnegative_prompt = "bad"\nrequired = ["x"]\nbucket = "small"\n'


@pytest.mark.parametrize(
    "text, message",
    [
        ('prompt = "a {y}"\nnegative_prompt = ""\nrequired = ["x"]\nbucket = "small"\n', r"unknown placeholder \{y\}"),
        ('prompt = "a {x.__class__}"\nnegative_prompt = ""\nrequired = ["x"]\nbucket = "small"\n', "plain name"),
        ('prompt = "a {x:>9}"\nnegative_prompt = ""\nrequired = ["x"]\nbucket = "small"\n', "plain name"),
        ('prompt = "a {x"\nnegative_prompt = ""\nrequired = ["x"]\nbucket = "small"\n', "bad placeholder syntax"),
        ('negative_prompt = ""\nrequired = []\nbucket = "small"\n', "missing field 'prompt'"),
        ('prompt = "a"\nnegative_prompt = ""\nbucket = "huge"\n', "not a configured bucket"),
        ('prompt = "a"\nnegative_prompt = ""\nbucket = "small"\ncolour = 1\n', "unknown field"),
        ('prompt = "a\n', "invalid TOML"),
    ],
)
def test_invalid_templates_name_the_file(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(TemplateError, match=message) as info:
        load_template(path, BUCKETS)
    assert str(path) in str(info.value)


def test_template_version_changes_with_content(tmp_path):
    a = load_template(_write(tmp_path, GOOD), BUCKETS)
    b = load_template(_write(tmp_path, GOOD.replace("bad", "worse")), BUCKETS)
    assert a.version != b.version


def test_category_file_name_is_validated(tmp_path):
    with pytest.raises(TemplateError, match="file name"):
        load_template(_write(tmp_path, GOOD, "../Bad Name.toml".replace("../", "")), BUCKETS)


def test_template_adapters_must_be_configured(tmp_path):
    body = 'prompt = "a {x}"\nnegative_prompt = ""\nrequired = ["x"]\nbucket = "small"\n'
    p = _write(tmp_path, 'adapters = ["guochao", "guochao"]\n' + body)
    assert load_template(p, BUCKETS, {"guochao"}).adapters == ("guochao",)
    with pytest.raises(TemplateError, match=r"cat\.toml: unknown adapter 'guochao' .*none configured"):
        load_template(p, BUCKETS)
    with pytest.raises(TemplateError, match="'adapters' must be a list"):
        load_template(_write(tmp_path, 'adapters = "guochao"\n' + body), BUCKETS, {"guochao"})
