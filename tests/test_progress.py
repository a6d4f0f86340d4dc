"""Long work is never silent: progress lines (rate, ETA) for driver stages when the console is not a terminal, a
tqdm bar when it is, the sweep's per-trial lines with a running count and ETA plus heartbeats from running trials'
intermediate results, and the script that measures a command's console gaps."""
from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

from unlearnbench.progress import Progress, progress
from unlearnbench.trials import Heartbeat

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "console_gaps.py"


def test_line_mode_logs_start_progress_with_eta_and_end(caplog):
    caplog.set_level(logging.INFO, logger="unlearnbench.progress")
    with Progress("distilling", total=10, unit="step", every_s=0.0) as p:
        p.set_postfix(loss="0.01")
        for _ in range(4):
            p.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "distilling: started (10 steps)"
    assert lines[4].startswith("distilling:  40% 4/10 step [") and "<" in lines[4] and lines[4].endswith("loss=0.01")
    assert lines[-1].startswith("distilling: done, 4 steps in ")
    caplog.clear()
    assert list(progress(range(3), "quiet", enabled=False)) == [0, 1, 2] and not caplog.records


def test_a_terminal_gets_a_tqdm_bar():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    with Progress("pretraining", total=5, unit="step", stream=out) as p:
        for _ in range(5):
            p.update()
    text = out.getvalue()  # a bar redrawn in place (at most every 0.5 s), removed when done
    assert text.startswith("\rpretraining:   0%|") and "/5 [" in text and text.endswith("\r")


def test_heartbeat_between_trials_and_a_count_with_eta_per_trial():
    lines: list[str] = []
    beat = Heartbeat(lines.append, total=3, every_s=0.0)
    beat.note("rkl-eps1-s0", {"step": 51, "steps": 400, "loss": {"objective": 0.0123, "forget": 0.5},
                              "lambda": {"0": 0.0, "1": 0.0862}})
    assert lines[-1].startswith("      [0/3 done, ") and "rkl-eps1-s0 step 51/400 objective=0.0123 lambda=[0,0.0862]" \
        in lines[-1]
    rec = {"trial_id": "rkl-eps1-s0", "status": "ok", "metrics": {}, "timing": {"total_s": 2.0}}
    beat.finished(rec)
    assert lines[-1].startswith("[1/3] rkl-eps1-s0") and "(sweep ETA " in lines[-1]
    beat.tick()
    assert lines[-1].endswith("running: trials starting or evaluating")


def test_console_gaps_reports_the_first_line_and_the_largest_silence(tmp_path):
    code = "import time; print('a', flush=True); time.sleep(0.6); print('b', flush=True)"
    r = subprocess.run([sys.executable, str(SCRIPT), "--log", str(tmp_path / "log"), "--", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60)
    summary = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0 and summary.startswith("lines: 2 ") and "exit code: 0" in summary
    gap = float(summary.split("largest gap: ")[1].split("s")[0])
    assert 0.5 <= gap < 5 and "(ended by: b)" in summary
    assert (tmp_path / "log").read_text().splitlines()[-1] == summary
    r = subprocess.run([sys.executable, str(SCRIPT), "--max-gap", "0.3", "--quiet", "--", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and len(r.stdout.strip().splitlines()) == 1


def test_a_single_long_step_still_gets_its_lines(caplog):
    import time

    caplog.set_level(logging.INFO, logger="unlearnbench.progress")
    with Progress("loading a model", every_s=1.0):
        time.sleep(2.6)  # one call, no updates: the watcher writes the lines
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "loading a model: started" and lines[-1].startswith("loading a model: done, in ")
    assert 1 <= sum(x.startswith("loading a model: 0 it [00:0") for x in lines) <= 3, lines
