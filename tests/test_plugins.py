"""Plugins are first-class: a method shipped as its own distribution (entry point), or dropped into methods/, runs
with ``--methods NAME --grid eps`` on a real task using the grid values it declares."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import cli, install_fake_plugin, plugins_registered, run_main
from unlearnbench.config import grid_names, grid_values, plan_trials
from unlearnbench.methods import METHODS, Method
from unlearnbench.tasks import TASKS

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(first_line: str) -> str:
    """The fenced code block of the README whose first line is ``first_line`` (the plugin recipe, used verbatim)."""
    blocks = re.findall(r"^( *)```\w*\n(.*?)^\1```", README.read_text(), flags=re.S | re.M)
    return next(textwrap.dedent(body) for _, body in blocks if body.strip().startswith(first_line))


PLUGIN_MODULE = readme_block("# unlearnbench_mine.py")
PYPROJECT = readme_block("# pyproject.toml")

TINY_GMM = ["--set", "task.eval_samples=64", "--set", "task.eval_steps=10",
            "--set", "task.sample_steps=10"]


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """Build and install the plugin distribution into a target directory (what `pip install .` does)."""
    src = tmp_path_factory.mktemp("plugin-src")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "unlearnbench_mine.py").write_text(PLUGIN_MODULE)
    target = tmp_path_factory.mktemp("plugin-site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert list(target.glob("unlearnbench_mine-0.1.dist-info/entry_points.txt")), "a real dist-info was installed"
    return target


def records(out):
    return [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]


def test_plugin_distribution_is_listed_and_runs_with_its_own_grid(installed_plugin, tmp_path, capsys):
    """Fast round trip on the toy task, whose grids do not name the plugin: the declared values are used. A process
    of its own finds the installed distributions by their entry points."""
    both = os.pathsep.join([str(installed_plugin), str(install_fake_plugin(tmp_path / "toy"))])
    r = cli(["ls", "methods", "mine"], plugin_path=both)
    assert r.returncode == 0, r.stderr
    assert "plugin unlearnbench-mine" in r.stdout and "--grid eps: 0.5, 2" in r.stdout
    assert "one of: null, kept" in r.stdout
    out = tmp_path / "run"
    with plugins_registered(*map(Path, both.split(os.pathsep))):  # found as above; run in this process
        r = run_main(capsys, ["run", "--task", "toy", "--methods", "mine", "--grid", "eps", "--steps", "2",
                              "--executor", "serial", "--no-leaderboard", "--set", "methods.mine.target=kept",
                              "--out", str(out)])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    recs = records(out)
    assert sorted(rec["grid"]["value"] for rec in recs) == [0.5, 2.0], "the plugin's declared grid values"
    assert {rec["status"] for rec in recs} == {"ok"} and {rec["method_config"]["target"] for rec in recs} == {"kept"}
    assert all(rec["train"]["steps"] == 2 and "mass" in rec["metrics"] for rec in recs)


@pytest.mark.slow
def test_plugin_distribution_runs_end_to_end_on_gmm_concept(installed_plugin, tmp_path):
    """The same on a real task, on its shipped distilled network (a 30-step distillation is 500-1200 nats from the
    mixture, outside the task's sane range: every trial was judged diverged and this slow test failed)."""
    out = tmp_path / "run"
    r = cli(["run", "--task", "gmm-concept", "--methods", "mine", "--grid", "eps", "--steps", "2",
             "--executor", "serial", "--no-leaderboard", *TINY_GMM, "--out", str(out)], plugin_path=installed_plugin)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    recs = records(out)
    assert sorted(rec["grid"]["value"] for rec in recs) == [0.5, 2.0]
    assert {rec["status"] for rec in recs} == {"ok"} and {rec["method"] for rec in recs} == {"mine"}
    assert all("kl_concept_min" in rec["metrics"] and rec["train"]["steps"] == 2 for rec in recs)


def test_plugin_settings_are_checked_before_work(installed_plugin, tmp_path, capsys):
    out = tmp_path / "bad"
    with plugins_registered(installed_plugin):
        r = run_main(capsys, ["run", "--task", "gmm-concept", "--methods", "mine", "--set", "methods.mine.target=both",
                              "--out", str(out)])
    assert r.returncode == 2 and "target='both' is not a valid choice; valid: null, kept" in r.stderr
    assert not out.exists()


@pytest.fixture
def new_method_file():
    """A file dropped into methods/ (the installed package's directory), removed again afterwards."""
    import unlearnbench.methods as pkg

    path = Path(pkg.__path__[0]) / "zz_test_newfile.py"
    path.write_text(textwrap.dedent('''
        from unlearnbench.methods import METHODS
        from unlearnbench.methods.esd import ESD


        @METHODS.register("zz-new")
        class NewFile(ESD):
            """A new file in methods/: ESD under another name, inheriting its settings."""

            name = "zz-new"
            default_grids = {"concept": {"eps": [0.1, 0.2, 0.3]}}
    '''))
    METHODS._scanned = False
    try:
        yield path
    finally:
        path.unlink()
        METHODS._items.pop("zz-new", None)
        METHODS._origin.pop("zz-new", None)
        sys.modules.pop("unlearnbench.methods.zz_test_newfile", None)


def test_new_file_in_methods_is_discovered_without_editing_a_list(new_method_file, tmp_path):
    plan = plan_trials("gmm-concept", "zz-new", "eps", run_dir=str(tmp_path / "r"))
    assert [t["grid"]["value"] for t in plan.trials] == [0.1, 0.2, 0.3]
    assert {t["grid"]["param"] for t in plan.trials} == {"eta"}, "grid_params inherited from ESD"
    every = plan_trials("gmm-concept", "all", "eps", run_dir=str(tmp_path / "r")).trials
    assert {t["method"] for t in every} == {"esd", "lik", "lik-is", "rkl", "rkl-fixed", "rkl-is", "zz-new"}  # not salun: gmm-concept scores the null prompt


def test_task_values_override_declared_defaults_and_subclasses_inherit():
    class Parent(Method):
        name = "parent"
        kinds = ("concept",)
        grid_params = {"eps": "lr"}
        default_grids = {"concept": {"eps": [1.0, 2.0], "wide": [1.0, 10.0]}}

        def losses(self):
            return {}

    class Child(Parent):
        name = "child"
        default_grids = {"concept": {"eps": [3.0]}}

    assert Child.declared_grid("concept", "eps") == [3.0]
    assert Child.declared_grid("concept", "wide") == [1.0, 10.0], "inherited from the parent"
    assert Child.declared_grid("data", "eps") is None
    assert Child.declared_grid_names("concept") == ["eps", "wide"]
    reg_name = "child"
    METHODS.register(reg_name)(Child)
    try:
        task = TASKS.get("gmm-concept")()
        assert grid_values(task, "eps", "child") == [3.0]
        assert grid_values(task, "wide", "child") == [1.0, 10.0]
        assert "wide" in grid_names(task, "child") and "wide" not in grid_names(task)
        task.grids = {**task.grids, "eps": {**task.grids["eps"], "child": [7.0]}}
        assert grid_values(task, "eps", "child") == [7.0], "a task's own values win"
        with pytest.raises(ValueError, match="has no grid 'nope'; valid: eps, smoke, wide"):
            grid_values(task, "nope", "child")
    finally:
        METHODS._items.pop(reg_name)
        METHODS._origin.pop(reg_name)


def test_registry_scan_imports_only_unlisted_public_modules(tmp_path, monkeypatch):
    pkg = tmp_path / "ub_scanpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from unlearnbench.registry import Registry\n"
                                     "REG = Registry('thing', None, None, scan_package='ub_scanpkg')\n"
                                     "REG.register_lazy('listed', 'ub_scanpkg.listed:X')\n")
    (pkg / "listed.py").write_text("raise RuntimeError('a listed module is imported only when used')\n")
    (pkg / "_private.py").write_text("raise RuntimeError('private modules are never scanned')\n")
    (pkg / "fresh.py").write_text("from ub_scanpkg import REG\nREG.register('fresh')(object())\n")
    (pkg / "broken.py").write_text("import no_such_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import ub_scanpkg

    assert ub_scanpkg.REG.names() == ["fresh", "listed"], "broken.py is skipped with a warning, not fatal"


def test_plugin_subclass_of_a_builtin_runs_with_its_parents_grid_values_and_defaults(tmp_path):
    """A plugin's ``class Mine(ESD)`` that declares no grid runs each task's ESD grid with the task's ESD settings; one
    that declares its own values runs those; the built-ins that subclass each other keep only their own names."""
    from unlearnbench.methods.esd import ESD
    from unlearnbench.config import build_method_config

    class PluginESD(ESD):  # defined outside unlearnbench.methods: a plugin's class
        name = "plugin-esd"

    class PluginESDOwn(ESD):
        name = "plugin-esd-own"
        default_grids = {"concept": {"eps": [0.25, 4.0]}}

    for cls in (PluginESD, PluginESDOwn):
        METHODS.register(cls.name)(cls)
    try:
        assert PluginESD.lineage() == ["plugin-esd", "esd"]
        gmm = TASKS.get("gmm-concept")()
        for grid in ("eps", "smoke"):
            assert grid_values(gmm, grid, "plugin-esd") == grid_values(gmm, grid, "esd"), grid
        plan = plan_trials("gmm-concept", "plugin-esd,plugin-esd-own", "eps", run_dir=str(tmp_path / "r"))
        values = {m: [t["grid"]["value"] for t in plan.trials if t["method"] == m] for m in ("plugin-esd", "plugin-esd-own")}
        assert values == {"plugin-esd": grid_values(gmm, "eps", "esd"), "plugin-esd-own": [0.25, 4.0]}
        assert {t["grid"]["param"] for t in plan.trials} == {"eta"}
        every = {t["method"] for t in plan_trials("gmm-concept", "all", "eps", run_dir=str(tmp_path / "r")).trials}
        assert {"plugin-esd", "plugin-esd-own", "esd"} <= every
        digits = TASKS.get("digits-concept")
        assert digits.method_defaults["esd"], "the parent has settings fitted to this task"
        cfg = build_method_config(digits(), "plugin-esd", {}, None)
        assert {k: getattr(cfg, k) for k in digits.method_defaults["esd"]} == digits.method_defaults["esd"]
        # built-ins are named by each task: rkl-is does not inherit rkl's values where a task leaves it out
        assert METHODS.get("rkl-is").lineage() == ["rkl-is"]
    finally:
        for cls in (PluginESD, PluginESDOwn):
            METHODS._items.pop(cls.name)
            METHODS._origin.pop(cls.name)
