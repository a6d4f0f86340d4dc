"""Packaging: methods/ and metrics/ are importable as unlearnbench.methods / unlearnbench.metrics, and nothing but
``unlearnbench`` reaches site-packages (STYLE.md section 2)."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_package_list_matches_tree():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, mapping = set(cfg["packages"]), cfg["package-dir"]
    found = set()
    for top, mapped in (("unlearnbench", "unlearnbench"), ("unlearnbench.methods", "methods"),
                        ("unlearnbench.metrics", "metrics")):
        for init in (ROOT / mapped).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / mapped).parts
            if top == "unlearnbench" and rel and rel[0] in ("methods", "metrics"):
                pytest.fail("unlearnbench/methods or unlearnbench/metrics would shadow the mapping")
            found.add(".".join((top,) + rel))
    assert listed == found
    assert mapping == {"unlearnbench": "unlearnbench", "unlearnbench.methods": "methods", "unlearnbench.metrics": "metrics"}


def test_installed_subpackages_come_from_the_mapped_dirs():
    import unlearnbench.methods
    import unlearnbench.metrics

    assert Path(unlearnbench.methods.__file__).resolve().parent == ROOT / "methods"
    assert Path(unlearnbench.metrics.__file__).resolve().parent == ROOT / "metrics"
    with pytest.raises(ModuleNotFoundError):
        __import__("methods")


def test_wheel_holds_only_unlearnbench(tmp_path):
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    wheel = next(tmp_path.glob("unlearnbench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"unlearnbench", next(t for t in tops if t.endswith(".dist-info"))}
    assert "unlearnbench/methods/rkl.py" in names and "unlearnbench/metrics/base.py" in names
    record = next(n for n in names if n.endswith("RECORD"))
    rows = zipfile.ZipFile(wheel).read(record).decode().splitlines()
    assert all(r.split(",")[0].split("/")[0] in tops for r in rows)
    # install it alone into a target dir and import both subpackages from there
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "unlearnbench"] \
        or sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["unlearnbench"]
    code = ("import unlearnbench.methods as m, unlearnbench.metrics as x; "
            "print(m.__file__); print(x.__file__); print(sorted(m.METHODS.names()))")
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
                       capture_output=True, text=True, env=env, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(str(target)) and lines[1].startswith(str(target))
    assert "rkl" in lines[2]
