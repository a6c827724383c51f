"""The reaper beside a private Ray cluster (synth.backends.ray_reaper), without Ray: a marked
process stands for the raylet, its child for an agent whose environment no longer shows the
mark (Ray's setproctitle overwrites the start of that block in /proc, sometimes the mark too)."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

from synth.backends import ray_reaper

from conftest import HANG_S

# Starts a child without the mark, prints its pid, then waits to be killed.
RAYLET = ("import os, subprocess, sys, time\n"
          "env = {k: v for k, v in os.environ.items() if k != 'STILLHOUSE_RAY_CLUSTER'}\n"
          "agent = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], env=env)\n"
          "print(agent.pid, flush=True)\n"
          "time.sleep(600)\n")


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def test_the_reaper_ends_the_marked_processes_and_every_descendant_marked_or_not():
    token = uuid.uuid4().hex
    reaper = ray_reaper.start(token)
    raylet = subprocess.Popen([sys.executable, "-c", RAYLET], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, ray_reaper.MARK: token})
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # not the cluster's
    agent = int(raylet.stdout.readline())
    try:
        assert ray_reaper.marked(token) == [raylet.pid]  # the agent does not show the mark
        reaper.stdin.close()  # what the run's death does
        assert reaper.wait(timeout=HANG_S) == 0
        assert raylet.wait(timeout=HANG_S) == -9
        assert not _running(agent), "the unmarked child of a marked process outlived the run"
        assert bystander.poll() is None, "a process that is not the cluster's was killed"
    finally:
        for proc in (raylet, bystander):
            proc.kill()
            proc.wait()
        if _running(agent):
            os.kill(agent, 9)
