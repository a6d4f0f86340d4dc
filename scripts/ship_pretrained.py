"""Refresh the artefacts shipped with the package (``unlearnbench/pretrained/``) from a cache.

    python scripts/ship_pretrained.py [--cache-dir DIR]

Resolves everything the default digits tasks need (``unlearnbench pretrain --task digits``: the UNet, the classifier,
the sample pools, the digits-data fine-tune) and the default mixture tasks need (``unlearnbench pretrain --task gmm``:
each task's distilled network, its exact-front tables and its retrained reference), from ``DIR`` (default: the user
cache), building what is missing there, and copies those files, each with its key, code version and sha256, into
``unlearnbench/pretrained/<kind>/``; older shipped files of the same kinds are removed. Run it after a change to the
code that builds them (until then ``tests/test_cache.py::test_the_shipped_*_artefacts_are_what_the_current_code_builds``
fail), then rebuild the committed leaderboards on the new networks.
"""
from __future__ import annotations

import argparse
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from unlearnbench.cache import SHIPPED_DIR, default_cache_dir, used_artefacts  # noqa: E402
from unlearnbench.tasks._digits import pretrain  # noqa: E402
from unlearnbench.tasks._gmm import pretrain as gmm_pretrain  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default=None, help="cache to ship from (default: the user cache)")
    args = ap.parse_args()
    pretrain("digits", cache_dir=args.cache_dir or default_cache_dir(), progress=True)
    gmm_pretrain(cache_dir=args.cache_dir or default_cache_dir())
    keep: dict[str, set[str]] = {}
    for kind, path, source in dict.fromkeys(used_artefacts()):
        dest = SHIPPED_DIR / kind
        dest.mkdir(parents=True, exist_ok=True)
        for f in (path, path.with_suffix(".json")):
            if (dest / f.name).resolve() != f.resolve():
                shutil.copyfile(f, dest / f.name)
        keep.setdefault(kind, set()).update({path.name, path.with_suffix(".json").name})
        print(f"{kind}: {path.name} ({path.stat().st_size / 1e6:.2f} MB, from the {source})")
    for kind, names in keep.items():
        for f in (SHIPPED_DIR / kind).iterdir():
            if f.name not in names:
                print(f"removed the stale {kind}/{f.name}")
                f.unlink()


if __name__ == "__main__":
    main()
