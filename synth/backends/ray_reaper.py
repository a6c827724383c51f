"""Ends every process of a private Ray cluster once the run that started it is gone.

A run with `teacher.vllm.ray.workers` and no `ray.address` starts its own cluster (GCS, raylet,
DashboardAgent, RuntimeEnvAgent, workers) on this machine. When the run is killed (SIGKILL: no
cleanup runs), the workers and raylet follow within seconds, but Ray's two agents first try to
tell the dead cluster that their raylet died, with a fixed 60-second timeout
(ray._private.utils.publish_error_to_driver), and live on for 60 to 140 s.

So the run starts this reaper beside its cluster: a small process in its own session, whose
standard input is a pipe from the run. The pipe reads end-of-file when the run ends, however
it ends; the reaper then sends SIGKILL to every process of the cluster and exits.

Which processes are the cluster's: those that carry its mark in their environment
(STILLHOUSE_RAY_CLUSTER=<token>: set only while the run starts the cluster, so processes the
run starts later never carry it), and every descendant of one. The mark alone is not enough:
Ray's agents and workers rename themselves (setproctitle), which overwrites the start of their
environment block in /proc as well, and sometimes the mark with it (a CI run's agents outlived
the kill that way). So while the run lives, the reaper looks every half second and remembers
each process it found (pid and start time, so a reused pid is never taken for one); the
agents, whose parent the raylet is, are known long before the raylet dies. Linux only
(/proc); elsewhere the run logs that the agents may outlive a kill.

    python -m synth.backends.ray_reaper TOKEN
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

MARK = "STILLHOUSE_RAY_CLUSTER"


def _scan(token: str) -> tuple[dict[int, tuple[int, int]], list[int]]:
    """One pass over /proc: every running process as pid -> (parent pid, start time in clock
    ticks), zombies left out; and the pids among them whose environment holds MARK=token (not
    this process)."""
    needle = f"{MARK}={token}".encode() + b"\0"
    table, marks = {}, []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_bytes()
            fields = stat[stat.rindex(b")") + 2:].split()  # after the command name, which may hold spaces
            if fields[0] in (b"Z", b"X"):
                continue
            table[pid] = (int(fields[1]), int(fields[19]))
            if pid != os.getpid() and needle in (entry / "environ").read_bytes():
                marks.append(pid)
        except OSError:  # gone, or not ours
            continue
    return table, marks


def marked(token: str) -> list[int]:
    """Pids of the running processes whose environment holds MARK=token (not this one)."""
    return _scan(token)[1]


def cluster(token: str, known: dict[int, int]) -> dict[int, int]:
    """The cluster's running processes as pid -> start time: those found before (if still the
    same process), the marked ones, and every descendant of either."""
    table, marks = _scan(token)
    found = {pid: start for pid, start in known.items() if table.get(pid, (0, None))[1] == start}
    found.update({pid: table[pid][1] for pid in marks})
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found and child != os.getpid():
                found[child] = table[child][1]
                stack.append(child)
    return found


def reap(token: str, known: dict[int, int] | None = None, rounds: int = 20) -> int:
    """SIGKILL the cluster's processes until none is left (new ones can appear while a dying
    raylet starts a worker); the number killed."""
    killed: set[int] = set()
    known = dict(known or {})
    for _ in range(rounds):
        known = cluster(token, known)
        if not known:
            break
        for pid in known:
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
    known: dict[int, int] = {}
    stdin = sys.stdin.fileno()
    while True:  # the pipe reads end-of-file when the run closes it or dies
        if select.select([stdin], [], [], 0.5)[0] and not os.read(stdin, 4096):
            break
        known = cluster(token, known)
    reap(token, known)


if __name__ == "__main__":
    main()
