"""`prefsmith stats`: pass@k against hand-computed values, fractions, lengths, kinds, PNG."""
import json
import math
from fractions import Fraction

import pytest

from pipelines.core import dataset as ds
from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.builders.kto import build_kto
from pipelines.builders.pairs import build_pairs
from pipelines.reports.stats import compute_stats, pass_at_k

REWARDS = {"p0": [1.0, 0.0, 0.0, 0.0], "p1": [1.0] * 4, "p2": [0.0] * 4, "p3": [1.0, None, 0.0, 0.0]}


def rows():
    out = []
    for pid, rewards in REWARDS.items():
        for i, r in enumerate(rewards):
            out.append({"id": f"{pid}-{i}", "prompt_id": pid, "sample_idx": i, "prompt": f"Q {pid}",
                        "completion": " ".join(["w"] * (i + 1)) + f" {pid}", "completion_ids": list(range(2 * i + 1)),
                        "finish_reason": "length" if i == 3 else "stop", "rewards": {"math": r}, "reward": r,
                        "reward_info": {"math": "timeout" if r is None else "ok"}})
    return out


@pytest.fixture
def labeled(tmp_path):
    path = tmp_path / "labeled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    return path


def exact_pass_at_k(n, c, k):
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def test_pass_at_k_estimator():
    assert pass_at_k(4, 1, 2) == 0.5
    assert pass_at_k(8, 2, 4) == pytest.approx(55 / 70)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 5, 3) == 1.0 and pass_at_k(5, 3, 3) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    for n, c, k in [(200, 3, 100), (1000, 1, 10), (64, 17, 32)]:  # no overflow, matches exact binomials
        assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), rel=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_labeled_stats_values(labeled, tmp_path, capsys):
    s = compute_stats(ds.load_table(labeled), ks=(1, 2, 4))
    assert s["kind"] == "labeled" and s["rows"] == 16 and s["prompts"] == 4
    assert s["reward"]["values"] == {"0": 9, "1": 6} and s["reward"]["null"] == 1
    assert s["reward"]["mean"] == pytest.approx(6 / 15)
    o = s["outcomes"]
    assert o["pass@1"] == pytest.approx((1 / 4 + 1 + 0 + 1 / 3) / 4)
    assert o["pass@2"] == pytest.approx((0.5 + 1 + 0 + 2 / 3) / 4)
    assert o["pass@4"] == pytest.approx(2 / 3) and o["pass@4_prompts"] == 3  # p3 has only 3 scored samples
    assert (o["all_pass"], o["all_fail"], o["mixed"]) == (0.25, 0.25, 0.5)
    assert s["completion_length"]["unit"] == "tokens" and s["completion_length"]["max"] == 7
    assert s["completion_length"]["p50"] == 4.0  # lengths 1,3,5,7 four times each
    assert s["finish_reasons"] == {"stop": 12, "length": 4}

    png = tmp_path / "plots" / "s.png"
    assert main(["stats", str(labeled), "--k", "1,2,4", "--json", "--plot", str(png)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["outcomes"]["pass@2"] == pytest.approx(o["pass@2"]) and printed["plot"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_table_output_and_default_png(labeled, tmp_path, capsys):
    out = tmp_path / "pairs"
    build_pairs(str(labeled), str(out), progress=False)
    assert main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(pairs)" in text and "margin:" in text
    assert (out / "stats.png").read_bytes()[:4] == b"\x89PNG"
    s = compute_stats(ds.load_table(out))
    assert s["rows"] == 2 and s["prompts"] == 2 and s["margin"]["values"] == {"1": 2}  # p0 and p3
    assert s["chosen_length"]["unit"] == "words" and s["pairs_per_prompt"] == 1.0


def test_kto_and_rollouts_kinds(labeled, tmp_path):
    build_kto(str(labeled), str(tmp_path / "kto"), progress=False)
    s = compute_stats(ds.load_table(tmp_path / "kto"))
    assert s["kind"] == "kto" and s["labels"] == {"desirable": 6, "undesirable": 9, "desirable_fraction": 0.4}
    plain = tmp_path / "rollouts.jsonl"
    plain.write_text("".join(json.dumps({"prompt_id": "a", "completion": "one two three"}) + "\n" for _ in range(3)))
    s = compute_stats(ds.load_table(plain))
    assert s["kind"] == "rollouts" and s["completion_length"]["unit"] == "words" and s["completion_length"]["max"] == 3


def test_bad_inputs(tmp_path, capsys):
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"x": 1}) + "\n")
    assert main(["stats", str(odd), "--no-plot"]) == 2
    assert "cannot tell what kind of dataset" in capsys.readouterr().err
    assert main(["stats", str(odd), "--k", "0"]) == 2
    assert "every k must be >= 1" in capsys.readouterr().err
    with pytest.raises(UserError, match="no such file"):
        compute_stats(ds.load_table(str(tmp_path / "missing.jsonl")))


def test_select_output_is_an_sft_set(labeled, tmp_path):
    from pipelines.builders.rft import SelectConfig, build_select

    build_select(str(labeled), str(tmp_path / "sft"), SelectConfig(keep="all-correct"), progress=False)
    s = compute_stats(ds.load_table(tmp_path / "sft"))
    assert s["kind"] == "sft" and s["rows"] == 6 and s["sources"] == {"rft": 6}
    assert "outcomes" not in s and s["reward"]["values"] == {"1": 6}
