import pytest

from intentrec.config import Config, deep_merge, load_config_file, parse_overrides
from intentrec.errors import ConfigError
from intentrec.registry import Registry


class Toy(Config):
    dim: int = 8
    name: str = "x"


def test_unknown_key_is_rejected_with_its_name():
    with pytest.raises(ConfigError) as err:
        Toy.build({"dimm": 3})
    assert "unknown key 'dimm'" in str(err.value)
    assert "dim" in str(err.value)  # lists the known keys


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError) as err:
        Toy.build({"dim": "many"}, where="config of toy")
    assert "dim" in str(err.value) and "config of toy" in str(err.value)


def test_parse_overrides_nests_and_types_values():
    out = parse_overrides(["train.lr=0.01", "model.embedding_dim=64", "name=abc", "flag=true"])
    assert out == {"train": {"lr": 0.01}, "model": {"embedding_dim": 64}, "name": "abc", "flag": True}


def test_parse_overrides_rejects_missing_equals():
    with pytest.raises(ConfigError):
        parse_overrides(["lr0.1"])


def test_deep_merge_overrides_leaves_only():
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_load_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError) as err:
        load_config_file(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(ConfigError):
        load_config_file(tmp_path / "missing.yaml")


def test_registry_unknown_name_lists_known():
    reg: Registry[object] = Registry("widget")

    @reg.register("a")
    class A:  # noqa: D401
        pass

    assert reg.get("a") is A and "a" in reg
    with pytest.raises(ConfigError) as err:
        reg.get("b")
    assert "unknown widget 'b'" in str(err.value) and "a" in str(err.value)
