"""The sandbox for model-written code (synth.sandbox) and the code checks on it
(synth.codeexec, the code_exec filter): each escape a model's code could try is contained,
recorded as the failure it is, and nothing outside the temporary directory changes."""

import os
from pathlib import Path

import pytest

from synth import codeexec, sandbox
from synth.codeexec import extract_code, passes, run_tests, split_tests

# A wall limit far above the CPU limit: on a loaded machine a loop gets its 2 CPU seconds late,
# and the test is of the CPU limit, not of the machine's speed.
FAST = sandbox.Limits(cpu_s=2, wall_s=60, memory_mb=512, processes=32, output_kb=64)


def run(code: str, limits: sandbox.Limits = FAST) -> sandbox.Outcome:
    return sandbox.run([sandbox.PYTHON, "main.py"], {"main.py": code}, limits)


def test_the_sandbox_isolates_here():
    # bubblewrap is installed by `make setup`; without it every test below would only test the fallback
    assert sandbox.isolation() is None
    out = run("print('hello')")
    assert out.ok and out.stdout == "hello\n" and out.isolated


def test_an_infinite_loop_is_stopped_by_the_cpu_limit():
    out = run("while True:\n    pass")
    assert out.reason == "cpu time" and not out.ok


def test_a_sleep_is_stopped_by_the_wall_limit():
    out = run("import time\ntime.sleep(60)", sandbox.Limits(cpu_s=2, wall_s=1))
    assert out.reason == "wall time" and out.wall_s < 10


def test_a_fork_bomb_stops_at_the_process_limit_and_leaves_nothing():
    import secrets

    import psutil

    # children that live on: how many could start (a file name of its own, to find them after)
    name = f"sleepers_{secrets.token_hex(4)}.py"
    out = sandbox.run([sandbox.PYTHON, name], {name: "import os, time\nn = 0\nfor _ in range(200):\n    try:\n"
                      "        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n        n += 1\n"
                      "    except OSError:\n        break\nprint(n)"}, FAST)
    assert out.ok and 0 < int(out.stdout) < FAST.processes, out
    # the sleeping children died with the sandbox's pid namespace
    assert not [p for p in psutil.process_iter(["cmdline"]) if name in " ".join(p.info["cmdline"] or [])]
    # the bomb itself: forks until it cannot, killed at the wall or CPU limit
    bomb = run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", sandbox.Limits(cpu_s=2, wall_s=2, processes=16))
    assert bomb.reason in ("wall time", "cpu time")


def test_a_10_gb_allocation_fails_inside():
    out = run("x = bytearray(10 * 1024 ** 3)")
    assert out.returncode == 1 and "MemoryError" in out.stderr


def test_100_mb_of_output_is_cut_and_the_run_killed():
    out = run("import sys\nsys.stdout.write('x' * 100_000_000)")
    assert out.reason == "output limit" and len(out.stdout) == FAST.output_kb * 1024


def test_the_project_and_the_home_directory_are_out_of_reach(tmp_path):
    project = Path(__file__).resolve().parents[2]
    secret = Path.home() / ".stillhouse-sandbox-test-secret"
    secret.write_text("s3cret")
    try:
        out = run(f"open({str(project / 'PWNED')!r}, 'w').write('x')")
        assert out.returncode == 1 and "No such file or directory" in out.stderr
        assert not (project / "PWNED").exists()
        out = run(f"print(open({str(secret)!r}).read())")
        assert out.returncode == 1 and "s3cret" not in out.stdout
        out = run("open('/usr/bin/evil', 'w').write('x')")  # the system is read-only
        assert out.returncode == 1 and not Path("/usr/bin/evil").exists()
        out = run("open('scratch.txt', 'w').write('fine')\nprint(open('scratch.txt').read())")  # its own directory is writable
        assert out.ok and out.stdout == "fine\n"
    finally:
        secret.unlink()


@pytest.mark.parametrize("address, error", [("127.0.0.1", "ConnectionRefusedError"), ("1.1.1.1", "Network is unreachable")])
def test_no_network(address, error):
    import socket
    import threading

    server = socket.socket()  # a real listener on the host's loopback, unreachable from inside
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1] if address == "127.0.0.1" else 80
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    try:
        out = run(f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(({address!r}, {port}))")
        assert out.returncode == 1 and error in out.stderr, out.stderr
        assert not accepted
    finally:
        server.close()


def test_no_secret_reaches_the_code(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")
    out = run("import os\nprint(sorted(os.environ))\nprint(os.environ.get('OPENAI_API_KEY'))")
    assert out.ok and "sk-test-secret" not in out.stdout and "None" in out.stdout


def test_a_run_leaves_no_temporary_directory():
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("stillhouse-sandbox-*"))
    run("print(1)")
    assert set(Path(tempfile.gettempdir()).glob("stillhouse-sandbox-*")) == before


CODE = "def add(a, b):\n    return a + b\n"


def test_tests_pass_and_fail_with_the_failing_test_named():
    report = run_tests(CODE, ["assert add(1, 2) == 3", "assert add(2, 2) == 5", "assert add('a', 'b') == 'ab'"], FAST)
    assert (report.passed, report.total) == (2, 3)
    assert report.reason().startswith("2/3 tests passed; failed: 'assert add(2, 2) == 5'") and "AssertionError" in report.reason()
    assert "SyntaxError" in run_tests("def add(a, b) return", ["assert add(1, 2) == 3"], FAST).reason()
    killed = run_tests("def f():\n    while True:\n        pass", ["assert f()", "assert True"], FAST)
    assert killed.passed == 0 and "killed in this test: cpu time" in killed.reason()
    # code that prints a fake report is not believed: the report's token is unknown to it
    fake = run_tests("print('@@0@@{\"test\": 0, \"error\": null}')\ndef f():\n    return 1", ["assert f() == 2"], FAST)
    assert fake.passed == 0


def test_code_is_taken_from_the_answers_fenced_block():
    text = "First:\n```python\nx = 1\n```\nthen\n```\ny = 2\n```\n```js\nz = 3\n```"
    assert extract_code(text) == "y = 2\n" and extract_code(text, block="first") == "x = 1\n"
    assert extract_code(text, language="js") == "z = 3\n" and extract_code("no code") is None
    assert split_tests("assert a\n# comment\n\nassert b") == ["assert a", "assert b"] and split_tests(["assert c"]) == ["assert c"]


def _record(rid: str, answer: str, tests="assert sq(3) == 9\nassert sq(-2) == 4") -> dict:
    return {"id": rid, "seed": {"fields": {"tests": tests}},
            "messages": [{"role": "user", "content": "Write sq."}, {"role": "assistant", "content": answer}]}


def test_the_verifier_functions_and_the_code_exec_filter():
    from synth.filters import build_filter

    good = _record("a", "Here:\n```python\ndef sq(x):\n    return x * x\n```")
    half = _record("b", "```python\ndef sq(x):\n    return x * 3\n```")
    none = _record("c", "I cannot write code.")
    assert passes(good) == (True, None) and codeexec.tests_passed(half)[0] == 0.5
    assert passes(none) == (False, "0/2 tests passed; failed: '(no code)': the answer has no ```python block")
    f = build_filter({"name": "code_exec", "limits": {"cpu_s": 2, "wall_s": 4}}, 0)
    f.prepare([good, half, none], Path("."))
    assert f.check(good) is None and good["scores"]["tests"] == 1.0
    assert "1/2 tests passed; failed: 'assert sq(-2) == 4'" in f.check(half) and half["scores"]["tests"] == 0.5
    lenient = build_filter({"name": "code_exec", "min_pass": 0.5}, 0)
    assert lenient.check(half) is None
    with pytest.raises(ValueError, match=r"curate.filters\[0\].block: unknown 'middle'"):
        build_filter({"name": "code_exec", "block": "middle"}, 0)
    with pytest.raises(ValueError, match=r"curate.filters\[0\].limits.cpu_s: must be > 0"):
        build_filter({"name": "code_exec", "limits": {"cpu_s": 0}}, 0)


def test_the_fallback_without_bubblewrap_warns_and_still_limits(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "isolation", lambda: "bubblewrap is not installed (test)")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    out = run("import os\nprint(os.environ.get('ANTHROPIC_API_KEY'))\nwhile True:\n    pass")
    assert not out.isolated and out.reason == "cpu time" and "sk-ant" not in out.stdout
    assert "bubblewrap is not installed (test)" in caplog.text and "sees the file system and the network" in caplog.text
    assert os.environ["ANTHROPIC_API_KEY"] == "sk-ant-secret"


def test_as_an_ordinary_user_the_process_limit_counts_from_what_the_user_runs():
    # RLIMIT_NPROC counts every task of the user: a limit of 64 would stop bwrap itself for a
    # user with 200 processes, so the limit starts from what the user runs already
    import shutil
    import subprocess

    user = 65534  # nobody: run the sandbox as an ordinary user that already runs 40 sleepers
    # That user may not read this checkout or its .venv (a clone under /root, or in a 0700
    # temporary directory): the code runs from a world-readable copy of synth and sft (with
    # PyYAML, pure Python) on the system's Python, the one the sandbox runs code with.
    copy = _world_readable_copy()
    sleepers = [subprocess.Popen(["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "sleep", "60"])
                for _ in range(40)]
    try:
        code = (f"import sys; sys.path.insert(0, {str(copy)!r})\nfrom synth import sandbox\n"
                "out = sandbox.run([sandbox.PYTHON, 'main.py'], {'main.py': 'print(7)'}, sandbox.Limits(processes=8))\n"
                "print(out.stdout.strip(), out.reason, out.isolated)")
        res = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", sandbox.PYTHON, "-c", code],
                             capture_output=True, text=True, timeout=120, cwd="/tmp")
        assert res.stdout.split() == ["7", "None", "True"], res.stdout + res.stderr[-2000:]
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
        shutil.rmtree(copy)


def _world_readable_copy() -> Path:
    """synth and sft, and PyYAML that their config reads with, copied where every user can read."""
    import shutil
    import tempfile

    import yaml

    root = Path(tempfile.mkdtemp(prefix="sandbox-user-", dir="/tmp"))
    repo = Path(__file__).resolve().parents[2]
    for package in (repo / "synth", repo / "sft", Path(yaml.__file__).parent):
        shutil.copytree(package, root / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root
