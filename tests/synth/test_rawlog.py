import json

import pytest

from synth.rawlog import DirLock, JsonlAppender, iter_records, repair_tail

from conftest import HANG_S


def test_append_and_read_back(tmp_path):
    p = tmp_path / "raw.jsonl"
    with JsonlAppender(p, sync_every=2) as log:
        for i in range(5):
            log.append({"id": str(i), "text": "é\n"})
    assert [r["id"] for r in iter_records(p)] == ["0", "1", "2", "3", "4"]
    assert p.read_text().count("\n") == 5  # newlines inside values are escaped


def test_torn_last_line_is_cut_with_a_warning(tmp_path, caplog):
    p = tmp_path / "raw.jsonl"
    p.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "te')
    assert repair_tail(p) is True
    assert "torn" in caplog.text
    assert [r["id"] for r in iter_records(p)] == ["a", "b"]
    assert repair_tail(p) is False
    with JsonlAppender(p) as log:
        log.append({"id": "c"})
    assert [r["id"] for r in iter_records(p)] == ["a", "b", "c"]


def test_torn_only_line(tmp_path):
    p = tmp_path / "raw.jsonl"
    p.write_bytes(b'{"id": "a", "x')
    assert repair_tail(p) is True
    assert p.read_bytes() == b""


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path):
    p = tmp_path / "raw.jsonl"
    p.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
    assert repair_tail(p) is False
    with pytest.raises(ValueError, match=r"raw.jsonl line 2 is not valid JSON"):
        list(iter_records(p))
    p.write_text(json.dumps({"no_id": 1}) + "\n")
    with pytest.raises(ValueError, match="line 1 is not a record with a string 'id'"):
        list(iter_records(p))


def test_dir_lock_refuses_another_process_and_nests_within_one(tmp_path):
    import re
    import subprocess
    import sys

    probe = ("import sys\nfrom pathlib import Path\nfrom synth.rawlog import DirLock\n"
             "try:\n    with DirLock(Path(sys.argv[1])):\n        print('got it')\n"
             "except ValueError as exc:\n    print(exc)\n")

    def other_process() -> str:
        return subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=HANG_S).stdout

    with DirLock(tmp_path):
        with DirLock(tmp_path):  # the same process (a stage inside synth run) holds it already
            assert re.search(r"output.dir: .* is in use by pid \d+", other_process())
        assert re.search(r"is in use by pid \d+", other_process()), "the outer hold still locks"
    assert other_process().strip() == "got it", "released"
