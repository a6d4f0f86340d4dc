"""A run directory has one owner: the command that holds its lock. A command that is refused (another writer holds
the lock, or the directory already holds another sweep) is refused before it writes anything there.

A leaderboard folder is written only where it cannot overwrite anyone's files: a new or empty folder, or one that
an earlier build marked as its own (:data:`OUT_MARKER`); see :func:`claim_out_dir`."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from unlearnbench.records import RECORDS, now_iso

LOCK = ".lock"
ARGS = "args.json"
OUT_MARKER = ".unlearnbench-leaderboard"
_MARKER_TEXT = ("This folder is written by `unlearnbench leaderboard`, which writes only into a new or empty folder or "
                "one holding this file.\n")


class RunDirBusy(RuntimeError):
    """Another process (named by pid and host) holds the run directory's lock."""


def refuse_existing(run_dir: str | os.PathLike, resume: bool) -> None:
    """Raise ``FileExistsError`` if ``run_dir`` already holds a sweep and this command is not ``--resume`` of it.

    Checked before anything is written, so a refused command leaves the directory byte-identical; its records and
    settings stay those of the sweep that made them.
    """
    d = Path(run_dir)
    if d.exists() and not d.is_dir():
        raise FileExistsError(f"--out {d}: exists and is not a directory; choose another --out")
    if resume:
        return
    held = [name for name in (RECORDS, ARGS) if (d / name).exists()]
    if held:
        raise FileExistsError(f"{d} already holds a sweep ({', '.join(held)}); use --resume {d} to continue it "
                              f"or --out to start a new run")


class RunDirLock:
    """Exclusive, non-blocking lock on ``run_dir/.lock`` holding the owner's pid, host and start time.

    The kernel drops the lock when its holder dies (even by kill -9), so a crashed sweep never blocks a
    ``--resume``. The file is removed on release; the inode is checked after locking so a writer that opened the
    file just before it was removed does not believe it owns the directory.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def acquire(self) -> "RunDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunDirBusy(f"{self.path.parent} is being written by {self.holder()}; wait for it to finish "
                                 f"or choose another --out") from None
            if self._same_file(fd):
                break
            os.close(fd)  # removed by its previous owner between our open and flock: lock the new file
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso(), "argv": sys.argv}
        os.write(fd, json.dumps(info).encode() + b"\n")
        self.fd = fd
        return self

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def holder(self) -> str:
        """'pid N on host H (since T)' from the lock file, as far as it can be read."""
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on host {info['host']} (since {info['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def write_args(run_dir: str | os.PathLike, saved: dict) -> None:
    """The sweep's settings, for ``--resume`` (written atomically: a failed write keeps the previous file)."""
    from unlearnbench.cache import atomic_write_bytes

    atomic_write_bytes(Path(run_dir) / ARGS, json.dumps(saved, indent=1).encode())


class OutDirRefused(FileExistsError):
    """An output folder that holds files no leaderboard build wrote (it is left as it was)."""


def check_out_dir(out_dir: str | os.PathLike, own: bool = False, flag: str = "--out") -> Path:
    """The absolute output folder, if writing a leaderboard there can overwrite nobody's files: it is new, empty, or
    marked (:data:`OUT_MARKER`) by an earlier build. ``own``: the caller owns the folder already (a run directory's
    ``leaderboard/``, written under the run's lock), so only its being a folder is checked. Writes nothing.

    Raises:
        OutDirRefused: the folder is a file, or holds files without the marker.
    """
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise OutDirRefused(f"{flag} {out} is an existing file; give a new or empty folder")
    if out.is_dir() and not own and not (out / OUT_MARKER).is_file():
        held = sorted(p.name for p in out.iterdir())
        if held:
            shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            raise OutDirRefused(f"{flag} {out} already holds files that `unlearnbench leaderboard` did not write "
                                f"({shown}); give a new or empty folder, or one an earlier build wrote (it holds "
                                f"{OUT_MARKER})")
    return out


def claim_out_dir(out_dir: str | os.PathLike, own: bool = False, flag: str = "--out") -> Path:
    """:func:`check_out_dir`, then the folder is created and marked as a leaderboard's; returns it.

    Raises:
        OutDirRefused: see :func:`check_out_dir`; nothing is written.
        OSError: the folder cannot be created or written.
    """
    out = check_out_dir(out_dir, own, flag)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / OUT_MARKER
    if not marker.is_file() or marker.read_text(encoding="utf-8", errors="replace") != _MARKER_TEXT:
        marker.write_text(_MARKER_TEXT, encoding="utf-8")
    return out
