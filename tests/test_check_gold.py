"""`prefsmith check-gold` on a real JSONL file: bad golds listed with row, id and reason; exit status 1/0/2."""
from __future__ import annotations

import json

from pipelines.cli import main


def test_check_gold_lists_unparseable_answers(tmp_path, capsys):
    rows = [{"id": "q0", "prompt": "p", "answer": "42"},
            {"id": "q1", "prompt": "p", "answer": "\\frac{"},
            {"id": "q2", "prompt": "p", "answer": "\\frac{1}{2}"},
            {"id": "q3", "prompt": "p", "answer": None},
            {"id": "q4", "prompt": "p", "answer": "Monday"}]
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["check-gold", "--input", str(src), "--workers", "1"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].split("\t") == ["row 1", "id q1", "answer '\\\\frac{'", "bad_gold"]
    assert out[1].split("\t") == ["row 3", "id q3", "answer null", "bad_gold"]
    assert out[2].startswith("check-gold: 3/5 gold answers parse; 2 do not")

    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] in ("q0", "q2")))
    assert main(["check-gold", "--input", str(good), "--workers", "1"]) == 0
    assert "2/2 gold answers parse; 0 do not" in capsys.readouterr().out

    assert main(["check-gold", "--input", str(good), "--column", "gold"]) == 2
    assert "no column 'gold'" in capsys.readouterr().err
