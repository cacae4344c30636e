"""prr_ext.data: prompts from JSONL files and the response checkers (exact, gsm8k, regex, module:function)."""
from __future__ import annotations

import json
import sys

import pytest

from prr_ext import data as D


def _write(tmp_path, lines, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_load_jsonl_records(tmp_path):
    chat = [{"role": "user", "content": "2+2?"}]
    path = _write(tmp_path, [json.dumps({"prompt": "Q1", "answer": 42, "id": 7}), "",
                             json.dumps({"prompt": chat}), json.dumps({"question": "Q3", "solution": "x #### 5"})])
    with pytest.raises(ValueError, match=r"p.jsonl:4: no 'prompt' key \(keys: \['question', 'solution'\]\)"):
        D.load_jsonl(path)
    recs = D.load_jsonl(_write(tmp_path, [json.dumps({"prompt": "Q1", "answer": 42, "id": 7}), "",
                                          json.dumps({"prompt": chat})], "ok.jsonl"))
    assert recs[0] == D.Record("Q1", "42", {"id": 7}, 1)
    assert recs[1].prompt == chat and recs[1].answer is None and recs[1].line == 3
    keyed = D.load_jsonl(_write(tmp_path, [json.dumps({"question": "Q3", "solution": "x #### 5"})], "k.jsonl"),
                         prompt_key="question", answer_key="solution", require_answer=True)
    assert keyed[0].prompt == "Q3" and keyed[0].answer == "x #### 5"


@pytest.mark.parametrize("line,match", [
    ("{not json", r"bad.jsonl:1: not valid JSON"),
    ("[1, 2]", r"bad.jsonl:1: each line must be a JSON object"),
    (json.dumps({"prompt": 3}), r"bad.jsonl:1: the prompt must be a string or a list"),
    (json.dumps({"prompt": [{"role": "user"}]}), r"the prompt must be a string or a list"),
    (json.dumps({"prompt": "q", "answer": [1]}), r"the answer must be a string or a number"),
    (json.dumps({"prompt": "q", "answer": True}), r"the answer must be a string or a number"),
])
def test_load_jsonl_bad_lines(tmp_path, line, match):
    with pytest.raises(ValueError, match=match):
        D.load_jsonl(_write(tmp_path, [line], "bad.jsonl"))


def test_load_jsonl_missing_file_and_required_answer(tmp_path):
    with pytest.raises(FileNotFoundError, match="no prompts file"):
        D.load_jsonl(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match=r"holds no records"):
        D.load_jsonl(_write(tmp_path, ["", "  "], "empty.jsonl"))
    with pytest.raises(ValueError, match=r"no 'answer' key, which grading needs"):
        D.load_jsonl(_write(tmp_path, [json.dumps({"prompt": "q"})], "na.jsonl"), require_answer=True)


def _rec(answer):
    return D.Record("q", answer, {}, 1)


def test_exact_and_gsm8k():
    exact, gsm = D.make_checker("exact"), D.make_checker("gsm8k")
    assert exact(" Paris\n", _rec("Paris")) and not exact("paris", _rec("Paris"))
    assert gsm("5*3=15. 12+15=27. #### 27", _rec("27"))
    assert gsm("so #### 1,234.50 dollars", _rec("Natalia sold ... #### 1234.5"))
    assert gsm("#### $7", _rec("+7")) and gsm("#### 3.0", _rec("3"))
    assert not gsm("#### 28", _rec("27")) and not gsm("the answer is 27", _rec("27"))  # no #### in the response
    assert gsm("#### 1 then #### 27", _rec("27"))                                       # the last #### counts
    with pytest.raises(ValueError, match="holds no number"):
        gsm("#### 3", _rec("three"))
    with pytest.raises(ValueError, match="no answer to grade against"):
        exact("x", _rec(None))


def test_regex_checker():
    boxed = D.make_checker(r"regex:\\boxed\{([^}]*)\}")
    assert boxed(r"so \boxed{12} done", _rec("12")) and not boxed(r"\boxed{13}", _rec("12"))
    assert not boxed("no box", _rec("12"))
    whole = D.make_checker(r"regex:\d+")
    assert whole("x 12 y 13", _rec("12")) and not whole("x 13", _rec("12"))
    with pytest.raises(ValueError, match="not a valid regular expression"):
        D.make_checker("regex:(")


def test_module_function_checker(tmp_path, monkeypatch):
    (tmp_path / "my_checks.py").write_text("def is_even(response, record):\n    return int(response) % 2 == 0\n"
                                          "NOT_CALLABLE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_checks", None)
    even = D.make_checker("my_checks:is_even")
    assert even("4", _rec(None)) and not even("5", _rec(None))
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        D.make_checker("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="has no 'missing'"):
        D.make_checker("my_checks:missing")
    with pytest.raises(ValueError, match="is not callable"):
        D.make_checker("my_checks:NOT_CALLABLE")


@pytest.mark.parametrize("spec", ["", "fuzzy", "a b:c", 3])
def test_unknown_checkers(spec):
    with pytest.raises(ValueError):
        D.make_checker(spec)


def test_normalize_number():
    assert D.normalize_number("1,234.500") == "1234.5"
    assert D.normalize_number("-0.0") == "0" and D.normalize_number("+$ 7") == "7"
    assert D.normalize_number("none") is None
