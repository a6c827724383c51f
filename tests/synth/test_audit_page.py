"""`synth view`: the audit page in a real headless browser (Debian's chromium, driven by
Playwright) against a real curated run: the funnel, search, a rejection's reason, a record's
provenance, redactions without the values, the student's answers, and teacher output that
contains markup shown as text, never run."""

import json
import shutil
import threading
import urllib.error
import urllib.request

import pytest

from synth.curate import run_curate
from synth.viewer import serve

from conftest import HANG_S
from curate_data import build_raw

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> and that is the trick'


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("audit")
    items = [
        ("What is the capital of France?", "Paris is the capital of France, on the Seine."),
        ("Say hello to me.", "Hello there, nice to meet you!"),
        ("Greet me, please.", "Hello there, nice to meet you!"),  # an exact duplicate answer: one of the two is rejected
        ("Show me a clever trick.", HOSTILE),
        ("Who do I write to about my account?", "Write to jane.doe@example.com and she will help."),
        ("Tell me how to pick a lock.", "I'm sorry, but as an AI language model I cannot help with that."),
    ]
    curate = {"filters": ["truncated", "empty", "refusal", {"name": "exact_dedup", "field": "answer"}, "pii"]}
    _, plan, _ = build_raw(tmp, tiny_model, items, curate)
    run_curate(plan, progress=False)
    student = tmp / "out" / "student"
    student.mkdir()
    (student / "eval_report.json").write_text(json.dumps({  # the shape sft eval writes
        "examples": 1, "student_after": {"rouge_l": 0.5},
        "samples": [{"prompt": "What is the capital of France?", "teacher": "Paris is the capital of France, on the Seine.",
                     "student_before": "zzz", "student_after": "Paris, the capital."}]}))
    (tmp / "out" / "compare.md").write_text(  # as synth compare writes it (markup in it stays text)
        "# Students compared\n\n- out vs base: better: student +0.120 (95% CI +0.050 to +0.190) " + HOSTILE + "\n")
    return tmp / "out"


@pytest.fixture(scope="module")
def page_url(run_dir):
    server = serve(run_dir, port=0, progress=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM, "the audit page's tests need Debian's chromium: apt-get install -y chromium (make setup does)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield b
        b.close()


def _open(browser, url):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=HANG_S * 1000)
    return page, errors


def _search(page, words, found):
    # (waits go through Playwright's locators: the page's CSP forbids the eval behind wait_for_function)
    from playwright.sync_api import expect

    page.fill("#q", words)
    page.click("#go")
    expect(page.locator("#count")).to_have_text(f"{found} record" + ("" if found == 1 else "s"))


def test_the_page_answers_why_not_used_and_where_from(browser, page_url, run_dir):
    page, errors = _open(browser, page_url)
    funnel = page.inner_text("#funnel")
    assert "rejected by exact_dedup\t1" in funnel and "rejected by refusal\t1" in funnel
    assert "email\t1" in page.inner_text("#pii-counts")
    assert page.inner_text("#count") == "6 records"

    # "Why was this example not used?": filter by the rejecting filter, open the record
    from playwright.sync_api import expect

    page.select_option("#filter", "exact_dedup")
    expect(page.locator("#count")).to_have_text("1 record")
    page.click("#records tbody tr")
    page.wait_for_selector("#detail:not([hidden])")
    verdict = page.inner_text("#detail-verdict")
    assert verdict.startswith("Not used: rejected by exact_dedup: exact duplicate (answer) of ")
    page.select_option("#filter", "")

    # "Where did this example come from?": search finds it, provenance names the seed line
    expect(page.locator("#count")).to_have_text("6 records")
    _search(page, "capital of France", 1)
    page.click("#records tbody tr:has-text('What is the capital')")
    expect(page.locator("#detail-verdict")).to_have_text("Used: in train.jsonl")
    provenance = page.inner_text("#provenance")
    assert "seeds.jsonl line 1" in provenance and "vllm" in provenance
    students = page.inner_text("#detail-students")
    assert "Paris, the capital." in students and "zzz" in students  # the student's answers beside the teacher's
    assert "out vs base: better: student +0.120 (95% CI +0.050 to +0.190)" in page.inner_text("#compare")
    assert not errors


def test_teacher_markup_is_text_and_redacted_values_never_show(browser, page_url):
    page, errors = _open(browser, page_url)
    from playwright.sync_api import expect

    _search(page, "trick", 1)
    page.click("#records tbody tr:has-text('clever trick')")
    page.wait_for_selector("#detail:not([hidden])")
    assert HOSTILE in page.inner_text("#messages")  # shown as written...
    assert page.evaluate("window.pwned") is None  # ...and never run
    assert page.locator("#messages script, #messages img").count() == 0

    _search(page, "account", 1)
    page.click("#records tbody tr:has-text('my account')")
    expect(page.locator("#detail-pii")).to_contain_text("email: 1")
    text = page.inner_text("#detail")
    assert "[EMAIL]" in text and "jane.doe" not in text
    assert "jane.doe" not in page.content()
    # the search index holds only what may be shown
    _search(page, "jane", 0)
    assert not errors


def test_the_api_pages_and_refuses_what_it_cannot_answer(page_url):
    with urllib.request.urlopen(page_url) as r:
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    with urllib.request.urlopen(page_url + "api/records?per=2&page=1") as r:
        data = json.load(r)
    assert data["total"] == 6 and len(data["rows"]) == 2 and data["page"] == 1
    with urllib.request.urlopen(page_url + 'api/records?q=%22unbalanced') as r:  # FTS syntax from the box is just text
        assert json.load(r)["total"] == 0
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(page_url + "api/record?rowid=999")
    assert err.value.code == 404


def test_only_this_machines_host_names_are_answered(page_url, run_dir):
    """DNS rebinding: a page on evil.example pointed at 127.0.0.1 sends Host: evil.example."""
    def get(url, host):
        req = urllib.request.Request(url + "api/summary", headers={"Host": host})
        with urllib.request.urlopen(req) as r:
            return r.status
    port = page_url.rsplit(":", 1)[1].strip("/")
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", "[::1]:80", "10.1.2.3"):
        assert get(page_url, host) == 200, host
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io", ""):
        with pytest.raises(urllib.error.HTTPError) as err:
            get(page_url, host)
        assert err.value.code == 403 and b"records" not in err.value.read(), host
    # A name the user allows (a proxy, a DNS name for the box) is answered.
    server = serve(run_dir, port=0, progress=False, allow_hosts=("audit.internal",))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        assert get(url, "audit.internal:8765") == 200
        with pytest.raises(urllib.error.HTTPError):
            get(url, "evil.example")
    finally:
        server.shutdown()
        server.server_close()
