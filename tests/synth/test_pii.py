import pytest

from synth.filters.pii import find_pii, iban_ok, luhn_ok

ALL = ["email", "iban", "credit_card", "us_ssn", "uk_nino", "ip_address", "phone"]


@pytest.mark.parametrize(
    "text, kind",
    [
        ("write to a.b-c@bank.co.uk today", "email"),
        ("IBAN DE89 3704 0044 0532 0130 00 please", "iban"),
        ("IBAN GB82WEST12345698765432", "iban"),
        ("card 4111-1111-1111-1111", "credit_card"),
        ("amex 378282246310005", "credit_card"),
        ("SSN 078-05-1120", "us_ssn"),
        ("NI number AB 12 34 56 C", "uk_nino"),
        ("server 10.0.0.255 is down", "ip_address"),
        ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "ip_address"),
        ("call (555) 123-4567 now", "phone"),
        ("call +1 415 555 2671", "phone"),
    ],
)
def test_detects(text, kind):
    redacted, counts = find_pii(text, ALL)
    assert counts == {kind: 1}, counts
    assert f"[{kind.upper()}]" in redacted


@pytest.mark.parametrize(
    "text",
    [
        "The meeting is on 2024-05-17 at 10:30.",
        "Version 3.11.7 fixed it.",
        "Pi is 3.14159 and e is 2.71828.",
        "We sold 1,234,567 units in 2023.",
        "card 4111 1111 1111 1112 is not valid",  # fails Luhn
        "IBAN GB00 WEST 1234 5698 7654 32",  # bad check digits
        "address 999.1.1.1 is not an IP",
        "SSN 000-12-3456 is not issued",
    ],
)
def test_leaves_non_pii_alone(text):
    redacted, counts = find_pii(text, ALL)
    assert counts == {} and redacted == text


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB83 WEST 1234 5698 7654 32")


def test_only_requested_types():
    _, counts = find_pii("mail x@y.org from 10.0.0.1", ["email"])
    assert counts == {"email": 1}


def test_redaction_reaches_the_seeds_copy_of_the_text():
    # document_qa records carry their source chunk in seed.fields: redacting the turns alone
    # would leave the address in train.jsonl
    from synth.filters import build_filter

    f = build_filter({"name": "pii"}, 0)
    chunk = "The MLRO can be reached at mlro@northwind-bank.example or on +44 20 7946 0958."
    rec = {"id": "a", "seed": {"source": "s.jsonl", "line": 1, "fields": {
               "context": chunk, "documents": [{"text": chunk, "citation": "policy.pdf, page 5"}], "line": 3}},
           "messages": [{"role": "user", "content": f"[Document: policy.pdf, page 5]\n{chunk}\nQuestion: who?"},
                        {"role": "assistant", "content": "Write to mlro@northwind-bank.example."}]}
    assert f.check(rec) is None
    assert rec["pii"] == {"email": 2, "phone": 1}  # the turns' count
    text = str(rec)
    assert "northwind-bank.example" not in text and "7946" not in text
    assert rec["seed"]["fields"]["documents"][0]["citation"] == "policy.pdf, page 5" and rec["seed"]["fields"]["line"] == 3


def test_names_and_addresses_are_opt_in_rules_that_skip_decoys():
    text = ("Dear Priya, Mr. Ahmed Khan moved to 221B Baker Street, London NW1 6XE. Our office is at "
            "Hauptstraße 12, 10115 Berlin. The Paris Agreement, Morgan Stanley and Windows Server 2019 are not people.")
    assert find_pii(text, ["email"]) == (text, {})  # not in the default types
    redacted, counts = find_pii(text, ["person", "address"])
    assert counts == {"person": 2, "address": 2}
    assert redacted == ("Dear [PERSON], Mr. [PERSON] moved to [ADDRESS]. Our office is at [ADDRESS]. The Paris "
                        "Agreement, Morgan Stanley and Windows Server 2019 are not people.")
    with pytest.raises(ValueError, match="types: unknown 'names'; valid types: .*person, address"):
        from synth.filters import build_filter

        build_filter({"name": "pii", "types": ["names"]}, 0)


@pytest.mark.parametrize("text", ["Ruf an: 030 12345678 bitte", "Appelez le 01 42 68 53 00.", "ring 07700 900123 today"])
def test_national_phone_numbers_by_their_countrys_plan(text):
    # libphonenumber (through Presidio's recognizer) knows each country's numbering plan; the
    # earlier pattern took only international and three-group forms
    assert find_pii(text, ALL)[1] == {"phone": 1}


@pytest.mark.parametrize("text, expected", [
    # what the earlier rules missed (issue 33's examples)
    ("The MLRO is Margaret Okonkwo.", "The MLRO is [PERSON]."),
    ("Payment to Nguyen Thi Lan was held.", "Payment to [PERSON] was held."),
    ("Siobhán Ní Bhriain and Pádraig Ó Súilleabháin signed.", "[PERSON] and [PERSON] signed."),
    ("Ask Kenji Watanabe about the limit.", "Ask [PERSON] about the limit."),
    ("Hughes-Williams approved the file on Monday.", "[PERSON] approved the file on Monday."),
    ("Send it to Storgata 17, 0184 Oslo.", "Send it to [ADDRESS]."),
    ("Office: 1750 Pennsylvania Avenue NW, Washington, DC 20006.", "Office: [ADDRESS]."),
    ("Okonkwo's approval came after Margaret Okonkwo read it.", "[PERSON]'s approval came after [PERSON] read it."),
    ("Name: KOWALSKI, Anna", "Name: [PERSON]"),
    ("spoke to priya sharma yesterday", "spoke to [PERSON] yesterday"),
    ("UL. MARSZAŁKOWSKA 104, 00-017 WARSZAWA", "[ADDRESS]"),
    # decoys: places, companies, laws, acronyms and ordinary words named like people
    ("Meet me at Victoria Station, not Kings Cross.", None),
    ("Ciudad de México and Hong Kong desks, Morgan Stanley and Goldman Sachs accounts.", None),
    ("The Dodd-Frank Act and Sarbanes-Oxley apply; funds came via SWIFT MT103.", None),
    ("Head of Compliance sign-off is due Monday 14 March, Section 12 Street Works Act.", None),
])
def test_names_and_addresses_of_many_countries_and_their_decoys(text, expected):
    assert find_pii(text, ["person", "address"])[0] == (text if expected is None else expected)


def test_the_name_lexicon_is_built_once_into_a_cache_file(tmp_path, monkeypatch):
    from synth.filters import pii_lexicon

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    pii_lexicon.lexicon.cache_clear()
    try:
        table = pii_lexicon.lexicon()  # built from names-dataset (about 10 s)
        path = pii_lexicon.cache_file()
        assert path.parent == tmp_path / "stillhouse" and path.exists()
        assert table["Okonkwo"].last < 1000 and table["Margaret"].first < 1000 and "Compliance" not in table
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
        path.write_text("Zyxwv\t1\t2\n", encoding="utf-8")  # a later use reads the file, never the dataset
        pii_lexicon.lexicon.cache_clear()
        assert pii_lexicon.lexicon() == {"Zyxwv": pii_lexicon.Name(1, 2)}
    finally:
        pii_lexicon.lexicon.cache_clear()


def test_names_and_addresses_on_the_labelled_set_written_apart_from_the_rules():
    # bench/data/pii_world.jsonl, written by someone who had not read the rules: a change that
    # costs recall or precision on it fails here (bench/pii_names.py prints the detail)
    import json
    from pathlib import Path

    from synth.filters.pii_engine import find_spans

    rows = [json.loads(line) for line in (Path(__file__).parents[2] / "bench/data/pii_world.jsonl").open(encoding="utf-8")]
    by_type = {}
    for row in rows:
        spans = find_spans(row["text"], ["person", "address"])
        labels = [(s["type"], row["text"].index(s["text"]), row["text"].index(s["text"]) + len(s["text"])) for s in row["spans"]]
        for kind in ("person", "address"):
            p = [(s, e) for k, s, e in spans if k == kind]
            g = [(s, e) for k, s, e in labels if k == kind]
            t = by_type.setdefault(kind, [0, 0, 0, 0])
            t[0] += len(p)
            t[1] += sum(any(s < ge and gs < e for gs, ge in g) for s, e in p)
            t[2] += len(g)
            t[3] += sum(any(s < ge and gs < e for s, e in p) for gs, ge in g)
    for kind, (pred, hit, gold, found) in by_type.items():
        assert gold > 100 and hit / pred >= 0.95 and found / gold >= 0.9, (kind, hit / pred, found / gold)


def test_without_the_curate_extra_the_error_says_what_to_install(monkeypatch):
    import sys

    from synth.filters import pii_engine

    pii_engine.analyzer.cache_clear()
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # as if not installed
    try:
        with pytest.raises(ImportError, match=r"the pii filter needs the curate extra \(presidio_analyzer is missing\): "
                                              r"pip install 'stillhouse\[curate\]'"):
            find_pii("mail a@b.co", ["email"])
    finally:
        pii_engine.analyzer.cache_clear()
