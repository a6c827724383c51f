"""The tools of prompts/tools/recipe.yaml: a compliance desk's lookups, over small tables kept
here so the example runs offline. Each is called with the teacher's arguments as keyword
arguments, in a process of its own without network (synth.tools); what it returns (a
string, or any JSON-serialisable value) goes back to the teacher as the tool's result, and
an exception goes back as an error the `tools` filter rejects."""

# Reference rates, units of `to` per unit of `from` (illustrative, not market data).
_RATES_TO_USD = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27, "CHF": 1.13, "JPY": 0.0067}

# A made-up screening list: names and the programme that lists them.
_LISTED = {
    "ivan petrovich drago": "EU restrictive measures (fictional)",
    "blackwater shipping ltd": "OFAC SDN (fictional)",
    "golden crescent trading": "UN consolidated list (fictional)",
}

_POLICY = {
    "cash_threshold": "Cash deposits or withdrawals of EUR 10,000 or more, in one operation or in linked "
                      "operations, require identification of the customer and a record kept for five years.",
    "structuring": "Splitting a transaction to stay under a reporting threshold is structuring. Staff who "
                   "suspect it file an internal suspicious activity report the same day; the customer is not told.",
    "pep": "Politically exposed persons, their family and close associates need senior management approval "
           "to onboard, a source-of-wealth check and enhanced monitoring for at least twelve months after office.",
    "sanctions_hit": "A possible sanctions match freezes the transaction. Compliance reviews it within one "
                     "business day; a confirmed match is reported to the national authority and the funds stay frozen.",
}


def fx_rate(base: str, quote: str) -> dict:
    """How many units of `quote` one unit of `base` buys."""
    return {"base": base, "quote": quote, "rate": round(_RATES_TO_USD[base] / _RATES_TO_USD[quote], 6)}


def screen_name(name: str) -> dict:
    """Screen a person or company against the screening list (exact match after normalising)."""
    key = " ".join(name.lower().split())
    hit = _LISTED.get(key)
    return {"name": name, "match": hit is not None, **({"list": hit} if hit else {})}


def policy(topic: str) -> str:
    """The bank's policy text on a topic."""
    return _POLICY[topic]
