"""The cache verifies what it loads, names a corrupt file and rebuilds it; its key covers the builder's code."""
from __future__ import annotations

import importlib
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


def test_version_covers_imported_project_modules(monkeypatch):
    from unlearnbench.tasks import digits

    before = code_version(digits.load_unet)
    real = sys.modules["unlearnbench.diffusion"].__file__
    monkeypatch.setattr(sys.modules["unlearnbench.diffusion"], "__file__", real + "-missing")
    assert code_version(digits.load_unet) != before, "digits imports diffusion: its source is part of the key"
