"""benchmarks/decode_speed.py end to end on a tiny random model (seconds): the loops run, prr_ext's loop decodes
exactly LLaDA's eager loop's tokens, and the JSON holds one row per (batch size, loop) with consistent numbers."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "decode_speed.py")

pytestmark = pytest.mark.skipif(not os.path.isfile(SCRIPT), reason="benchmarks/ is not part of this checkout")


def load_script():
    spec = importlib.util.spec_from_file_location("decode_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_run(tmp_path):
    out = tmp_path / "decode.json"
    mod = load_script()
    assert mod.main(["--model", "tiny", "--batch", "1,3", "--gen-length", "16", "--block-length", "8",
                     "--repeats", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = {(r["B"], r["loop"]): r for r in doc["rows"]}
    assert set(rows) == {(b, loop) for b in (1, 3) for loop in ("eager", "op", "prefix", "dual")}
    for (b, loop), r in rows.items():
        assert r["seconds"] > 0 and abs(r["tokens_per_s"] - b * 16 / r["seconds"]) < 1e-6 * r["tokens_per_s"]
        assert 0.0 <= r["outside_share"] <= 1.0 and 0 < r["forward_seconds"] <= r["seconds"]
        assert 0.0 <= r["token_agreement_with_eager"] <= 1.0
    assert rows[(1, "op")]["token_agreement_with_eager"] == 1.0 == rows[(3, "op")]["token_agreement_with_eager"]


def test_bad_arguments_name_the_option(capsys):
    mod = load_script()
    for argv, option in ((["--batch", "0"], "--batch"), (["--loops", "fast"], "--loops"),
                         (["--model", "tiny", "--gen-length", "10", "--block-length", "4"], "--block-length")):
        with pytest.raises(SystemExit):
            mod.main(argv)
        assert f"argument {option}" in capsys.readouterr().err
