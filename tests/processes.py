"""Subprocesses that start processes of their own (torchrun's ranks, DataLoader workers), run so that a timeout ends
all of them: each runs in a session of its own, and a timeout kills its whole process group (``subprocess.run``'s
timeout kills only the process it started, and the ranks it launched would live on, holding ports and CPU)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence


def run_group(cmd: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
              cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` whose timeout kills every process ``cmd`` started,
    then raises ``subprocess.TimeoutExpired`` with what they printed."""
    with subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
        except BaseException:  # Ctrl-C, pytest-timeout: leave no rank behind either
            _kill_group(proc)
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the session's group id is the leader's pid
    except ProcessLookupError:
        pass
    proc.wait()


def free_port() -> int:
    """A TCP port free on the loopback now, for torchrun's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, timeout: float, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node nproc ARGS`` on the loopback (one thread per rank), its ranks ended on timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), *args]
    return run_group(cmd, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
