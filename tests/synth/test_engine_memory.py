"""An engine starts in a process that already holds a lot of memory (as after training).

vLLM's own CPU sizing asks for gpu_memory_utilization x NUMA node 0's memory minus this
process's resident memory: once the process holds more than that share, the budget is
negative and the engine refuses to start. That is what failed `make demo` (evaluation after
training) and `make test` on a fresh machine. stillhouse sizes the KV cache explicitly."""

import subprocess
import sys

import pytest

from conftest import ENGINE, HANG_S

pytestmark = pytest.mark.slow

PROBE = """
import sys
from pathlib import Path

import psutil

from synth.backends.vllm_engine import VllmBackend
from synth.config import TeacherConfig, VllmConfig
from synth.requests import Request

meminfo = Path("/sys/devices/system/node/node0/meminfo")
if meminfo.exists():
    node_total = next(int(line.split()[3]) * 1024 for line in meminfo.read_text().splitlines() if "MemTotal" in line)
else:
    node_total = psutil.virtual_memory().total
# More resident memory than vLLM's CPU budget (0.1 of node 0), as a process holding torch and
# a trained model has; touched page by page so it is resident, not just reserved.
ballast = bytearray(int(0.1 * node_total) + (256 << 20))
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
rss = psutil.Process().memory_info().rss
assert rss > 0.1 * node_total, (rss, node_total)
engine = dict(eval(sys.argv[2]), gpu_memory_utilization=0.1)  # the CPU share recipes used to set
backend = VllmBackend(TeacherConfig(model=sys.argv[1], vllm=VllmConfig(**engine)))
sampling = {"temperature": 0.0, "top_p": 1.0, "top_k": None, "max_tokens": 4, "seed": 0, "stop": []}
requests = [Request(str(i), [{"role": "user", "content": f"Say {i}"}], sampling, 0, {}, {}) for i in range(4)]
done = [r for r in backend.generate(requests) if hasattr(r, "text")]
backend.close()
print(f"generated {len(done)} with rss {rss / 2**30:.2f} GiB, node 0 {node_total / 2**30:.2f} GiB")
"""


def test_engine_starts_and_generates_after_the_process_grew(tiny_model):
    res = subprocess.run([sys.executable, "-c", PROBE, str(tiny_model), repr(ENGINE)], capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "generated 4 with rss" in res.stdout, res.stdout


def test_a_kv_cache_that_does_not_fit_is_one_clear_error(tmp_path, tiny_model):
    """A KV cache larger than the node has is refused by vLLM; the error names the key."""
    import yaml

    from conftest import make_recipe

    path = make_recipe(tmp_path, tiny_model, vllm={"kv_cache_gib": 4000})
    res = subprocess.run([sys.executable, "-m", "synth.cli", "generate", str(path), "--no-progress"],
                         capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 2, res.stderr[-3000:]
    err = [line for line in res.stderr.splitlines() if line.startswith("synth: error:")]
    assert len(err) == 1 and "teacher.vllm.kv_cache_gib: a KV cache of 4000.00 GiB does not work here" in err[0], res.stderr[-2000:]
    assert yaml.safe_load(path.read_text())["teacher"]["vllm"]["kv_cache_gib"] == 4000
