"""Ends every process of a private Ray cluster once the run that started it is gone.

A run with `teacher.vllm.ray.workers` and no `ray.address` starts its own cluster (GCS, raylet,
DashboardAgent, RuntimeEnvAgent, workers) on this machine. When the run is killed (SIGKILL: no
cleanup runs), the workers and raylet follow within seconds, but Ray's two agents first try to
tell the dead cluster that their raylet died, with a fixed 60-second timeout
(ray._private.utils.publish_error_to_driver), and live on for 60 to 140 s.

So the run starts this reaper beside its cluster: a small process in its own session, whose
standard input is a pipe from the run. The pipe reads end-of-file when the run ends, however
it ends; the reaper then sends SIGKILL to every process that carries the cluster's mark in its
environment (STILLHOUSE_RAY_CLUSTER=<token>: set only while the run starts the cluster, so
processes the run starts later never carry it) and exits. Linux only (/proc); elsewhere the
run logs that the agents may outlive a kill.

    python -m synth.backends.ray_reaper TOKEN
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MARK = "STILLHOUSE_RAY_CLUSTER"


def marked(token: str) -> list[int]:
    """Pids of the processes whose environment holds MARK=token (not this one)."""
    needle = f"{MARK}={token}".encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return pids


def reap(token: str, rounds: int = 20) -> int:
    """SIGKILL the marked processes until none is left (new ones can appear while a dying raylet
    starts a worker); the number killed."""
    killed: set[int] = set()
    for _ in range(rounds):
        pids = marked(token)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except OSError:
                pass
        time.sleep(0.1)
    return len(killed)


def start(token: str) -> subprocess.Popen | None:
    """The reaper for the cluster marked `token`, watching this process (None: not on Linux)."""
    if not Path("/proc/self/environ").exists():
        return None
    env = {k: v for k, v in os.environ.items() if k != MARK}
    return subprocess.Popen([sys.executable, "-m", "synth.backends.ray_reaper", token], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)


def main() -> None:
    token = sys.argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the run must not end the reaper first
    sys.stdin.buffer.read()  # returns when the run closes the pipe or dies
    reap(token)


if __name__ == "__main__":
    main()
