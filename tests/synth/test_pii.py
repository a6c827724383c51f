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
