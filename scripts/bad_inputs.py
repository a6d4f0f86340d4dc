"""Print every bad input of the CLI test battery (tests/test_cli_errors.py) and what the CLI answers to it.

    python scripts/bad_inputs.py            # one "$ unlearnbench ARGS" line and its "error: ..." line per case

The battery itself asserts the messages; this only shows them (e.g. for a release note).
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"


def main() -> int:
    sys.path.insert(0, str(TESTS))
    from test_cli_errors import CASES, FILES, _run

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in FILES.items():
            (Path(tmp) / name).parent.mkdir(exist_ok=True)
            (Path(tmp) / name).write_text(text)
        os.chdir(tmp)
        for i, (args, _) in enumerate(CASES, 1):
            argv = [a.replace("{tmp}", tmp) for a in args]
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = _run(argv + (["--out", f"{tmp}/out"] if argv[0] == "run" and "--out" not in argv
                                  and "--resume" not in argv else []))
            shown = " ".join(a.replace(tmp, "DIR") for a in args)
            last = [line for line in err.getvalue().splitlines() if "error" in line][-1:] or ["(no message)"]
            print(f"{i:2d}. $ unlearnbench {shown}\n    exit {rc}: {last[0].replace(tmp, 'DIR')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
