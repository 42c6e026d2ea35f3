"""Child processes: run a command (``llamafactory-cli``) in its own process group.

No shell is ever involved: commands are argv lists. Ctrl-C or SIGTERM stops the
child's whole process group (torchrun workers included), and the child's exit
code is returned to the caller.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def stop_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGINT, then SIGTERM, then SIGKILL to the child's process group, waiting between each."""
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> None:
    """In a child (before exec, or a pool worker at start): get ``sig`` when vlm itself dies, even by SIGKILL
    (Linux; elsewhere nothing happens). SIGTERM and SIGKILL, what timeout, docker and Slurm send, give Python no
    chance to clean up its children. ``parent``: exit at once if that process already died before this call."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def run_child(argv: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: str | None = None,
              poll: Callable[[], None] | None = None, poll_every_s: float = 1.0) -> int:
    """Run ``argv`` with stdout and stderr appended to ``log_path``; return its exit code.

    ``poll`` is called every ``poll_every_s`` while the child runs (for live progress).
    KeyboardInterrupt or SIGTERM stops the child's process group and is re-raised as
    KeyboardInterrupt once the child is gone.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True,
                                preexec_fn=die_with_parent if sys.platform == "linux" else None)

        def on_term(signum, frame):  # treat SIGTERM like Ctrl-C so the child is stopped too
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGTERM, on_term)
        try:
            while True:
                try:
                    code = proc.wait(timeout=poll_every_s)
                    break
                except subprocess.TimeoutExpired:
                    if poll:
                        poll()
            if poll:
                poll()
            return code
        except KeyboardInterrupt:
            stop_group(proc)
            raise
        finally:
            signal.signal(signal.SIGTERM, old)
            if proc.poll() is None:
                stop_group(proc)


def log_tail(log_path: Path, lines: int = 20) -> str:
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
