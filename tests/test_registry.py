"""Registry: decorator, lazy built-ins, entry-point plugins, collisions, close-match suggestions."""
from __future__ import annotations

import warnings
from importlib import metadata

import pytest

from unlearnbench.methods import METHODS, Method
from unlearnbench.registry import Registry, UnknownNameError, parse_list


class Base:
    pass


def test_register_and_lazy_and_alias():
    reg = Registry("thing", Base)

    @reg.register("alpha", "a1")
    class Alpha(Base):
        """Alpha thing."""

    reg.register_lazy("lazy", "unlearnbench.registry:Registry")
    assert reg.get("a1") is Alpha and reg.describe("alpha") == "Alpha thing."
    with pytest.raises(TypeError, match="not a subclass of Base"):
        reg.get("lazy")


def test_unknown_name_suggests_and_lists():
    with pytest.raises(UnknownNameError) as e:
        METHODS.canonical("sallun")
    msg = str(e.value)
    assert "did you mean 'salun'" in msg and ", ".join(METHODS.names()) in msg
    assert "erasediff, esd, fkl" in msg and "rkl, rkl-fixed, rkl-is, salun, siss" in msg


def test_collision_raises_between_distinct_objects():
    reg = Registry("thing")
    reg.register("x")(object())
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(object())


def test_builtin_wins_over_plugin_with_warning():
    reg = Registry("method", Method, "unlearnbench.methods")
    reg.register_lazy("rkl", "unlearnbench.methods.rkl:ReverseKL")
    ep = metadata.EntryPoint(name="rkl", value="somepkg.mod:Fake", group="unlearnbench.methods")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        reg.load_plugins([ep])
    assert any("built-in wins" in str(x.message) for x in w)
    assert reg.get("rkl").__name__ == "ReverseKL"


def test_plugin_entry_point_is_lazy_and_loads(tmp_path, monkeypatch):
    (tmp_path / "ub_tmp_plugin.py").write_text(
        "from unlearnbench.methods.base import Method\n"
        "class Mine(Method):\n    '''Mine.'''\n    name='mine'\n    def losses(self):\n        return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("method", Method, "unlearnbench.methods")
    reg.load_plugins([metadata.EntryPoint(name="mine", value="ub_tmp_plugin:Mine", group="unlearnbench.methods")])
    assert "mine" in reg.names() and reg.origin("mine").startswith("plugin")
    assert reg.get("mine").__name__ == "Mine"


def test_broken_plugin_reports_target():
    reg = Registry("method", Method)
    reg.load_plugins([metadata.EntryPoint(name="broken", value="no_such_mod:X", group="g")])
    with pytest.raises(ImportError, match="'no_such_mod:X', which failed to load"):
        reg.get("broken")


def test_parse_list_all_and_dedup():
    assert parse_list("all", METHODS) == METHODS.names()
    assert parse_list("rkl, reverse-kl,esd", METHODS) == ["rkl", "esd"]


@pytest.mark.parametrize("name", ["a$b", "../up", "a/b", "-x", "", "x" * 101, "a b", "$\\alpha$"])
def test_names_that_could_become_paths_or_markup_are_refused(name, caplog):
    """Method and task names (built-in, decorator or plugin entry point) become file names, Ray trial names and
    plot text: only safe names register; a plugin with another name is skipped with a warning naming it."""
    reg = Registry("method", Method)
    with pytest.raises(ValueError, match="names are lowercase, 1 to 100 letters"):
        reg.register(name)(Base)
    with pytest.raises(ValueError, match="aliases are lowercase"):
        reg.register_lazy("fine", "m:X", name)
    reg.load_plugins([metadata.EntryPoint(name=name, value="pkg.mod:X", group="unlearnbench.methods")])
    assert name not in reg._items and f"skipping method plugin {name}" in caplog.text
