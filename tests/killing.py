"""Kill a real run mid-way, the way a crash or an OOM killer would."""

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable

import psutil
import pytest

TAG = "STILLHOUSE_TEST_TAG"


def tagged(tag: str) -> list[psutil.Process]:
    """Live processes whose environment carries `tag` (what one killed run started, wherever
    they were re-parented), and no process of a test running beside it."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get(TAG) == tag:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def sigkill_when(cmd: list[str], ready: Callable[[], bool], timeout: float, env: dict | None = None) -> str:
    """Start `cmd` in its own session, SIGKILL it once `ready()` holds, and check that no
    process it started outlives it. Returns the tag in the environment of every process it
    started (see `tagged`)."""
    tag = uuid.uuid4().hex
    env = {**(env if env is not None else os.environ), TAG: tag}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the run exited ({proc.returncode}) before it could be killed mid-way")
            if time.monotonic() > deadline:
                pytest.fail(f"the run did not reach the kill point within {timeout} s")
            time.sleep(0.02)  # the polling interval of a condition wait, not a synchronisation sleep
        children = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    alive = psutil.wait_procs(children, timeout=120)[1]  # gone as soon as they are; the limit is for a hang
    assert not alive, f"processes outlived the killed run: {alive}"
    return tag


def lines(path) -> int:
    """Complete lines in a file (a torn last line has no newline)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0
