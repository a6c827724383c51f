"""A sandbox for code a model wrote: bubblewrap (bwrap) namespaces plus resource limits.

What runs inside sees a read-only /usr (and the /bin, /lib links to it), its own /proc, /dev
and /tmp, and one writable directory, a fresh temporary one (/sandbox, its working directory),
nothing else: not the user's home, not the project, no secrets (the environment is cleared,
only PATH, HOME=/sandbox and LANG are set). It has no network: its own loopback, nothing
listening on it, and no route out. Limits: CPU seconds, wall seconds (the process group is
killed), address space, processes (RLIMIT_NPROC, counted per user: as root each run gets a
user id of its own, so a fork bomb stops at the limit and touches nothing else), the size of
a file it writes, and the bytes of output read back (the rest is dropped and the run killed).

Bubblewrap is Debian's `bubblewrap` (`make setup` installs it): the tool Flatpak runs every
application in, a small setuid-free program that needs only user namespaces. Where it is
missing or the kernel refuses namespaces, `run` still applies the limits, the empty
environment and the temporary directory, but the code sees the file system and the network;
`isolation()` says which, and the first such run logs a warning naming what to install.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from synth.config import SandboxLimits as Limits

logger = logging.getLogger(__name__)

PYTHON = "/usr/bin/python3"  # the system's Python: what /usr holds, with its standard library


@dataclass
class Outcome:
    """How a sandboxed run ended. `reason` is None when it exited by itself (see returncode),
    else "wall time", "cpu time", "output limit" or "signal N"."""

    returncode: int | None
    stdout: str
    stderr: str
    reason: str | None
    wall_s: float
    isolated: bool

    @property
    def ok(self) -> bool:
        return self.reason is None and self.returncode == 0


def _bwrap_args(workdir: Path) -> list[str]:
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib64", "lib32"):
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{top}"]
        elif path.is_dir():
            args += ["--ro-bind", str(path), f"/{top}"]
    return args + ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", str(workdir), "/sandbox",
                   "--chdir", "/sandbox", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME",
                   "/sandbox", "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--"]


@lru_cache(maxsize=1)
def isolation() -> str | None:
    """None when bubblewrap runs here with every namespace, else why not (the fallback's warning)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap; `make setup` does)"
    with tempfile.TemporaryDirectory(prefix="stillhouse-sandbox-probe-") as tmp:
        res = subprocess.run([*_bwrap_args(Path(tmp)), "/usr/bin/true"], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        return f"bubblewrap cannot create namespaces here ({res.stderr.strip()[:200]}): enable unprivileged user namespaces"
    return None


def _own_tasks() -> int:
    """Processes and threads of this user on the machine (what RLIMIT_NPROC counts)."""
    uid, n = os.getuid(), 0
    if not Path("/proc").is_dir():
        return 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                n += len(os.listdir(entry / "task"))
        except OSError:
            continue
    return n


def _limits_args(limits: Limits, uid: int | None) -> list[str]:
    mib = 1024 * 1024
    args = []
    if uid is not None:  # root: a user of its own, so RLIMIT_NPROC counts only this run's processes
        args += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        nproc = limits.processes
    else:  # RLIMIT_NPROC counts all of this user's tasks: allow what runs already, plus the limit
        nproc = _own_tasks() + limits.processes
    return args + ["prlimit", f"--cpu={limits.cpu_s}", f"--as={limits.memory_mb * mib}",
                   f"--nproc={nproc}", f"--fsize={limits.file_mb * mib}", "--core=0", "--"]


def _read(stream, cap: int, out: list[bytes], over: threading.Event) -> None:
    size = 0
    while chunk := stream.read(65536):
        if size < cap:
            out.append(chunk[:cap - size])
        size += len(chunk)
        if size > cap:
            over.set()


def _wait(proc: subprocess.Popen, limits: Limits, over: threading.Event) -> str | None:
    """Wait for `proc` within the wall time and output limit: why it was killed, or None."""
    deadline = time.monotonic() + limits.wall_s
    while True:
        try:
            proc.wait(timeout=0.05)  # returns as soon as it exits
            return None
        except subprocess.TimeoutExpired:
            pass
        reason = "wall time" if time.monotonic() > deadline else "output limit" if over.is_set() else None
        if reason:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            return reason


def run(argv: list[str], files: dict[str, str], limits: Limits | None = None) -> Outcome:
    """Run `argv` (e.g. [PYTHON, "main.py"]) in a fresh temporary directory holding `files`
    (relative name -> text), inside the sandbox; the directory is removed afterwards."""
    limits = limits or Limits()
    if shutil.which("prlimit") is None:
        raise RuntimeError("the sandbox for model-written code needs Linux with util-linux's prlimit and setpriv "
                           "(Debian/Ubuntu: apt-get install util-linux)")
    why_not = isolation()
    if why_not:
        _warn_once(why_not)
    workdir = Path(tempfile.mkdtemp(prefix="stillhouse-sandbox-"))
    try:
        for name, text in files.items():
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            (workdir / name).write_text(text, encoding="utf-8")
        uid = 100_000 + secrets.randbelow(60_000) if os.geteuid() == 0 else None
        if uid is not None:
            for path in [workdir, *workdir.rglob("*")]:
                os.chown(path, uid, uid)
        inner = _bwrap_args(workdir) if not why_not else []
        env = None if not why_not else {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8"}
        started = time.monotonic()
        proc = subprocess.Popen([*_limits_args(limits, uid), *inner, *argv], cwd=workdir, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        out: list[bytes] = []
        err: list[bytes] = []
        over = threading.Event()
        readers = [threading.Thread(target=_read, args=(s, limits.output_kb * 1024, b, over), daemon=True)
                   for s, b in ((proc.stdout, out), (proc.stderr, err))]
        for t in readers:
            t.start()
        reason = _wait(proc, limits, over)
        for t in readers:
            t.join(timeout=5)
        code = proc.returncode
        sig = -code if code < 0 else code - 128 if code > 128 and not why_not else 0  # bwrap: 128 + the signal
        if reason is None and sig:
            reason = "cpu time" if sig in (signal.SIGXCPU, signal.SIGKILL) and _cpu_spent(limits, started) else f"signal {sig}"
        elif reason is None and over.is_set():
            reason = "output limit"
        return Outcome(code, b"".join(out).decode("utf-8", "replace"), b"".join(err).decode("utf-8", "replace"),
                       reason, time.monotonic() - started, isolated=not why_not)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _cpu_spent(limits: Limits, started: float) -> bool:
    return time.monotonic() - started >= limits.cpu_s * 0.9


_warned: set[str] = set()


def _warn_once(why: str) -> None:
    if why not in _warned:
        _warned.add(why)
        logger.warning("sandbox: %s; model-written code runs with limits and an empty environment, but sees the "
                       "file system and the network", why)
