"""Prompts from JSONL files and the checkers that grade responses, for evaluating commit rules on your own data.

    records = prr_ext.data.load_jsonl("gsm8k_test.jsonl")           # {"prompt": ..., "answer": ...} per line
    check = prr_ext.data.make_checker("gsm8k")                       # or "exact", "regex:<pattern>", "pkg.mod:fn"
    check(response_text, records[0])                                 # -> bool

A line is a JSON object with a "prompt" (a string, or a chat as a list of {"role", "content"} messages) and, for
grading, an "answer" (a string or a number); other keys are kept in `Record.extra` for custom checkers. Rollouts for
PRR training need prompts only; evaluation and tuning need answers and a checker.

Checkers (`make_checker(spec)`):
  exact            the response, stripped, equals the answer, stripped
  gsm8k            the number after the response's last "####" equals the answer's number (the answer may be "42"
                   or a GSM8K solution ending in "#### 42"); commas, a leading "+", "$" and trailing zeros after a
                   decimal point do not count
  regex:PATTERN    the first match of PATTERN in the response (its group 1 if it has groups) equals the answer
  MODULE:FUNCTION  FUNCTION(response, record) -> bool, imported from MODULE (e.g. my_tasks.checks:is_correct)
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
from typing import Any, Callable, Dict, List, Optional, Union

__all__ = ["Record", "load_jsonl", "make_checker", "CHECKERS"]

Prompt = Union[str, List[Dict[str, str]]]


@dataclasses.dataclass(frozen=True)
class Record:
    """One line of a prompts file."""

    prompt: Prompt                # a string, or chat messages [{"role": ..., "content": ...}, ...]
    answer: Optional[str] = None  # the reference answer (None when the file has none)
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)  # every other key of the line
    line: int = 0                 # 1-based line number in the file, for messages


def _check_prompt(value: Any, where: str) -> Prompt:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ValueError(f"{where}: the prompt must be a string or a list of {{\"role\", \"content\"}} messages, got "
                     f"{type(value).__name__}")


def load_jsonl(path: str, *, prompt_key: str = "prompt", answer_key: str = "answer",
               require_answer: bool = False) -> List[Record]:
    """The records of a JSONL file (blank lines skipped). ValueError naming the file and line for a line that is
    not a JSON object, lacks `prompt_key` (or `answer_key` when `require_answer`), or holds a value of the wrong type;
    FileNotFoundError for a missing file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no prompts file at {path}")
    records: List[Record] = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for n, text in enumerate(f, 1):
            if any("\udc80" <= c <= "\udcff" for c in text):  # bytes that are not UTF-8
                raise ValueError(f"{path}:{n}: not UTF-8 text; save the file as UTF-8")
            if not text.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: each line must be a JSON object, got {type(obj).__name__}")
            if prompt_key not in obj:
                raise ValueError(f"{where}: no {prompt_key!r} key (keys: {sorted(obj)}); pass prompt_key= to use "
                                 "another")
            answer = obj.get(answer_key)
            if answer is None and require_answer:
                raise ValueError(f"{where}: no {answer_key!r} key, which grading needs; pass answer_key= to use "
                                 "another")
            if answer is not None:
                if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
                    raise ValueError(f"{where}: the answer must be a string or a number, got {type(answer).__name__}")
                answer = str(answer)
            extra = {k: v for k, v in obj.items() if k not in (prompt_key, answer_key)}
            records.append(Record(_check_prompt(obj[prompt_key], where), answer, extra, n))
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


# ---------------------------------------------------------------------------------------------------------------
# checkers
# ---------------------------------------------------------------------------------------------------------------
Checker = Callable[[str, Record], bool]
_NUMBER = re.compile(r"[-+]?\$?\s*\d[\d,]*(?:\.\d+)?")


def normalize_number(text: str) -> Optional[str]:
    """The first number in `text` in a canonical spelling ("1,234.50" -> "1234.5", "+$7" -> "7"), or None."""
    m = _NUMBER.search(text)
    if not m:
        return None
    s = m.group(0).replace(",", "").replace("$", "").replace(" ", "").lstrip("+")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0"
    return s


def _answer(record: Record) -> str:
    if record.answer is None:
        raise ValueError(f"line {record.line}: the record has no answer to grade against")
    return record.answer


def check_exact(response: str, record: Record) -> bool:
    return response.strip() == _answer(record).strip()


def check_gsm8k(response: str, record: Record) -> bool:
    answer = _answer(record)
    want = normalize_number(answer.rsplit("####", 1)[-1])
    if want is None:
        raise ValueError(f"line {record.line}: the answer {answer!r} holds no number")
    if "####" not in response:
        return False
    return normalize_number(response.rsplit("####", 1)[-1]) == want


def regex_checker(pattern: str) -> Checker:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"checker regex:{pattern} is not a valid regular expression: {e}") from None

    def check(response: str, record: Record) -> bool:
        m = rx.search(response)
        if m is None:
            return False
        got = m.group(1) if rx.groups else m.group(0)
        return got is not None and got.strip() == _answer(record).strip()

    return check


def import_checker(spec: str) -> Checker:
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ValueError(f"checker {spec}: cannot import module {module!r} ({e}); is it on PYTHONPATH?") from None
    except SyntaxError as e:
        raise ValueError(f"checker {spec}: module {module!r} does not compile ({e})") from None
    except AttributeError:
        raise ValueError(f"checker {spec}: module {module!r} has no {name!r}") from None
    if not callable(fn):
        raise ValueError(f"checker {spec}: {name!r} is not callable")

    def check(response: str, record: Record) -> bool:
        return bool(fn(response, record))

    return check


CHECKERS: Dict[str, Checker] = {"exact": check_exact, "gsm8k": check_gsm8k}


def make_checker(spec: str) -> Checker:
    """The checker a spec names: "exact", "gsm8k", "regex:PATTERN" or "MODULE:FUNCTION" (see the module docstring).
    ValueError for an unknown name, a bad pattern or a function that cannot be imported."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"checker must be a non-empty string, got {spec!r}")
    if spec in CHECKERS:
        return CHECKERS[spec]
    if spec.startswith("regex:"):
        return regex_checker(spec[len("regex:"):])
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
        return import_checker(spec)
    raise ValueError(f"unknown checker {spec!r}: use one of {sorted(CHECKERS)}, regex:<pattern> or "
                     "<module>:<function>")
