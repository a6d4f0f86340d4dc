"""Re-key the shipped artefacts after their builders moved (same bytes, new code version).

    python scripts/rekey_shipped.py [--dry-run]

A shipped file's name hashes its key and the code version of its builder (:func:`unlearnbench.cache.code_version`:
the source *and the module and qualified names* of every function it reaches). Moving a builder to another module, or
renaming one it calls, gives every artefact a new name although a fresh build would give the same bytes. This script
resolves what the default digits and mixture tasks need (as ``scripts/ship_pretrained.py`` does) without building
anything: each artefact whose new name is not shipped gets the shipped file of the same kind and the same key (the
configuration it was built from) copied under the new name, its ``.json`` updated (code version, builder) and the old
pair removed. It refuses where no shipped file or more than one has that key.

Only for moves: a change that alters what a builder computes needs a rebuild (``scripts/ship_pretrained.py``), and the
committed leaderboards rebuilt on the new networks.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from unlearnbench import cache  # noqa: E402
from unlearnbench.tasks._digits import pretrain as digits_pretrain  # noqa: E402
from unlearnbench.tasks._gmm import pretrain as gmm_pretrain  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="say what would be renamed, change nothing")
    args = ap.parse_args()
    real = cache.cached_torch
    moved: list[tuple] = []

    def rekeying(cache_dir, kind, key_obj, build):
        code = cache.code_version(build)
        new = cache.SHIPPED_DIR / kind / cache.cache_path(cache_dir, kind, {"key": key_obj, "code": code}).name
        if not new.exists():
            want = json.loads(json.dumps(key_obj, sort_keys=True, default=str))
            same = [p for p in sorted((cache.SHIPPED_DIR / kind).glob("*.json"))
                    if json.loads(p.read_text()).get("key") == want]
            if len(same) != 1:
                sys.exit(f"{kind}: {len(same)} shipped files have the key {want}; rebuild with "
                         f"scripts/ship_pretrained.py instead")
            old = same[0]
            print(f"{kind}: {old.stem} -> {new.stem}")
            moved.append((kind, old, new, code, f"{build.__module__}.{build.__qualname__}"))
            if args.dry_run:  # the name is not shipped: resolving it raises NotCached, which ends the dry run
                return real(cache_dir, kind, key_obj, build)
            meta = json.loads(old.read_text())
            meta.update(code=code, builder=moved[-1][4])
            shutil.copyfile(old.with_suffix(".pt"), new)
            new.with_suffix(".json").write_bytes(json.dumps(meta, sort_keys=True, indent=1, default=str).encode())
        return real(cache_dir, kind, key_obj, build)

    patched = [m for m in list(sys.modules.values())
               if (getattr(m, "__name__", "") or "").startswith("unlearnbench") and getattr(m, "cached_torch", None)
               is real]
    for m in patched:
        m.cached_torch = rekeying
    try:
        with cache.no_builds():
            digits_pretrain("digits", cache_dir=tempfile.mkdtemp(), progress=False)
            gmm_pretrain(cache_dir=tempfile.mkdtemp())
    except cache.NotCached as e:  # only in a dry run, where nothing is copied
        if not args.dry_run:
            raise
        print(f"(dry run stops at the first renamed artefact: {e})")
    finally:
        for m in patched:
            m.cached_torch = real
    if not args.dry_run:
        for _, old, new, _, _ in moved:
            if old.stem != new.stem:
                old.unlink()
                old.with_suffix(".pt").unlink()
    print(f"{len(moved)} artefact(s) {'to re-key' if args.dry_run else 're-keyed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
