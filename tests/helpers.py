"""Test helpers: simulate an installed plugin (a dist-info with entry points on PYTHONPATH) and run the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLUGIN_DIR = Path(__file__).parent / "plugin"


def install_fake_plugin(root: Path) -> Path:
    """Copy the plugin module into ``root`` with a dist-info declaring its entry points; returns the dir for sys.path."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ub_toy_plugin.py").write_text((PLUGIN_DIR / "ub_toy_plugin.py").read_text())
    dist = root / "ub_toy_plugin-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ub-toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[unlearnbench.methods]\nmymethod = ub_toy_plugin:MyMethod\n\n"
        "[unlearnbench.tasks]\ntoy = ub_toy_plugin:ToyTask\n")
    return root


def cli(args: list[str], env_extra: dict | None = None, cwd: str | None = None, timeout: int = 300,
        plugin_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", **(env_extra or {}))
    if plugin_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(plugin_path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "unlearnbench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def popen(args: list[str], plugin_path: Path, cwd: str) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "unlearnbench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
