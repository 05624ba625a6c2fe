"""The built-in math set: reproducible, exact answers, and held-out splits that share no 13-gram with training."""
from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

from pipelines.hygiene.decontaminate import decontaminate

ROOT = Path(__file__).resolve().parents[1]
MATH = ROOT / "data" / "math"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (MATH / f"{name}.jsonl").read_text().splitlines()]


def test_regenerates_byte_for_byte(tmp_path):
    script = tmp_path / "make_math.py"
    script.write_text((MATH / "make_math.py").read_text().replace("HERE = Path(__file__).parent",
                                                                f"HERE = Path({str(tmp_path)!r})"))
    # the script imports decontaminate from the repo it lives in; run it with the repo on the path
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                    f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')"], check=True,
                   capture_output=True)
    for name in ("train", "heldout", "heldout_alt"):
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (MATH / f"{name}.jsonl").read_bytes(), name


def test_answers_exact_ids_unique_and_kinds_covered():
    train, heldout = _rows("train"), _rows("heldout")
    for rows in (train, heldout, _rows("heldout_alt")):
        assert len({r["id"] for r in rows}) == len(rows)
        for r in rows:
            Fraction(r["answer"])  # integers, reduced fractions or terminating decimals only
    assert {r["kind"] for r in train} == {r["kind"] for r in heldout}  # same skills ...
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    assert {r["phrasing"] for r in train}.isdisjoint({r["phrasing"] for r in heldout})  # ... other phrasings
    assert {r["level"] for r in heldout[:60]} == {"easy", "multi-step"}  # a --limit 60 prefix holds both


def test_decontaminate_removes_no_training_problem(tmp_path):
    """No held-out problem (either set) shares a 13-word run with a training problem, by the stage users run."""
    alt = str(MATH / "heldout_alt.jsonl")
    summary = decontaminate(str(MATH / "train.jsonl"), str(tmp_path / "clean"), ["math-heldout", alt], progress=False)
    assert summary["rows_in"] == 800 and summary["kept"] == 800, summary
    # and the check can fail: a held-out problem pasted into a training row is caught
    planted = tmp_path / "planted.jsonl"
    planted.write_text(json.dumps({"id": "p", "prompt": "Quick one. " + _rows("heldout")[3]["prompt"]}) + "\n")
    s2 = decontaminate(str(planted), str(tmp_path / "clean2"), ["math-heldout"], progress=False)
    assert s2["kept"] == 0
