"""Take an entry's records off the leaderboard when its task defaults change (issue 20, item 8: the tuning search
moved them), keeping them for provenance.

    python scripts/supersede.py --task gmm-concept --method esd --setting lr=0.001 [--records leaderboards/records]
        [--to leaderboards/superseded] [--dry-run]

Every record (trial and attack) of that task and method whose resolved settings match every ``--setting`` (the
record's ``method_config``, which attack records carry too) is moved from ``<records>/<dir>/records.jsonl`` to
``<to>/<dir>/records.jsonl`` (appended), and each touched folder's ``summary.csv`` is rewritten from the records it
keeps; a folder left with none moves whole. The leaderboard reads ``leaderboards/records`` only, so the moved
records leave the fronts, hypervolumes and claims; the git history and ``leaderboards/superseded`` keep them.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def matches(rec: dict, task: str, method: str, settings: dict) -> bool:
    t = rec.get("task")
    name = t.get("name") if isinstance(t, dict) else t
    if name != task or rec.get("method") != method:
        return False
    cfg = rec.get("method_config") if isinstance(rec.get("method_config"), dict) else {}
    return all(k in cfg and cfg[k] == v for k, v in settings.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True)
    ap.add_argument("--method", required=True)
    ap.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--records", default="leaderboards/records")
    ap.add_argument("--to", default="leaderboards/superseded")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    settings = {k: _value(v) for k, v in (s.split("=", 1) for s in args.setting)}
    root, dest = Path(args.records), Path(args.to)
    files = sorted(root.rglob("records.jsonl"))
    total = 0
    for f in files:
        keep, move = [], []
        for line in f.read_text().splitlines():
            (move if matches(json.loads(line), args.task, args.method, settings) else keep).append(line)
        if not move:
            continue
        rel = f.parent.relative_to(root)
        total += len(move)
        print(f"{rel}: {len(move)} record(s) -> {dest / rel}, {len(keep)} kept")
        if args.dry_run:
            continue
        if not keep and not (dest / rel).exists():  # nothing stays: the whole folder moves (plan, args, summary)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(f.parent), str(dest / rel))
            continue
        (dest / rel).mkdir(parents=True, exist_ok=True)
        with open(dest / rel / "records.jsonl", "a") as out:
            out.write("".join(line + "\n" for line in move))
        f.write_text("".join(line + "\n" for line in keep))
        if (f.parent / "summary.csv").exists():
            from unlearnbench.records import iter_latest, read_records
            from unlearnbench.sweep import write_summary

            recs = sorted(iter_latest(read_records([f])), key=lambda r: r["trial_id"])
            write_summary(str(f.parent), recs)
    print(f"{total} record(s) {'would be ' if args.dry_run else ''}moved")


if __name__ == "__main__":
    main()
