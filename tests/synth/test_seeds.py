import json

import pytest

from synth.config import SeedsConfig
from synth.seeds import load_seeds

from conftest import SEED_TASKS, write_jsonl


def test_jsonl_real_seed_tasks():
    rows = load_seeds(SeedsConfig(path=str(SEED_TASKS)))
    assert len(rows) == 175
    first = rows[0]
    assert first.line == 1 and first.fields["id"] == "seed_task_0"
    assert isinstance(first.fields["instances"], list)


def test_jsonl_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"q": "a"}\n\n{"q": "b"}\n')
    rows = load_seeds(SeedsConfig(path=str(p)))
    assert [(r.line, r.fields["q"]) for r in rows] == [(1, "a"), (3, "b")]


def test_field_mapping_renames_columns(tmp_path):
    p = write_jsonl(tmp_path / "s.jsonl", [{"text": "hi", "other": 1}])
    rows = load_seeds(SeedsConfig(path=str(p), fields={"question": "text"}))
    assert rows[0].fields == {"question": "hi"}


def test_a_csv_saved_by_excel_with_a_byte_order_mark_keeps_its_first_column_name(tmp_path):
    p = tmp_path / "s.csv"
    p.write_bytes("question,topic\r\nWhat is KYC?,kyc\r\nDéfinir AML,aml\r\n".encode("utf-8-sig"))
    rows = load_seeds(SeedsConfig(path=str(p)))
    assert [r.fields for r in rows] == [{"question": "What is KYC?", "topic": "kyc"}, {"question": "Définir AML", "topic": "aml"}]
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_bytes('{"question": "x"}\n'.encode("utf-8-sig"))
    assert load_seeds(SeedsConfig(path=str(jsonl)))[0].fields == {"question": "x"}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".txt"])
def test_a_seed_file_that_is_not_utf8_names_the_file_the_line_and_the_fix(tmp_path, suffix):
    p = tmp_path / f"s{suffix}"
    good = {".csv": "question\nfirst\n", ".jsonl": '{"question": "first"}\n', ".txt": "first\n"}[suffix]
    bad = {".csv": "Qu'est-ce que la conformité ?\n", ".jsonl": '{"question": "conformité"}\n',
           ".txt": "conformité\n"}[suffix]
    p.write_bytes(good.encode() + bad.encode("cp1252"))
    with pytest.raises(ValueError) as err:
        load_seeds(SeedsConfig(path=str(p)))
    message = str(err.value)
    line = 3 if suffix == ".csv" else 2
    assert f"seeds.path: {p} line {line} is not UTF-8 (byte 0xe9" in message and "iconv -f cp1252 -t utf-8" in message


def test_csv(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text('question,topic\n"What is KYC, briefly?",kyc\nDefine AML,aml\n')
    rows = load_seeds(SeedsConfig(path=str(p)))
    assert [r.fields for r in rows] == [
        {"question": "What is KYC, briefly?", "topic": "kyc"},
        {"question": "Define AML", "topic": "aml"},
    ]
    assert [r.line for r in rows] == [2, 3]


def test_txt_one_prompt_per_line(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text("first prompt\n\n  second prompt\n")
    rows = load_seeds(SeedsConfig(path=str(p)))
    assert [r.fields["prompt"] for r in rows] == ["first prompt", "  second prompt"]
    assert [r.line for r in rows] == [1, 3]


def test_parquet_and_saved_hf_dataset(tmp_path):
    import datasets  # the data extra, installed by make setup
    data = {"question": ["a?", "b?", "c?"], "level": [1, 2, 3]}
    ds = datasets.Dataset.from_dict(data)
    ds.to_parquet(str(tmp_path / "s.parquet"))
    rows = load_seeds(SeedsConfig(path=str(tmp_path / "s.parquet")))
    assert [r.fields for r in rows] == [{"question": q, "level": lv} for q, lv in zip(data["question"], data["level"], strict=True)]

    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    rows = load_seeds(SeedsConfig(path=str(tmp_path / "dd"), split="test"))
    assert [r.fields["question"] for r in rows] == ["a?"]
    with pytest.raises(ValueError, match="seeds.split: .* has no split 'validation'; it has train, test"):
        load_seeds(SeedsConfig(path=str(tmp_path / "dd"), split="validation"))

    ds.save_to_disk(str(tmp_path / "single"))
    assert len(load_seeds(SeedsConfig(path=str(tmp_path / "single"), limit=2))) == 2


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"q": "a"}\n{"q": "b"\n{"q": "c"}\n')
    with pytest.raises(ValueError, match=r"seeds.path: .*s.jsonl line 2 is not valid JSON .*fix or remove that line"):
        load_seeds(SeedsConfig(path=str(p)))


def test_non_object_line(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps(["a", "list"]) + "\n")
    with pytest.raises(ValueError, match="line 1 is a JSON list, not an object"):
        load_seeds(SeedsConfig(path=str(p)))


def test_missing_column_names_field_file_and_line(tmp_path):
    p = write_jsonl(tmp_path / "s.jsonl", [{"text": "a"}, {"txt": "b"}])
    with pytest.raises(ValueError, match=r"seeds.fields.question: .*s.jsonl line 2 has no column 'text' \(it has: txt\)"):
        load_seeds(SeedsConfig(path=str(p), fields={"question": "text"}))


def test_csv_row_with_extra_cells(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("question\na\nb,c\n")
    with pytest.raises(ValueError, match="line 3 has more cells than the header"):
        load_seeds(SeedsConfig(path=str(p)))


@pytest.mark.parametrize("content", ["", "\n\n", "question\n"])
def test_empty_seed_files(tmp_path, content):
    suffix = ".csv" if content.startswith("question") else ".jsonl"
    p = tmp_path / f"s{suffix}"
    p.write_text(content)
    with pytest.raises(ValueError, match="has no seed rows"):
        load_seeds(SeedsConfig(path=str(p)))


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match=r"seeds.path: .*nope.jsonl does not exist"):
        load_seeds(SeedsConfig(path=str(tmp_path / "nope.jsonl")))
    (tmp_path / "s.dat").write_text("x\n")
    with pytest.raises(ValueError, match="set seeds.format"):
        load_seeds(SeedsConfig(path=str(tmp_path / "s.dat")))
    assert load_seeds(SeedsConfig(path=str(tmp_path / "s.dat"), format="txt"))[0].fields == {"prompt": "x"}
