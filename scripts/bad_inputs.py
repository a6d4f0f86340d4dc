"""Print every bad input of the test battery and what unlearnbench answers to it.

    python scripts/bad_inputs.py            # one "$ unlearnbench ARGS" line and its "error: ..." line per case

Part 1 replays the command-line battery of tests/test_cli_errors.py (each case: exit 2, one ``error:`` line, nothing
written). Part 2 plants the untrusted inputs that are files rather than flags (a cache file whose unpickling runs
code, records naming files outside their run folder or holding wrong types, a resume with other settings, corrupt
model files, a non-image to forget, a learning rate that blows the network up) and prints the answer to each; the
tests named beside each case assert it. This script only shows the answers (e.g. for a release note).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"


def _cli(argv: list[str]) -> tuple[int, str]:
    """Exit status and stderr of ``unlearnbench ARGV`` run in this process (stdout dropped)."""
    from test_cli_errors import _run

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = _run(argv)
    return rc, err.getvalue()


class _Warnings(logging.Handler):
    """The warnings unlearnbench logs while a case runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _shown(text: str, tmp: str) -> str:
    return text.replace(tmp, "DIR")


def command_line_cases(tmp: str) -> None:
    from test_cli_errors import CASES, FILES

    for name, text in FILES.items():
        (Path(tmp) / name).parent.mkdir(exist_ok=True)
        (Path(tmp) / name).write_text(text)
    for i, (args, _) in enumerate(CASES, 1):
        argv = [a.replace("{tmp}", tmp) for a in args]
        rc, err = _cli(argv + (["--out", f"{tmp}/out"] if argv[0] == "run" and "--out" not in argv
                               and "--resume" not in argv else []))
        shown = " ".join(_shown(a, tmp) for a in args)
        last = [line for line in err.splitlines() if "error" in line][-1:] or ["(no message)"]
        print(f"{i:2d}. $ unlearnbench {shown[:160]}\n    exit {rc}: {_shown(last[0], tmp)}")


def _case_cache(tmp: Path) -> str:
    """tests/test_cache.py: a cache file whose unpickling would run code, with a matching sha256."""
    import hashlib

    import torch

    from test_cache import _RunsCode
    from unlearnbench.cache import cached_torch

    def build():
        return {"w": torch.zeros(3)}

    cached_torch(str(tmp / "cache"), "thing", {"n": 1}, build)
    (path,) = (tmp / "cache" / "thing").glob("*.pt")
    buf = io.BytesIO()
    torch.save({"x": _RunsCode(tmp / "pwned")}, buf)
    path.write_bytes(buf.getvalue())
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps(meta))
    cached_torch(str(tmp / "cache"), "thing", {"n": 1}, build)
    return f"code ran: {(tmp / 'pwned').exists()}"


def _case_records(tmp: Path) -> str:
    """tests/test_leaderboard.py, tests/test_records.py: sample paths out of the run folder, wrong types, a $ name."""
    from synthetic import make_record, write_records
    from unlearnbench.leaderboard import build_leaderboard

    recs = [make_record("toy-data", "fkl", v, 0, samples=p) for v, p in ((0.5, "/etc/passwd"), (1.0, "../x.png"))]
    recs += [make_record("toy-data", "fkl", 2.0, 0), make_record("toy-data", "fkl", 3.0, 0)]
    recs[2]["seed"], recs[3]["method"] = "zero", "$\\alpha$"
    build_leaderboard([write_records(tmp / "run", recs)], tmp / "lb")
    return f"samples copied: {len(list((tmp / 'lb').glob('samples/*/*')))}"


def _case_resume(tmp: Path) -> str:
    """tests/test_sweep.py: --resume DIR with other settings than the sweep DIR holds."""
    run = tmp / "sweep"
    run.mkdir()
    (run / "args.json").write_text(json.dumps({"task": "gmm-concept", "methods": "rkl", "grid": "eps", "seeds": "0"}))
    rc, err = _cli(["run", "--resume", str(run), "--set", "methods.rkl.lr=0.1", "--seeds", "0,1"])
    return f"exit {rc}: {err.strip()}"


def _case_model(tmp: Path) -> str:
    """tests/test_ddpm_task.py, tests/test_sd_task.py: corrupt weights under --model, a non-image to forget."""
    from paper_fixtures import ddpm_dir, image_folder

    model, forget = ddpm_dir(tmp), image_folder(tmp / "forget", 1, seed=0)
    (forget / "notes.png").write_text("not an image\n")
    base = ["run", "--task", "ddpm-data", "--methods", "fkl", "--out", str(tmp / "out")]
    rc1, err1 = _cli([*base, "--model", str(model), "--set", f"task.forget_dir={forget}"])
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    (forget / "notes.png").unlink()
    rc2, err2 = _cli([*base, "--model", str(model), "--set", f"task.forget_dir={forget}"])
    return f"exit {rc1}: {err1.strip()}\n    exit {rc2}: {err2.strip()}"


def _case_diverged(tmp: Path) -> str:
    """tests/test_statuses.py: rkl at lr 0.3 blows the network up."""
    from unlearnbench.config import plan_trials
    from unlearnbench.trials import execute_trial

    fast = {"distill_steps": 30, "distill_batch": 64, "eval_samples": 100, "eval_steps": 10}
    plan = plan_trials("gmm-concept", "rkl", "eps", "0", run_dir=str(tmp / "run"), steps=40,
                       sets=[f"task.{k}={v}" for k, v in fast.items()] + ["methods.rkl.lr=0.3"],
                       cache_dir=str(tmp / "cache"))
    rec = execute_trial(plan.trials[0])
    return f"status {rec['status']}: {rec['error']}"


FILE_CASES = [
    ("a cache file whose unpickling runs `touch`, its sha256 rewritten to match", _case_cache),
    ("records naming /etc/passwd and ../x.png as samples, a string seed, a method named $\\alpha$", _case_records),
    ("run --resume DIR --set methods.rkl.lr=0.1 --seeds 0,1", _case_resume),
    ("a non-image in forget_dir; then a corrupt unet/diffusion_pytorch_model.safetensors", _case_model),
    ("rkl with --set methods.rkl.lr=0.3", _case_diverged),
]


def file_cases(tmp: str) -> None:
    handler = _Warnings()
    logging.getLogger("unlearnbench").addHandler(handler)
    for i, (what, case) in enumerate(FILE_CASES, 1):
        handler.lines.clear()
        folder = Path(tmp) / f"case{i}"
        folder.mkdir()
        answer = case(folder)
        print(f"{i:2d}. {what}\n    {_shown(answer, tmp)}")
        for line in dict.fromkeys(handler.lines):
            print(f"    warning: {_shown(line, tmp)[:220]}")


def main() -> int:
    sys.path.insert(0, str(TESTS))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        print("Command-line inputs (tests/test_cli_errors.py):")
        command_line_cases(tmp)
        print("\nFiles from others: caches, records, run folders, models (the tests named in each case):")
        file_cases(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
