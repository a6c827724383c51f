"""The vllm teacher on a real local Ray cluster (teacher.vllm.ray.workers), pinned to loopback.

One cluster for the module, started with `ray start --head --block` in its own process group
on 127.0.0.1 with no dashboard, and stopped by signalling that group (only the cluster these
tests started). Two CPU workers, each an actor with its own in-process engine on the tiny
model; this process (or a `synth generate` subprocess) is the driver that writes the logs.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from synth.config import load_recipe
from synth.generate import run_generate
from synth.plan import load_plan

from conftest import HANG_S, _free_port, make_recipe, read_jsonl
from killing import lines

pytestmark = pytest.mark.slow


def _ray_processes(temp_dir: str | None = None) -> list[psutil.Process]:
    """Ray's processes (raylet, gcs, workers: `ray::...`), of one cluster's temp dir if given."""
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if p.pid == os.getpid():
            continue
        if ("ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd) and (temp_dir is None or temp_dir in cmd or "ray::" in cmd):
            found.append(p)
    return found


def _running(p: psutil.Process) -> bool:
    """Alive and not a zombie (a killed process whose parent has not reaped it yet is gone)."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _teacher_workers() -> list[psutil.Process]:
    """Teacher actors still running. An actor that has exited but is not reaped yet (a zombie,
    a moment after its driver was killed) is not running: it is left out, as one already gone."""
    workers = []
    for p in _ray_processes():
        try:
            if _running(p) and "ray::TeacherWorker" in " ".join(p.cmdline() or [p.name()]):
                workers.append(p)
        except psutil.NoSuchProcess:  # ZombieProcess is one too
            continue
    return workers


# Ray advertises the machine's first non-loopback address unless clusters are "disabled" (its
# single-machine mode), which makes every node, driver and worker address 127.0.0.1. A test
# cluster needs no token (Ray 2.60 turns token auth on when ~/.ray/auth_token exists, and a
# client must then find the same token).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ray_cluster():
    saved = {name: os.environ.get(name) for name in LOOPBACK_ENV}
    os.environ.update(LOOPBACK_ENV)  # for the head and every driver these tests start
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    port = _free_port()
    log = Path(temp_dir) / "head.log"
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(port), "--num-cpus", "4", "--include-dashboard", "false", "--disable-usage-stats",
           "--temp-dir", temp_dir]
    with log.open("wb") as fh:
        head = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HANG_S
        while subprocess.run([str(Path(sys.executable).parent / "ray"), "status", "--address", address],
                             capture_output=True).returncode != 0:
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(1)  # polling the cluster's status, not synchronising on time
        assert "Local node IP: 127.0.0.1" in log.read_text(errors="replace"), log.read_text(errors="replace")[-2000:]
        yield address
    finally:
        # The cluster this fixture started, and nothing of stillhouse's: `ray start --block`
        # takes ~30 s to wind down on SIGTERM, and Ray's RuntimeEnvAgent and DashboardAgent can
        # take minutes to notice their raylet is gone (longer on a slow machine). So: SIGTERM,
        # a moment, then SIGKILL for the process group and every process of its temp dir;
        # nothing may survive that.
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        for p in _ray_processes(temp_dir):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        alive = [p for p in psutil.wait_procs(_ray_processes(temp_dir), timeout=30)[1] if _running(p)]
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        assert not alive, f"Ray processes of the test cluster survived SIGKILL: {[p.pid for p in alive]}"


def _recipe(tmp_path, tiny_model, address, n=40, max_tokens=8, out="out", workers=2):
    return make_recipe(tmp_path, tiny_model, out=out, seeds=[{"question": f"What is {i} plus {i}?"} for i in range(n)],
                       sampling={"n": 1, "temperature": 0.0, "max_tokens": max_tokens},
                       vllm={"ray": {"workers": workers, "address": address, "cpus_per_worker": 1}})


def _generate(path, *extra):
    return subprocess.Popen([sys.executable, "-m", "synth.cli", "generate", str(path), "--no-progress", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_records(raw: Path, n: int, proc: subprocess.Popen, timeout: float = HANG_S) -> None:
    deadline = time.monotonic() + timeout
    while lines(raw) < n:  # complete lines: the run is writing the last one
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"synth generate ended before {n} records ({proc.returncode}):\n{err[-3000:]}")
        assert time.monotonic() < deadline, f"fewer than {n} records in {raw} after {timeout} s"
        time.sleep(0.2)


def _generate_until_some_records(tmp_path, tiny_model, address):
    """A 240-request `synth generate` on two Ray workers, started in a subprocess and left
    running once its first records are in the raw log: (raw log path, recipe path, process)."""
    path = _recipe(tmp_path, tiny_model, address, n=240, max_tokens=48)
    raw = tmp_path / "out" / "raw.jsonl"
    proc = _generate(path)
    _wait_for_records(raw, 5, proc)
    return raw, path, proc


def test_a_recipe_runs_unchanged_on_a_ray_cluster(tmp_path, tiny_model, vllm_backend, ray_cluster):
    """Two workers: the same request ids and (greedy) answers as the in-process engine, each once."""
    path = _recipe(tmp_path, tiny_model, ray_cluster)
    res = subprocess.run([sys.executable, "-m", "synth.cli", "generate", str(path), "--no-progress"],
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    on_ray = read_jsonl(tmp_path / "out" / "raw.jsonl")
    local = load_plan(path, ["teacher.vllm.ray.workers=0", f"output.dir={tmp_path / 'local'}"])
    run_generate(local, vllm_backend, progress=False)
    in_process = read_jsonl(tmp_path / "local" / "raw.jsonl")
    assert len(on_ray) == len({r["id"] for r in on_ray}) == 40
    assert {r["id"]: r["messages"][-1]["content"] for r in on_ray} == {r["id"]: r["messages"][-1]["content"] for r in in_process}
    assert "2 Ray workers ready" in (tmp_path / "out" / "run.log").read_text()


def test_a_worker_killed_mid_run_loses_nothing(tmp_path, tiny_model, ray_cluster):
    raw, _, proc = _generate_until_some_records(tmp_path, tiny_model, ray_cluster)
    victims = _teacher_workers()
    assert len(victims) == 2, [p.cmdline() for p in victims]
    victims[0].kill()
    out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 0, err[-3000:]
    records = read_jsonl(raw)
    assert len(records) == len({r["id"] for r in records}) == 240, "every request kept once"
    assert read_jsonl(tmp_path / "out" / "failures.jsonl") == []
    assert "a Ray worker died" in (tmp_path / "out" / "run.log").read_text()


def test_the_driver_killed_mid_run_resumes_and_leaves_no_workers(tmp_path, tiny_model, ray_cluster):
    raw, path, proc = _generate_until_some_records(tmp_path, tiny_model, ray_cluster)
    proc.kill()
    proc.wait()
    before = {r["id"] for r in read_jsonl(raw)}
    deadline = time.monotonic() + HANG_S  # Ray ends a dead driver's actors
    while _teacher_workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _teacher_workers(), "the killed driver's workers were left running"
    res = subprocess.run([sys.executable, "-m", "synth.cli", "generate", str(path), "--no-progress"],
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    records = read_jsonl(raw)
    assert len(records) == len({r["id"] for r in records}) == 240
    assert before <= {r["id"] for r in records}
    assert f"{len(before)} from earlier runs" in res.stdout or f"{len(before)} already" in (tmp_path / "out" / "run.log").read_text()
    # No engine outlives a finished run either.
    deadline = time.monotonic() + HANG_S
    while _teacher_workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _teacher_workers()


def _agents() -> set[int]:
    """Pids of Ray's agent processes on this machine (any cluster's)."""
    found = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(name in " ".join(p.info["cmdline"] or []) for name in ("ray::DashboardAgent", "ray::RuntimeEnvAgent")):
            found.add(p.info["pid"])
    return found


def _alive(pids) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if _running(psutil.Process(pid)):
                out.add(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_a_killed_run_leaves_nothing_of_its_private_cluster(tmp_path, tiny_model):
    """A run that starts its own cluster (no ray.address) and is SIGKILLed: Ray's agents would
    live on for 60 s and more (they report the raylet's death to a dead GCS with a fixed 60 s
    timeout); the run's reaper ends them, and everything else of that cluster, within seconds."""
    before = _agents()  # the module's other cluster, if it is up
    path = _recipe(tmp_path, tiny_model, None, n=40, max_tokens=48, workers=1)
    proc = _generate(path)
    deadline = time.monotonic() + HANG_S
    while len(_agents() - before) < 2:  # this run's DashboardAgent and RuntimeEnvAgent are up
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the private cluster's agents did not start"
        time.sleep(0.2)
    ours = _agents() - before
    proc.kill()
    proc.wait()
    killed = time.monotonic()
    while _alive(ours) and time.monotonic() - killed < 20:
        time.sleep(0.2)
    assert not _alive(ours), f"Ray's agents outlived the killed run by 20 s: {_describe(_alive(ours))}"
    marked = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _has_mark(e)]
    assert not _alive(marked), "a process of the private cluster is left"


def _describe(pids) -> list[str]:
    """Each process with its parent, whether it carries the reaper's mark, and its command line."""
    out = []
    for pid in sorted(pids):
        try:
            p = psutil.Process(pid)
            out.append(f"{pid} (parent {p.ppid()}, marked {_has_mark(Path('/proc') / str(pid))}): {' '.join(p.cmdline())[:120]}")
        except psutil.Error as exc:
            out.append(f"{pid}: {exc}")
    reapers = [p.pid for p in psutil.process_iter(["cmdline"]) if "synth.backends.ray_reaper" in " ".join(p.info["cmdline"] or [])]
    return out + [f"reapers running: {reapers}"]


def _has_mark(entry: Path) -> bool:
    try:
        return b"STILLHOUSE_RAY_CLUSTER=" in (entry / "environ").read_bytes()
    except (OSError, psutil.Error):
        return False


def test_ray_options_are_validated(tmp_path, tiny_model):
    path = _recipe(tmp_path, tiny_model, None)
    with pytest.raises(ValueError, match="teacher.vllm.ray.workers: must be 0"):
        load_recipe(path, ["teacher.vllm.ray.workers=-1"])
    with pytest.raises(ValueError, match="data_parallel_size: vLLM's offline engine does not run data parallel"):
        load_recipe(path, ["teacher.vllm.engine_kwargs={data_parallel_size: 2}"])
