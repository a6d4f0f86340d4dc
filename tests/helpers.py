"""Test helpers: simulate an installed plugin (a dist-info with entry points on PYTHONPATH), run the CLI, and stand in
for clean-fid's Inception weights (which never reach these machines)."""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def plugins_registered(*folders: Path):
    """The plugin distributions installed in ``folders`` (dist-infos with entry points) importable and registered in
    this process, as ``registry.load_plugins`` registers an installed plugin; ``sys.path`` and the registries are as
    before afterwards."""
    from importlib import metadata

    from unlearnbench.methods import METHODS
    from unlearnbench.tasks import TASKS

    regs = (TASKS, METHODS)
    saved_path = list(sys.path)
    saved = [{k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(reg).items()} for reg in regs]
    sys.path[:0] = [str(f) for f in folders]
    try:
        for dist in metadata.distributions(path=[str(f) for f in folders]):
            for reg in regs:
                reg.load_plugins([ep for ep in dist.entry_points if ep.group == reg.entry_point_group])
        yield
    finally:
        sys.path[:] = saved_path
        for reg, state in zip(regs, saved):
            vars(reg).update(state)


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


def fake_inception_file(folder: Path, name: str = "inception-2015-12-05.pt") -> Path:
    """A random-weight stand-in for clean-fid's TorchScript Inception saved as ``folder/name``: the same interface
    (``forward(x, return_features=True)`` on [0, 255] images, ``layers`` on normalised 299 x 299 ones; 2048 features),
    so clean-fid's own ``InceptionV3W`` and the project's loader run on it unchanged."""
    import torch
    from torch import nn

    class Layers(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 2048)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # normalised images [B, 3, 299, 299]
            assert x.shape[1] == 3 and x.shape[2] == 299 and x.shape[3] == 299
            return torch.tanh(self.lin(torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)))

    class FakeInception(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            assert return_features and float(x.max()) <= 255.0 and float(x.min()) >= 0.0
            x = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            return self.layers((x - 128) / 128)

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(FakeInception()), str(folder / name))
    return folder / name


def run_main(capsys, args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI in this process (``unlearnbench.cli.main.main``): what :func:`cli` returns, without a Python start-up
    and imports per call. Log records go to stderr as the CLI's own logging set-up writes them in a process of its
    own (pytest's handlers stop ``logging.basicConfig`` here). ``env_extra`` is set for the call only."""
    import logging
    import sys

    from unlearnbench.cli.main import main

    capsys.readouterr()  # what earlier calls printed is not this call's output
    saved = {k: os.environ.get(k) for k in env_extra or {}}
    os.environ.update(env_extra or {})
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    try:
        code = main([str(a) for a in args])
    finally:
        logging.getLogger().removeHandler(handler)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["unlearnbench", *args], code, out.out, out.err)


def load_script(name: str):
    """A script of scripts/ imported as a module (its ``main`` not run)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
