"""The built-in math set: reproducible, exact answers, and held-out splits that share no 13-gram with training
(heldout: the training phrasings with other numbers; heldout_phrasings: other phrasings of the same skills;
heldout_alt: other sentence shapes)."""
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
    for name in ("train", "heldout", "heldout_phrasings", "heldout_alt", "cold_start"):
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (MATH / f"{name}.jsonl").read_bytes(), name


def test_answers_exact_ids_unique_and_kinds_covered():
    train, heldout, phrasings = _rows("train"), _rows("heldout"), _rows("heldout_phrasings")
    for rows in (train, heldout, phrasings, _rows("heldout_alt"), _rows("cold_start")):
        assert len({r["id"] for r in rows}) == len(rows)
        for r in rows:
            Fraction(r["answer"])  # integers, reduced fractions or terminating decimals only
    assert {r["kind"] for r in train} == {r["kind"] for r in heldout} == {r["kind"] for r in phrasings}
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in heldout}
    assert {r["phrasing"] for r in heldout} <= {r["phrasing"] for r in train}  # heldout: the training phrasings
    assert {r["phrasing"] for r in train}.isdisjoint({r["phrasing"] for r in phrasings})  # ... and other ones
    assert {r["level"] for r in heldout[:60]} == {"easy", "multi-step"}  # a --limit 60 prefix holds both


def test_decontaminate_removes_no_training_problem(tmp_path):
    """No held-out problem (either set) shares a 13-word run with a training problem, by the stage users run."""
    others = [str(MATH / "heldout_alt.jsonl"), str(MATH / "heldout_phrasings.jsonl")]
    for name in ("train", "cold_start"):
        summary = decontaminate(str(MATH / f"{name}.jsonl"), str(tmp_path / f"clean-{name}"), ["math-heldout", *others],
                                progress=False)
        assert summary["rows_in"] == summary["kept"] == len(_rows(name)), summary
    # and the check can fail: a held-out problem pasted into a training row is caught
    planted = tmp_path / "planted.jsonl"
    planted.write_text(json.dumps({"id": "p", "prompt": "Quick one. " + _rows("heldout")[3]["prompt"]}) + "\n")
    s2 = decontaminate(str(planted), str(tmp_path / "clean2"), ["math-heldout"], progress=False)
    assert s2["kept"] == 0
