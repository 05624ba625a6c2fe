"""`prefsmith audit-reward`: probe a reward before training on it.

    prefsmith audit-reward --input data/math/train.jsonl --reward math --reward format:boxed --weight format=0.2 \\
        [--policy-samples runs/rollouts] [--output runs/audit]

A reward that says 1 for a hedge, an echo of the question or a program that redefines `abs` is what an RL policy
learns to produce; a gold column that does not parse is a silent all-null (or all-zero) reward. This report checks
the dataset and reward spec a user is about to train with, in four parts (docs/rewards.md, "Audit a reward"):

1. gold health: the share of gold answers that parse (math: `rewards.math.check_gold`; code: `parse_tests`), with
   the rows that don't;
2. adversarial probes derived from each row and scored with the same spec and weights: the empty answer, the
   prompt echoed, the `\\boxed{ANSWER}` placeholder, format-only output, several candidates with the gold among
   them, the gold hidden in a longer expression, a very long and a deeply nested answer; for code rows, programs
   that exit early, return an always-equal object, or define the tests' helpers and builtins. Every probe that
   scores above 0 is listed with its row;
3. with `--policy-samples`, agreement with a second checker on the policy's own samples (plain math-verify for
   the math reward), the disagreements listed;
4. with `--policy-samples`, the step-0 picture for online RL: the share of groups (samples of one prompt) that
   are all-correct, all-wrong and mixed, and the reward's spread.

A table on stdout, `audit.json` and `audit.png` in `--output`. The exit status is 1 when a probe scored above 0 or a
gold does not parse, so a CI job can gate a training run on it.
"""
from __future__ import annotations

import argparse
import ast
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipelines.core.dataset import load_table
from pipelines.core.threads import add_threads_argument
from pipelines.errors import UserError

MAX_LISTED = 20  # rows listed per finding in the table (the JSON has them all)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="the prompts you will train on (JSONL, Parquet, dataset dir)")
    p.add_argument("--reward", action="append", required=True, help="reward spec, as in `label` (repeatable)")
    p.add_argument("--weight", action="append", default=[], help="NAME=W, as in `label` (repeatable)")
    p.add_argument("--policy-samples", default=None,
                   help="rollouts of the policy on these prompts (prompt, completion, gold): agreement and step-0")
    p.add_argument("--output", default=None, help="folder for audit.json and audit.png (default: none written)")
    p.add_argument("--rows", type=int, default=100, help="rows of --input to probe (default: the first 100)")
    p.add_argument("--gold-column", default="answer", help="gold-answer column for math rows (default: answer)")
    p.add_argument("--workers", type=int, default=None, help="worker processes for math / code rewards")
    add_threads_argument(p)  # an rm: / prm: reward runs its model here


def run(args: argparse.Namespace, out=None) -> int:
    from pipelines.stages.label import LabelConfig, load_rewards

    out = out or sys.stdout
    if args.rows < 1:
        raise UserError(f"--rows must be >= 1, got {args.rows}")
    rows = load_table(args.input).to_pylist()[: args.rows]
    if not rows or "prompt" not in rows[0]:
        raise UserError(f"{args.input}: no rows with a `prompt` column to probe")
    fns, names, weights = load_rewards(LabelConfig(rewards=list(args.reward), weights=list(args.weight),
                                                   workers=args.workers, threads=args.threads))
    try:
        report: dict[str, Any] = {"input": args.input, "rewards": list(args.reward), "weights": weights,
                                  "rows": len(rows)}
        report["gold"] = gold_health(rows, names, args.gold_column, args.workers)
        report["probes"] = run_probes(rows, fns, names, weights, args.gold_column)
        if args.policy_samples:
            samples = load_table(args.policy_samples).to_pylist()
            scored = _score(samples, fns, names, weights)
            report["agreement"] = agreement(samples, scored, names, args.gold_column)
            report["step0"] = step0(samples, scored)
    finally:
        for fn in fns:
            fn.close()
    print(format_report(report), file=out)
    if args.output:
        folder = Path(args.output)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "audit.json").write_text(json.dumps(report, indent=2, default=str))
        plot(report, folder / "audit.png")
        print(f"wrote {folder / 'audit.json'} and {folder / 'audit.png'}", file=out)
    bad_gold = report["gold"] and report["gold"]["bad"]
    return 1 if report["probes"]["passed"] or bad_gold else 0


# -- 1. gold health ---------------------------------------------------------------------------------------------------


def gold_health(rows: list[dict], names: list[str], gold_column: str, workers: int | None) -> dict | None:
    """Math: every gold through the math reward's own check; code: every row's tests through `parse_tests`."""
    if "math" in names and gold_column in rows[0]:
        from rewards.math import check_gold

        golds = [r.get(gold_column) for r in rows]
        problems = check_gold(golds, workers=workers)
        bad = [{"row": p.row, "gold": p.gold[:120], "reason": p.reason} for p in problems]
        return {"kind": "math", "checked": len(golds), "parse": len(golds) - len(bad), "bad": bad}
    if any(n.startswith("code") for n in names) and "tests" in rows[0]:
        from rewards.code import parse_tests

        bad = []
        for i, r in enumerate(rows):
            try:
                parse_tests(r["tests"], r.get("entry_point"))
            except (ValueError, TypeError) as exc:
                bad.append({"row": i, "gold": str(r["tests"])[:120], "reason": str(exc)[:200]})
        return {"kind": "code", "checked": len(rows), "parse": len(rows) - len(bad), "bad": bad}
    return None


# -- 2. adversarial probes --------------------------------------------------------------------------------------------


def _wrong_values(gold: Any) -> tuple[str, str]:
    """Two wrong answers near the gold: the numbers next to it, else the gold plus 1 and plus 7 as expressions (a
    fraction, a radical), so no probe is accidentally right."""
    text = str(gold).strip()
    try:
        value = int(text.replace(",", ""))
        return str(value + 1), str(value + 7)
    except ValueError:
        pass
    try:
        value = float(text)
        return f"{value + 1:g}", f"{value * 2 + 3:g}"
    except ValueError:
        return f"{{{text}}}+1", f"{{{text}}}+7"


def math_probes(prompt_text: str, gold: Any) -> dict[str, str]:
    g = str(gold).strip()
    w1, w2 = _wrong_values(gold)
    return {
        "several_candidates": f"It could be \\boxed{{{w1}}}, \\boxed{{{g}}} or \\boxed{{{w2}}}.",
        "candidates_in_one_box": f"The answer is \\boxed{{{w1} \\text{{ or }} {g}}}.",
        "answer_then_alternative": f"The answer is \\boxed{{{g}}}, or maybe {w1}.",
        "gold_in_a_set": f"The answer is \\boxed{{\\{{{w1}, {g}, {w2}\\}}}}.",
        "gold_in_a_tuple": f"The answer is \\boxed{{({g}, {w1})}}.",
        "gold_plus_minus": f"The answer is \\boxed{{{g} \\pm {w1}}}.",
        "gold_between": f"The answer is \\boxed{{{w1} < x < {g}}}.",
        "gold_approx": f"The answer is \\boxed{{{w1} \\approx {g}}}.",
        "list_of_numbers": "The answer is one of " + ", ".join(str(i) for i in range(0, 200)) + f", {g}.",
        "question_restated_with_gold_last": f"{prompt_text} I don't know. {g}?",
    }


def code_probes(row: dict) -> dict[str, str]:
    """Programs that pass only if the harness lets the program's names, exits or objects decide the verdict."""
    entry = row.get("entry_point") or ""
    called = sorted(_called_names(row.get("tests")) | ({entry} if entry else set()))
    stub = "".join(f"def {n}(*a, **k):\n    return 0\n" for n in called if n.isidentifier())
    always = ("class _Yes:\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
              "    __bool__ = lambda s: True\n    __hash__ = lambda s: 0\n")
    return {
        "exits_early": "import sys\nsys.exit(0)\n",
        "always_equal_object": always + "".join(f"def {n}(*a, **k):\n    return _Yes()\n"
                                               for n in called if n.isidentifier()),
        "defines_builtins": stub + "".join(f"def {b}(*a, **k):\n    return 0\n"
                                           for b in ("abs", "sorted", "len", "set", "round", "all", "any")),
        "defines_helpers_and_modules": stub + "class math:\n    isclose = staticmethod(lambda *a, **k: True)\n"
                                       "def candidate(*a, **k):\n    return 0\ndef check(*a, **k):\n    return None\n",
        "raises_stop_iteration": "".join(f"def {n}(*a, **k):\n    raise StopIteration\n"
                                         for n in called if n.isidentifier()),
    }


def _called_names(tests: Any) -> set[str]:
    """Names the tests call (`foo(...)`), from the test source(s); not builtins."""
    import builtins

    sources = [tests] if isinstance(tests, str) else [t for t in (tests or []) if isinstance(t, str)]
    found: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                found.add(node.func.id)
    return {n for n in found if not hasattr(builtins, n) and n not in ("check", "candidate")}


BASELINE = "baseline_wrong_answer"  # a plain wrong answer in the expected format: what a probe must not beat
EXPENSIVE_ROWS = 3  # rows that get the long and deeply nested probes


def probes_for(row: dict, gold_column: str, names: list[str], expensive: bool = True) -> dict[str, str]:
    from rewards.chat import conversation_text

    prompt_text = conversation_text(row["prompt"]) or ""
    probes = {
        "empty": "",
        "prompt_echo": prompt_text,
        "placeholder": "The final answer is \\boxed{ANSWER}.",
        "format_only": "<think>\n</think>\n\\boxed{}",
    }
    if expensive:  # the same for every row, and each costs a checker timeout: a few rows show it
        probes["very_long_answer"] = "\\boxed{" + "+".join(["1"] * 20000) + "}"
        probes["deeply_nested_answer"] = "\\boxed{" + "(" * 400 + "1" + ")" * 400 + "}"
    if row.get(gold_column) is not None:  # any reward that reads a gold (the built-in math or a plug-in's)
        probes[BASELINE] = f"The answer is \\boxed{{{_wrong_values(row[gold_column])[0]}}}."
        probes.update(math_probes(prompt_text, row[gold_column]))
    if row.get("tests") is not None:
        entry = row.get("entry_point") or ""
        called = sorted(_called_names(row.get("tests")) | ({entry} if entry else set()))
        probes[BASELINE] = "".join(f"def {n}(*a, **k):\n    return None\n" for n in called if n.isidentifier())
        probes.update(code_probes(row))
    return probes


def run_probes(rows: list[dict], fns, names: list[str], weights: dict[str, float], gold_column: str) -> dict:
    """Score every probe of every row; a probe is paid when its total reward is above 0 and above what the row's
    plain wrong answer in the expected format gets (so a format reward's share alone is no finding)."""
    probe_rows = []
    for i, row in enumerate(rows):
        for probe, completion in probes_for(row, gold_column, names, i < EXPENSIVE_ROWS).items():
            probe_rows.append({**row, "completion": completion, "_row": i, "_probe": probe})
    scored = _score(probe_rows, fns, names, weights)
    baseline = {r["_row"]: s["reward"] or 0.0 for r, s in zip(probe_rows, scored) if r["_probe"] == BASELINE}
    passed, per_probe = [], defaultdict(lambda: [0, 0])
    for r, s in zip(probe_rows, scored):
        if r["_probe"] == BASELINE:
            continue
        per_probe[r["_probe"]][1] += 1
        if s["reward"] is not None and s["reward"] > max(0.0, baseline.get(r["_row"], 0.0)):
            per_probe[r["_probe"]][0] += 1
            passed.append({"row": r["_row"], "probe": r["_probe"], "reward": s["reward"], "rewards": s["rewards"],
                           "reasons": s["reward_info"], "completion": str(r["completion"])[:160]})
    return {"probed": sum(c[1] for c in per_probe.values()), "passed": passed, "baseline": BASELINE,
            "per_probe": {k: {"scored_above_0": v[0], "of": v[1]} for k, v in sorted(per_probe.items())}}


def _score(rows: list[dict], fns, names: list[str], weights: dict[str, float]) -> list[dict]:
    from pipelines.stages.label import label_rows

    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    return label_rows(clean, fns, names, weights, batch_size=256)


# -- 3. agreement with a second checker -------------------------------------------------------------------------------


def agreement(samples: list[dict], scored: list[dict], names: list[str], gold_column: str) -> dict | None:
    """Our math reward against plain math-verify (parse both, verify) on the policy's own samples."""
    if "math" not in names or not samples or gold_column not in samples[0]:
        return None
    from math_verify import parse, verify

    from rewards.chat import completion_text

    agree, disagreements, compared = 0, [], 0
    for i, (row, s) in enumerate(zip(samples, scored)):
        ours = s["rewards"].get("math")
        if ours is None or row.get(gold_column) is None:
            continue
        try:
            gold = parse(f"${row[gold_column]}$")
            theirs = float(bool(verify(gold, parse(completion_text(row["completion"])))))
        except Exception:  # noqa: BLE001 - the second checker failing on a row is a disagreement to look at
            theirs = None
        compared += 1
        if theirs == ours:
            agree += 1
        else:
            disagreements.append({"row": i, "ours": ours, "math_verify": theirs, "gold": str(row[gold_column]),
                                  "reason": s["reward_info"].get("math"),
                                  "completion_tail": completion_text(row["completion"])[-160:]})
    return {"checker": "math-verify parse+verify", "compared": compared, "agree": agree,
            "disagreements": disagreements}


# -- 4. step-0 picture ------------------------------------------------------------------------------------------------


def step0(samples: list[dict], scored: list[dict]) -> dict:
    """Groups of samples of one prompt, as GRPO would see them at step 0: which carry a learning signal."""
    groups: dict[Any, list[float]] = defaultdict(list)
    nulls = 0
    for row, s in zip(samples, scored):
        key = row.get("prompt_id", None)
        key = key if key is not None else json.dumps(row["prompt"], sort_keys=True, default=str)
        if s["reward"] is None:
            nulls += 1
            continue
        groups[key].append(float(s["reward"]))
    values = [v for g in groups.values() for v in g]
    top = max(values) if values else 0.0
    kinds = {"all_correct": 0, "all_wrong": 0, "mixed": 0}
    spreads = []
    for g in groups.values():
        spreads.append(statistics.pstdev(g) if len(g) > 1 else 0.0)
        if max(g) == min(g):
            kinds["all_correct" if g[0] == top and top > 0 else "all_wrong"] += 1
        else:
            kinds["mixed"] += 1
    n = max(len(groups), 1)
    return {"groups": len(groups), "samples": len(values), "nulls": nulls,
            "share": {k: v / n for k, v in kinds.items()}, "counts": kinds,
            "reward_mean": statistics.fmean(values) if values else None,
            "reward_std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "mean_within_group_std": statistics.fmean(spreads) if spreads else None,
            "histogram": _histogram(values)}


def _histogram(values: list[float], bins: int = 10) -> dict:
    if not values:
        return {}
    lo, hi = min(values), max(values)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    return {"lo": lo, "hi": hi, "counts": counts}


# -- output -----------------------------------------------------------------------------------------------------------


def format_report(r: dict) -> str:
    lines = [f"audit-reward: {', '.join(r['rewards'])} on {r['input']} ({r['rows']} rows)"]
    g = r["gold"]
    if g:
        lines.append(f"\n1. gold health ({g['kind']}): {g['parse']}/{g['checked']} parse")
        lines += [f"   row {b['row']}: {b['gold']!r}: {b['reason']}" for b in g["bad"][:MAX_LISTED]]
    else:
        lines.append("\n1. gold health: no math or code reward with its gold column; nothing to check")
    p = r["probes"]
    lines.append(f"\n2. adversarial probes: {len(p['passed'])} of {p['probed']} paid (scored above 0 and above the "
                 f"row's plain wrong answer)")
    width = max(len(k) for k in p["per_probe"])
    lines.append(f"   {'probe':<{width}}  paid")
    for name, c in p["per_probe"].items():
        flag = "  <-- the reward pays this" if c["scored_above_0"] else ""
        lines.append(f"   {name:<{width}}  {c['scored_above_0']:>3}/{c['of']}{flag}")
    for hit in p["passed"][:MAX_LISTED]:
        lines.append(f"   row {hit['row']} {hit['probe']}: reward {hit['reward']:g} ({hit['reasons']}) "
                     f"{hit['completion'][:80]!r}")
    a = r.get("agreement")
    if a:
        share = a["agree"] / a["compared"] if a["compared"] else float("nan")
        lines.append(f"\n3. agreement with {a['checker']}: {a['agree']}/{a['compared']} ({share:.1%})")
        for d in a["disagreements"][:MAX_LISTED]:
            lines.append(f"   row {d['row']}: ours {d['ours']} ({d['reason']}), math-verify {d['math_verify']}, "
                         f"gold {d['gold']!r}: ...{d['completion_tail'][-70:]!r}")
    elif "agreement" in r:
        lines.append("\n3. agreement: no math reward or no gold column in the samples; nothing compared")
    s = r.get("step0")
    if s:
        sh = s["share"]
        lines.append(f"\n4. step 0: {s['groups']} groups, {s['samples']} scored samples ({s['nulls']} null): "
                     f"all-correct {sh['all_correct']:.1%}, all-wrong {sh['all_wrong']:.1%}, mixed {sh['mixed']:.1%} "
                     f"(only mixed groups carry a GRPO signal)")
        lines.append(f"   reward mean {s['reward_mean']:.3f}, std {s['reward_std']:.3f}, "
                     f"mean within-group std {s['mean_within_group_std']:.3f}")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = r.get("step0")
    fig, axes = plt.subplots(1, 2 if step else 1, figsize=(12 if step else 7, 4), squeeze=False)
    ax = axes[0][0]
    per = r["probes"]["per_probe"]
    shares = [c["scored_above_0"] / c["of"] if c["of"] else 0 for c in per.values()]
    ax.barh(list(per), shares, color=["tab:red" if s > 0 else "tab:green" for s in shares])
    for y, (c, share) in enumerate(zip(per.values(), shares)):  # the counts, visible when every bar is empty
        ax.text(share + 0.01, y, f"{c['scored_above_0']}/{c['of']}", va="center", fontsize=8,
                color="tab:red" if share > 0 else "tab:green")
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of rows where the reward paid the probe")
    ax.set_title("adversarial probes (green: never paid)")
    if step:
        ax = axes[0][1]
        hist = step["histogram"]
        if hist:
            lo, hi, counts = hist["lo"], hist["hi"], hist["counts"]
            width = (hi - lo) / len(counts) or 1.0
            ax.bar([lo + width * (i + 0.5) for i in range(len(counts))], counts, width=width * 0.9)
        sh = step["share"]
        ax.set_title(f"policy samples: all-correct {sh['all_correct']:.0%}, all-wrong {sh['all_wrong']:.0%}, "
                     f"mixed {sh['mixed']:.0%}", fontsize=9)
        ax.set_xlabel("reward")
        ax.set_ylabel("samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

