"""The cache verifies what it loads, names a corrupt file and rebuilds it; its key covers the builder's code."""
from __future__ import annotations

import importlib
import inspect
import json
import sys

import torch

from unlearnbench.cache import cached_torch, code_version


def _builder(counter: list):
    def build():
        counter.append(1)
        return {"w": torch.arange(1000, dtype=torch.float32), "note": "tiny"}
    return build


def _only_file(d, kind):
    (path,) = (d / kind).glob("*.pt")
    return path


def test_truncated_cache_file_is_named_and_rebuilt(tmp_path, caplog):
    calls: list = []
    first = cached_torch(str(tmp_path), "thing", {"n": 1}, _builder(calls))
    path = _only_file(tmp_path, "thing")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["key"] == {"n": 1} and meta["bytes"] == path.stat().st_size and len(meta["sha256"]) == 64
    cached_torch(str(tmp_path), "thing", {"n": 1}, _builder(calls))
    assert len(calls) == 1, "a valid file is loaded, not rebuilt"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # a killed copy or full disk
    again = cached_torch(str(tmp_path), "thing", {"n": 1}, _builder(calls))
    assert len(calls) == 2 and torch.equal(again["w"], first["w"])
    assert f"cache file {path} is corrupt: checksum mismatch" in caplog.text and "rebuilding" in caplog.text
    assert path.read_bytes() == good, "rebuilt identically"


def test_flipped_byte_and_missing_checksum_are_rebuilt(tmp_path, caplog):
    calls: list = []
    cached_torch(str(tmp_path), "thing", {"n": 2}, _builder(calls))
    path = _only_file(tmp_path, "thing")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    cached_torch(str(tmp_path), "thing", {"n": 2}, _builder(calls))
    path.with_suffix(".json").unlink()
    cached_torch(str(tmp_path), "thing", {"n": 2}, _builder(calls))
    assert len(calls) == 3 and "without its checksum file" in caplog.text
    assert list((tmp_path / "thing").glob(".tmp-*")) == []


def test_key_covers_the_builders_code(tmp_path, monkeypatch):
    mod = tmp_path / "ub_cache_builder.py"
    mod.write_text("from unlearnbench import diffusion\ndef make():\n    def build():\n        return 1\n    return build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = importlib.import_module("ub_cache_builder")
    try:
        v1 = code_version(m.make())
        assert v1 == code_version(m.make())
        assert cached_torch(str(tmp_path / "c"), "k", {"n": 1}, m.make()) == 1
        mod.write_text(mod.read_text().replace("return 1", "return 2  # the builder changed"))
        m = importlib.reload(m)
        assert code_version(m.make()) != v1
        assert cached_torch(str(tmp_path / "c"), "k", {"n": 1}, m.make()) == 2, "same key, new code: rebuilt"
        assert len(list((tmp_path / "c" / "k").glob("*.pt"))) == 2
    finally:
        sys.modules.pop("ub_cache_builder", None)


def test_version_follows_the_code_the_builder_reaches(tmp_path, monkeypatch):
    """A helper the builder calls is part of the key; an unrelated function in the same module is not (so editing a
    task's evaluation code keeps its pretrained models), and project code it reaches counts too."""
    mod = tmp_path / "ub_cache_reach.py"
    body = ("from unlearnbench.diffusion import add_noise\n"
            "def helper():\n    return add_noise\n"
            "def unrelated():\n    return 0\n"
            "def make():\n    def build():\n        return helper()\n    return build\n")
    mod.write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        m = importlib.import_module("ub_cache_reach")
        v1 = code_version(m.make())
        mod.write_text(body.replace("return 0", "return 1  # unrelated edit"))
        assert code_version(importlib.reload(m).make()) == v1
        mod.write_text(body.replace("return add_noise", "return add_noise  # helper edit"))
        assert code_version(importlib.reload(m).make()) != v1
    finally:
        sys.modules.pop("ub_cache_reach", None)
    from unlearnbench import diffusion
    from unlearnbench.tasks import _digits as digits

    before = code_version(digits.load_unet)
    monkeypatch.setattr(diffusion.add_noise, "__code__", (lambda schedule, x0, noise, t: x0).__code__)
    monkeypatch.setattr(inspect, "getsource", lambda o, _real=inspect.getsource: (
        "changed" if o is diffusion.add_noise else _real(o)))
    assert code_version(digits.load_unet) != before, "pretraining reaches diffusion.add_noise: its source is in the key"


def _ship(tmp_path, monkeypatch, key):
    """Build ``key`` into a scratch cache and make that cache the shipped directory; returns the shipped file."""
    import unlearnbench.cache as cache

    src = tmp_path / "maintainer"
    cached_torch(str(src), "thing", key, _builder([]))
    monkeypatch.setattr(cache, "SHIPPED_DIR", src)
    return _only_file(src, "thing")


def test_a_cache_miss_is_filled_from_the_shipped_file_without_building(tmp_path, monkeypatch, caplog):
    import unlearnbench.cache as cache

    caplog.set_level("INFO", logger="unlearnbench.cache")
    shipped = _ship(tmp_path, monkeypatch, {"n": 3})
    user, calls = tmp_path / "user", []
    got = cached_torch(str(user), "thing", {"n": 3}, _builder(calls))
    assert calls == [] and torch.equal(got["w"], torch.arange(1000, dtype=torch.float32))
    copied = _only_file(user, "thing")
    assert copied.read_bytes() == shipped.read_bytes() and copied.with_suffix(".json").exists()
    assert f"using the shipped {shipped.name}" in caplog.text
    assert cache.used_artefacts()[-1] == ("thing", copied, "shipped")
    cached_torch(str(user), "thing", {"n": 4}, _builder(calls))
    assert calls == [1], "another key is not shipped: built"


def test_a_corrupt_or_disabled_shipped_file_is_built_instead(tmp_path, monkeypatch, caplog):
    shipped = _ship(tmp_path, monkeypatch, {"n": 5})
    good = shipped.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    shipped.write_bytes(bytes(data))
    calls: list = []
    cached_torch(str(tmp_path / "a"), "thing", {"n": 5}, _builder(calls))
    assert calls == [1] and f"shipped file {shipped} is corrupt: checksum mismatch" in caplog.text
    shipped.write_bytes(good)
    monkeypatch.setenv("UNLEARNBENCH_SHIPPED", "0")
    cached_torch(str(tmp_path / "b"), "thing", {"n": 5}, _builder(calls))
    assert calls == [1, 1], "UNLEARNBENCH_SHIPPED=0 builds even where a valid shipped file exists"


def test_no_builds_names_what_would_be_built(tmp_path):
    import pytest

    from unlearnbench.cache import NotCached, no_builds

    calls: list = []
    with pytest.raises(NotCached, match=r"thing is neither in the cache nor shipped \(\w+\.pt, built by"):
        with no_builds():
            cached_torch(str(tmp_path), "thing", {"n": 6}, _builder(calls))
    assert calls == [] and not (tmp_path / "thing").exists()
    cached_torch(str(tmp_path), "thing", {"n": 6}, _builder(calls))
    with no_builds() as used:
        cached_torch(str(tmp_path), "thing", {"n": 6}, _builder(calls))
    assert calls == [1] and [u[2] for u in used] == ["cache"]


def test_the_shipped_digits_artefacts_are_what_the_current_code_builds(tmp_path):
    """Every artefact of the default digits tasks is shipped under the key the current code gives it: a change to
    the code that builds one fails here until ``python scripts/ship_pretrained.py`` ships the rebuilt file."""
    from unlearnbench.cache import SHIPPED_DIR, NotCached, no_builds
    from unlearnbench.tasks._digits import pretrain

    try:
        with no_builds() as used:
            pretrain("digits", cache_dir=str(tmp_path), progress=False)
    except NotCached as e:
        raise AssertionError(f"{e}: refresh with python scripts/ship_pretrained.py") from e
    kinds = {kind for kind, _, _ in used}
    assert kinds == {"digits-unet", "digits-classifier", "digits-pool", "digits-data-unet", "digits-data-pool"}
    assert {source for _, _, source in used} <= {"shipped", "cache"} and "shipped" in {s for _, _, s in used}
    shipped = {p.relative_to(SHIPPED_DIR) for p in SHIPPED_DIR.glob("digits-*/*.pt")}
    assert shipped == {p.relative_to(tmp_path) for _, p, _ in used}, "no stale files ship"


def test_the_shipped_gmm_artefacts_are_what_the_current_code_builds(tmp_path):
    """The mixture tasks' distilled networks, exact-front tables and retrained references ship too (a cold `make run`
    would spend minutes distilling them): a change to the code that builds one fails here until
    ``python scripts/ship_pretrained.py`` ships the rebuilt file."""
    from unlearnbench.cache import SHIPPED_DIR, NotCached, no_builds
    from unlearnbench.tasks._gmm import pretrain

    try:
        with no_builds() as used:
            pretrain(cache_dir=str(tmp_path))
    except NotCached as e:
        raise AssertionError(f"{e}: refresh with python scripts/ship_pretrained.py") from e
    assert {kind for kind, _, _ in used} == {"gmm-distilled", "gmm-oracle", "gmm-retrained"}
    assert {source for _, _, source in used} == {"shipped"}
    shipped = {p.relative_to(SHIPPED_DIR) for p in SHIPPED_DIR.glob("gmm-*/*.pt")}
    assert shipped == {p.relative_to(tmp_path) for _, p, _ in used}, "no stale files ship"


def test_pretrain_command_reports_where_each_network_came_from(tmp_path, monkeypatch, capsys):
    import pytest

    from unlearnbench.cache import NotCached, no_builds
    from unlearnbench.cli.main import main

    assert main(["pretrain", "--task", "digits", "--cache-dir", str(tmp_path / "a")]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("digits-") and "(" in ln]
    assert sorted(ln.split(":")[0] for ln in lines) == sorted(
        ["digits-unet", "digits-classifier", "digits-pool", "digits-data-unet", "digits-data-pool"])
    assert all(": shipped (" in ln for ln in lines), lines
    monkeypatch.setenv("UNLEARNBENCH_SHIPPED", "1")  # restored after the test: --no-shipped sets it to 0
    with pytest.raises(NotCached, match="digits-unet is neither in the cache nor shipped"), no_builds():
        main(["pretrain", "--task", "digits", "--no-shipped", "--cache-dir", str(tmp_path / "b")])


class _RunsCode:
    """Unpickling this runs a shell command (what a hostile cache or shipped file would hold)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _plant(path, payload):
    """Replace the file at ``path`` by a pickle of ``payload`` and rewrite its sha256 to match, as an attacker who
    can write the cache would."""
    import hashlib
    import io

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3), "x": payload}, buf)
    data = buf.getvalue()
    path.write_bytes(data)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    path.with_suffix(".json").write_text(json.dumps(meta))


def test_a_cache_file_whose_unpickling_runs_code_is_refused_by_name_and_rebuilt(tmp_path, caplog):
    calls: list = []
    cached_torch(str(tmp_path), "thing", {"n": 7}, _builder(calls))
    path = _only_file(tmp_path, "thing")
    good = path.read_bytes()
    marker = tmp_path / "pwned"
    _plant(path, _RunsCode(marker))
    got = cached_torch(str(tmp_path), "thing", {"n": 7}, _builder(calls))
    assert not marker.exists(), "loading a cache file ran code"
    assert calls == [1, 1] and torch.equal(got["w"], torch.arange(1000, dtype=torch.float32))
    assert f"cache file {path} is corrupt: does not load with weights_only=True" in caplog.text
    assert "GLOBAL posix.system" in caplog.text or "GLOBAL os.system" in caplog.text, "the refused global is named"
    assert path.read_bytes() == good, "the planted file is replaced by the rebuilt one"


def test_a_shipped_file_whose_unpickling_runs_code_is_refused_and_built(tmp_path, monkeypatch, caplog):
    shipped = _ship(tmp_path, monkeypatch, {"n": 8})
    marker = tmp_path / "pwned"
    _plant(shipped, _RunsCode(marker))
    calls: list = []
    got = cached_torch(str(tmp_path / "user"), "thing", {"n": 8}, _builder(calls))
    assert not marker.exists() and calls == [1] and torch.equal(got["w"], torch.arange(1000, dtype=torch.float32))
    assert f"shipped file {shipped} is corrupt: does not load with weights_only=True" in caplog.text


def test_a_builder_returning_other_objects_is_refused_before_anything_is_written(tmp_path):
    from fractions import Fraction

    import pytest

    with pytest.raises(TypeError, match=r"built a thing that does not load with weights_only=True"):
        cached_torch(str(tmp_path), "thing", {"n": 9}, lambda: {"obj": Fraction(1, 3)})
    assert not (tmp_path / "thing").exists() or list((tmp_path / "thing").iterdir()) == []


def test_every_shipped_artefact_loads_with_weights_only(tmp_path):
    from unlearnbench.cache import SHIPPED_DIR

    files = sorted(SHIPPED_DIR.glob("*/*.pt"))
    assert files
    for f in files:
        assert isinstance(torch.load(f, map_location="cpu", weights_only=True), dict), f


def test_a_cache_file_that_is_a_device_or_fifo_is_never_read_from(tmp_path, caplog):
    """A cache file replaced by a link to /dev/zero (or a FIFO) is refused unread and rebuilt, not read until the
    memory runs out (or forever)."""
    import os

    calls: list = []
    cached_torch(str(tmp_path), "thing", {"n": 10}, _builder(calls))
    path = _only_file(tmp_path, "thing")
    for make in (lambda p: p.symlink_to("/dev/zero"), os.mkfifo):
        path.unlink()
        make(path)
        got = cached_torch(str(tmp_path), "thing", {"n": 10}, _builder(calls))
        assert torch.equal(got["w"], torch.arange(1000, dtype=torch.float32)) and path.is_file()
        assert "is not a regular file" in caplog.text
        caplog.clear()
    assert len(calls) == 3
