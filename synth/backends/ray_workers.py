"""The `vllm` teacher on a Ray cluster: one engine per Ray actor, this process the only writer.

With `teacher.vllm.ray.workers: N`, N actors each start synth's own vLLM backend (the same
engine arguments, KV cache and sampling as in-process). This process plans the requests and
drops those already in the raw log exactly as without Ray; the pending ones go out in chunks,
each chunk a streaming call on one actor, whose finished completions come back one by one as
the engine finishes them and are written here at once. So a kill of this process loses only
what was in flight (a rerun resends it), and the record ids are the in-process ones: the
teacher's identity and the requests do not depend on where they run.

An actor that dies (a killed process, a lost node) is restarted by Ray; the requests of its
chunk that had not come back are sent again (up to ray.max_retries times, then failures with
the reason), and a result that arrives twice is written once. When this process ends, its
actors end with it (they belong to its Ray job); a cluster it started itself is shut down, and
if this process is killed, the reaper it started beside that cluster ends the cluster's
processes within a second or two (synth.backends.ray_reaper).
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from synth.backends import ray_reaper
from synth.backends.base import Completion, Failure
from synth.backends.vllm_engine import VllmBackend
from synth.config import TeacherConfig
from synth.requests import Request

logger = logging.getLogger(__name__)

# The environment a worker needs as this process has it (offline hubs, vLLM and torch settings).
PASSED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
              "TORCH_CPP_LOG_LEVEL", "HF_HUB_DISABLE_PROGRESS_BARS", "VLLM_CPU_KVCACHE_SPACE", "VLLM_LOGGING_LEVEL")


class TeacherWorker:
    """A Ray actor holding one in-process vLLM engine for the teacher."""

    def __init__(self, cfg: TeacherConfig):
        self.backend = VllmBackend(cfg)

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "vocab": self.backend.vocab, "startup_s": self.backend.startup_s}

    def generate(self, requests: list[Request]) -> Iterator[Completion | Failure]:
        yield from self.backend.generate(requests)


class RayBackend:
    """`teacher.backend: vllm` with `teacher.vllm.ray.workers > 0`."""

    name = "vllm"
    identity_for = staticmethod(VllmBackend.identity_for)

    def __init__(self, cfg: TeacherConfig, identity: dict[str, Any] | None = None):
        if cfg.vllm.ray.address is None:
            # A private cluster: Ray's one-machine mode, where every address is 127.0.0.1 (else
            # it advertises the first non-loopback address). Read when ray is first imported.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        try:
            import ray
        except ImportError:
            raise ImportError("teacher.vllm.ray.workers: needs Ray: pip install 'stillhouse[ray]'") from None
        self.cfg = cfg
        self._identity = identity if identity is not None else self.identity_for(cfg)
        opts = cfg.vllm.ray
        self._ray = ray
        self._own_cluster = False
        if not ray.is_initialized():
            env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
            init: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False, "include_dashboard": False}
            if opts.address is None:  # a private cluster for this run, on loopback only
                init["_node_ip_address"] = "127.0.0.1"
                self._own_cluster = True
                self._start_private(init)
            else:
                init["address"] = opts.address
                try:
                    ray.init(**init)
                except ConnectionError as exc:
                    raise ValueError(f"teacher.vllm.ray.address: no Ray cluster at {opts.address} ({exc}); start one "
                                     "with `ray start --head`, or leave address empty for a private one") from None
        gpus = opts.gpus_per_worker
        if gpus is None:
            has_gpus = ray.cluster_resources().get("GPU", 0) > 0
            gpus = float(cfg.vllm.tensor_parallel_size * cfg.vllm.pipeline_parallel_size) if has_gpus else 0.0
        actor = ray.remote(TeacherWorker).options(num_cpus=opts.cpus_per_worker, num_gpus=gpus, max_restarts=-1,
                                                  max_concurrency=2)
        started = time.monotonic()
        logger.info("starting %d Ray workers for %s (%g CPUs, %g GPUs each)", opts.workers, cfg.model,
                    opts.cpus_per_worker, gpus)
        self.workers = [actor.remote(cfg) for _ in range(opts.workers)]
        try:
            info = ray.get([w.ready.remote() for w in self.workers])
        except Exception as exc:
            self.close()
            raise ValueError(f"teacher.vllm.ray: a worker could not start the teacher's engine: {_cause(exc)}") from None
        self.vocab = info[0]["vocab"]
        self.startup_s = time.monotonic() - started
        logger.info("%d Ray workers ready in %.1f s", opts.workers, self.startup_s)

    def _start_private(self, init: dict[str, Any]) -> None:
        """ray.init a cluster of this run's own, its processes marked for the reaper
        (synth.backends.ray_reaper), which ends them when this process ends, even by SIGKILL."""
        token = secrets.token_hex(8)
        self._reaper = ray_reaper.start(token)
        if self._reaper is None:
            logger.warning("Ray: no /proc here, so if this run is killed, Ray's agents may outlive it by a minute or two")
        os.environ[ray_reaper.MARK] = token  # only while the cluster's processes start
        try:
            self._ray.init(**init)
        except BaseException:
            self._stop_reaper()
            raise
        finally:
            os.environ.pop(ray_reaper.MARK, None)

    def _stop_reaper(self) -> None:
        reaper, self._reaper = getattr(self, "_reaper", None), None
        if reaper is not None:
            reaper.stdin.close()  # it ends what is left of the cluster, then exits
            try:
                reaper.wait(timeout=30)
            except subprocess.TimeoutExpired:
                reaper.kill()

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion | Failure]:
        todo = list(requests)
        if not todo:
            return
        # Chunks big enough to keep each engine's window full, small enough to spread the work.
        size = max(1, min(2 * self.cfg.vllm.in_flight, -(-len(todo) // (2 * len(self.workers)))))
        chunks: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(0, len(todo), size):
            chunks.put(todo[i:i + size])
        results: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()
        threads = [threading.Thread(target=self._drive, args=(w, chunks, results, stop), daemon=True, name=f"ray-worker-{i}")
                   for i, w in enumerate(self.workers)]
        for t in threads:
            t.start()
        running = len(threads)
        try:
            while running:
                item = results.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            stop.set()

    def _drive(self, worker: Any, chunks: queue.SimpleQueue, results: queue.SimpleQueue, stop: threading.Event) -> None:
        """One worker's loop: take a chunk, stream its results back, resend what a death lost."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        lost = (RayActorError, ActorDiedError, ActorUnavailableError)
        try:
            while not stop.is_set():
                try:
                    chunk = chunks.get_nowait()
                except queue.Empty:
                    return
                remaining = {r.id: r for r in chunk}
                attempts = 0
                while remaining and not stop.is_set():
                    try:
                        stream = worker.generate.options(num_returns="streaming").remote(list(remaining.values()))
                        for ref in stream:
                            result = self._ray.get(ref)
                            if remaining.pop(result.request.id, None) is not None:
                                results.put(result)
                            if stop.is_set():
                                self._ray.cancel(stream)
                                return
                    except lost as exc:
                        attempts += 1
                        if attempts > self.cfg.vllm.ray.max_retries:
                            for req in remaining.values():
                                results.put(Failure(req, "worker_died", f"the Ray worker died {attempts} times: {_cause(exc)}"))
                            remaining.clear()
                            break
                        logger.warning("a Ray worker died (%s); resending its %d unfinished requests once Ray has "
                                       "restarted it (%d/%d)", _cause(exc), len(remaining), attempts,
                                       self.cfg.vllm.ray.max_retries)
                        self._wait_until_ready(worker, lost, stop)
        except BaseException as exc:  # anything else: stop the run, say why
            results.put(exc)
        finally:
            results.put(None)

    def _wait_until_ready(self, worker: Any, lost: tuple, stop: threading.Event, timeout_s: float = 900.0) -> None:
        """Block until a restarted actor answers again (its engine is up), or `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                self._ray.get(worker.ready.remote(), timeout=30)
                return
            except lost:
                time.sleep(1.0)  # restarting: Ray reports it unavailable until its __init__ is done
            except self._ray.exceptions.GetTimeoutError:
                pass

    def close(self) -> None:
        ray = self._ray
        for w in getattr(self, "workers", []):
            try:
                ray.kill(w)
            except Exception:  # already gone
                pass
        self.workers = []
        if self._own_cluster and ray.is_initialized():
            ray.shutdown()
        self._stop_reaper()


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:300]
