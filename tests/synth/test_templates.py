import pytest

from synth.config import TemplateConfig
from synth.templates import PromptTemplate

from conftest import write_jsonl


def _tpl(tmp_path, text, **kw):
    p = tmp_path / "t.j2"
    p.write_text(text)
    return PromptTemplate.load(TemplateConfig(path=str(p), **kw))


def test_system_user_and_fewshot(tmp_path):
    shots = write_jsonl(tmp_path / "shots.jsonl", [{"user": "2+2?", "assistant": "4"}])
    t = _tpl(
        tmp_path,
        "{% block system %}You help {{ team }}.{% endblock %}\n{% block user %}Q: {{ q }}{% endblock %}",
        fewshot=str(shots),
        variables={"team": "compliance"},
    )
    assert t.render({"q": "What is AML?"}) == [
        {"role": "system", "content": "You help compliance."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Q: What is AML?"},
    ]
    assert t.name == "t" and len(t.sha256) == 64


def test_file_without_blocks_is_the_user_message(tmp_path):
    t = _tpl(tmp_path, "Answer: {{ prompt }}\n")
    assert t.render({"prompt": "hi"}) == [{"role": "user", "content": "Answer: hi"}]


def test_hash_covers_template_and_fewshot(tmp_path):
    a = _tpl(tmp_path, "{{ q }}").sha256
    b = _tpl(tmp_path, "{{ q }} ").sha256
    shots = write_jsonl(tmp_path / "shots.jsonl", [{"user": "u", "assistant": "a"}])
    c = _tpl(tmp_path, "{{ q }}", fewshot=str(shots)).sha256
    assert len({a, b, c}) == 3


def test_unknown_variable_names_variable_file_and_line(tmp_path):
    t = _tpl(tmp_path, "{% block user %}{{ question }}{% endblock %}")
    with pytest.raises(ValueError) as err:
        t.render({"prompt": "x"}, where="seeds.jsonl line 4")
    msg = str(err.value)
    assert "'question'" in msg and "seeds.jsonl line 4" in msg and "available: prompt" in msg
    assert "seeds.fields" in msg  # says how to fix it


def test_sandbox_blocks_attribute_escapes(tmp_path):
    t = _tpl(tmp_path, "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ValueError, match="unsafe operation"):
        t.render({})
    t = _tpl(tmp_path, "{{ cycler.__init__.__globals__.os.popen('id').read() }}")
    with pytest.raises(ValueError, match="template.path"):
        t.render({})


def test_syntax_error_names_line(tmp_path):
    with pytest.raises(ValueError, match=r"template.path: .*t.j2 line 2"):
        _tpl(tmp_path, "ok\n{% if x %}no end\n")


def test_bad_blocks_and_empty_message(tmp_path):
    with pytest.raises(ValueError, match="only 'system' and 'user'"):
        _tpl(tmp_path, "{% block assistant %}x{% endblock %}{% block user %}y{% endblock %}")
    with pytest.raises(ValueError, match="no {% block user %}"):
        _tpl(tmp_path, "{% block system %}x{% endblock %}")
    t = _tpl(tmp_path, "{{ q }}")
    with pytest.raises(ValueError, match="empty user message for row 9"):
        t.render({"q": "   "}, where="row 9")


def test_bad_fewshot_file(tmp_path):
    shots = write_jsonl(tmp_path / "shots.jsonl", [{"user": "u"}])
    with pytest.raises(ValueError, match=r"template.fewshot: .*line 1 needs a non-empty string field 'assistant'"):
        _tpl(tmp_path, "{{ q }}", fewshot=str(shots))
    with pytest.raises(ValueError, match="template.path: .*does not exist"):
        PromptTemplate.load(TemplateConfig(path=str(tmp_path / "missing.j2")))
