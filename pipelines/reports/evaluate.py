"""`prefsmith eval`: sample a model on prompts, score the completions, report accuracy, pass@k and maj@k.

    prefsmith eval --model default --prompts data/math/heldout.jsonl --reward math --output runs/eval
    prefsmith eval --model M --prompts P --reward math --n 8 --temperature 1.0 --by level --output runs/eval8

Generation is the `generate` core (`generate_rows`), scoring the `label` core (`label_rows`, the same reward
specs), and the runner shards, resumes and fingerprints the per-completion rows. What this module adds:
the correctness column, the answer each completion votes for, and the figures. Metric definitions, the tie
rule and the outputs are in docs/eval.md.

The pure functions (`answer_key`, `majority_index`, `maj_at_k`, `eval_summary`) and the row core
`score_rows` take objects, not paths, so an in-process evaluation (the GRPO trainer's held-out evaluation)
calls the same code: `score_rows(generate_rows(...)[0], fns, names, weights, correct)` then
`eval_summary(rows, names, correct, ks)`.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipelines.core import dataset as ds
from pipelines.core.columns import standard_rows
from pipelines.core.files import atomic_path, atomic_write_json
from pipelines.core.options import add_dataclass_options, from_args
from pipelines.core.runner import Shard, execute
from pipelines.core.stage import Stage
from pipelines.core.tracking import (TABLE_ROWS, Trackers, add_report_to_argument, check_installed, parse_report_to,
                                     table_rows)
from pipelines.errors import UserError
from pipelines.executors import add_executor_arguments, executor_config
from pipelines.reports.stats import pass_at_k
from pipelines.stages.generate import (GenerateConfig, GenerateStage, add_generate_options, generate_config, generate_rows,
                                       prompt_ids)
from pipelines.stages.label import LabelConfig, LabelStage, label_rows
from rewards.chat import completion_text
from rewards.extract import extract_answer, gold_text, whole_answer
from rewards.math import normalize_answer, simple_value

CORRECT_AT = 1.0  # a completion is correct when its correctness reward is >= this (the math reward's 1)


# ------------------------------------------------------------------------------------------ answers, votes
def answer_key(answer: str | None) -> str | None:
    """The canonical form an answer votes with in maj@k; None for no answer.

    The math reward's normalization (`rewards.math.normalize_answer`: `$...$`, units, `\\dfrac`, thousands
    separators...), then exact numbers as reduced fractions (`0.5`, `1/2`, `\\frac{1}{2}`, `x = 1/2` -> `1/2`;
    a percent keeps its `%`), a word answer lower-cased, anything else with its spaces removed.

    >>> [answer_key(a) for a in ("0.5", "1/2", "\\\\boxed{\\\\frac12}", "$x = 0.50$")]
    ['1/2', '1/2', '1/2', '1/2']
    """
    if answer is None or not str(answer).strip():
        return None
    text = normalize_answer(gold_text(str(answer)))  # gold_text unwraps a `\boxed{}` left around an answer
    value = simple_value(text)
    if value is not None:
        number, percent = value
        return (str(number.numerator) if number.denominator == 1 else f"{number}") + ("%" if percent else "")
    words = re.fullmatch(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}|([A-Za-z][A-Za-z '\-]*)", text)
    if words:
        return " ".join((words.group(1) or words.group(2)).lower().split()) or None
    return re.sub(r"\s+", "", text) or None


def completion_answer(completion: Any, info: dict | None) -> str | None:
    """The answer a completion gives: what the correctness reward extracted when it reports it (the math
    reward does, under `extracted`), else the first marker rule of `rewards.extract` (box, answer phrase,
    `####`) or a completion that is only an answer."""
    if info and "extracted" in info:
        return info["extracted"]
    text = completion_text(completion)
    found = extract_answer(text) or whole_answer(text)
    return found.text if found else None


def majority_index(keys: Sequence[str | None]) -> int | None:
    """Index of the sample whose answer wins the vote: the most frequent non-None key; a tie goes to the key
    that occurs first; the winner's first sample stands for it. None when no sample has an answer.

    >>> majority_index(["3", "1/2", None, "1/2", "3"])   # 3 and 1/2 tie on two votes; 3 came first
    0
    """
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(i for i, k in enumerate(keys) if k is not None and votes[k] == top)


def maj_at_k(keys: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """1.0 if the majority answer of the first k samples is correct (its first sample's verdict), else 0.0.
    When none of the k has an answer there is nothing to vote on and the first sample stands (under `math`,
    where no answer scores 0, that is 0; so maj@1 is the first sample's verdict for any correctness reward).
    `keys` and `correct` are one prompt's scored samples in order."""
    if not 1 <= k <= len(keys):
        raise ValueError(f"maj@k needs 1 <= k <= {len(keys)} samples, got k={k}")
    winner = majority_index(keys[:k])
    return float(bool(correct[0 if winner is None else winner]))


def default_ks(n: int) -> list[int]:
    """Powers of two up to n, and n itself: the k of pass@k and maj@k for n samples per prompt."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks + ([n] if n not in ks else [])


# ------------------------------------------------------------------------------------------------- rows
class _KeepInfo:
    """The correctness reward as `label_rows` calls it, keeping each result's `info` (its extracted answer),
    which `label_rows` does not write."""

    def __init__(self, fn: Any):
        self.fn, self.infos = fn, []

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], columns: dict[str, list]) -> list:
        results = self.fn.score(prompts, completions, columns)
        self.infos.extend(r.info for r in results)
        return results


def score_rows(rows: list[dict], fns: list, names: list[str], weights: dict[str, float], correct: str,
               batch_size: int = 64) -> list[dict]:
    """`label_rows` plus the three eval columns: `extracted` (the answer found), `answer_key` (its canonical
    form, the maj@k vote) and `correct` (`rewards[correct] >= 1`, null when that reward is null)."""
    at = names.index(correct)
    keep = _KeepInfo(fns[at])
    labeled = label_rows(rows, [keep if i == at else f for i, f in enumerate(fns)], names, weights, batch_size)
    for row, info in zip(labeled, keep.infos):
        answer = completion_answer(row["completion"], info)
        score = row["rewards"][correct]
        row.update(extracted=answer, answer_key=answer_key(answer),
                   correct=None if score is None else bool(score >= CORRECT_AT))
    return labeled


# ---------------------------------------------------------------------------------------------- figures
def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def _reasons(rows: Sequence[dict], name: str) -> dict[str, int]:
    """Reasons of the rows' `name` reward, most common first."""
    return dict(Counter(r["reward_info"].get(name) or "" for r in rows).most_common())


def group_metrics(rows: Sequence[dict], names: Sequence[str], correct: str, ks: Sequence[int]) -> dict[str, Any]:
    """The figures of one set of completion rows (all of them, or one --by group); see docs/eval.md.

    A completion whose correctness reward is null is left out of accuracy, pass@k and maj@k and counted under
    `null` by its reason; a prompt with no scored completion is left out of all three."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_prompt[str(r["prompt_id"])].append(r)
    first, samples = [], []  # first: sample 0's verdicts; samples: (answer keys, verdicts) of scored samples
    for group in by_prompt.values():
        group = sorted(group, key=lambda r: r.get("sample_idx") or 0)
        if group[0]["rewards"][correct] is not None:
            first.append(float(group[0]["rewards"][correct] >= CORRECT_AT))
        scored = [r for r in group if r["rewards"][correct] is not None]
        if scored:
            samples.append(([r.get("answer_key") for r in scored],
                            [r["rewards"][correct] >= CORRECT_AT for r in scored]))
    out: dict[str, Any] = {"prompts": len(by_prompt), "completions": len(rows), "prompts_scored": len(samples),
                           "accuracy": _mean(first)}
    for k in ks:
        out[f"pass@{k}"] = _mean([pass_at_k(len(c), sum(c), k) for _, c in samples if len(c) >= k])
    for k in ks:
        out[f"maj@{k}"] = _mean([maj_at_k(keys, c, k) for keys, c in samples if len(c) >= k])
    nulls = [r for r in rows if r["rewards"][correct] is None]
    out["null"] = {"completions": len(nulls), "prompts": len(by_prompt) - len(samples),
                   "reasons": _reasons(nulls, correct)}
    out["rewards"] = {}
    for name in names:
        got = [r["rewards"][name] for r in rows if r["rewards"][name] is not None]
        out["rewards"][name] = {"mean": _mean(got), "scored": len(got), "null": len(rows) - len(got),
                                "null_reasons": _reasons([r for r in rows if r["rewards"][name] is None], name)}
    totals = [r["reward"] for r in rows if r.get("reward") is not None]
    out["reward"] = {"mean": _mean(totals), "scored": len(totals), "null": len(rows) - len(totals)}
    return out


def group_value(value: Any) -> str:
    """A --by column's value as a group name (JSON keys are strings; a missing value is `null`)."""
    return "null" if value is None else str(value)


def eval_summary(rows: Sequence[dict], names: Sequence[str], correct: str, ks: Sequence[int],
                 by: Sequence[str] = ()) -> dict[str, Any]:
    """{"overall": figures, "by": {column: {value: figures}}} over scored completion rows (`score_rows`)."""
    if correct not in names:
        raise UserError(f"--correct-reward {correct}: not one of the rewards ({', '.join(names)})")
    groups: dict[str, dict[str, Any]] = {}
    for column in by:
        split: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            split[group_value(r.get(column))].append(r)
        groups[column] = {v: group_metrics(split[v], names, correct, ks) for v in sorted(split)}
    return {"overall": group_metrics(rows, names, correct, ks), "by": groups}


def metric_names(ks: Sequence[int]) -> list[str]:
    return ["accuracy", *(f"pass@{k}" for k in ks), *(f"maj@{k}" for k in ks)]


def format_table(summary: dict[str, Any], names: Sequence[str], ks: Sequence[int]) -> str:
    """One line per group (overall first): prompts, the metrics, mean reward per component, nulls."""
    cols = ["prompts", *metric_names(ks), *(f"mean {n}" for n in names), "null"]
    lines = [("overall", summary["overall"])]
    lines += [(f"{c}={v}", m) for c, groups in summary["by"].items() for v, m in groups.items()]
    width = max(len(g) for g, _ in lines)

    def cell(m: dict, col: str) -> str:
        if col == "prompts":
            return str(m["prompts"])
        if col == "null":
            return str(m["null"]["completions"])
        value = m["rewards"][col[5:]]["mean"] if col.startswith("mean ") else m[col]
        return "-" if value is None else f"{value:.4f}"

    widths = [max(len(c), 6) for c in cols]
    out = ["  ".join([f"{'group':<{width}}", *(f"{c:>{w}}" for c, w in zip(cols, widths))])]
    for group, m in lines:
        out.append("  ".join([f"{group:<{width}}", *(f"{cell(m, c):>{w}}" for c, w in zip(cols, widths))]))
    reasons = summary["overall"]["null"]["reasons"]
    if reasons:
        out.append("null (not scored, left out): " + ", ".join(f"{k[:80]}: {v}" for k, v in reasons.items()))
    return "\n".join(out)


def plot(summary: dict[str, Any], ks: Sequence[int], path: str | Path, title: str = "") -> Path:
    """Grouped bars: accuracy, pass@k, maj@k for overall and each --by group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = [("overall", summary["overall"])]
    groups += [(f"{c}={v}", m) for c, gs in summary["by"].items() for v, m in gs.items()]
    metrics = metric_names(ks)
    x = np.arange(len(groups))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.5 + len(groups) * len(metrics) * 0.25), 4))
    for j, name in enumerate(metrics):
        values = [m[name] if m[name] is not None else 0.0 for _, m in groups]
        ax.bar(x - 0.4 + (j + 0.5) * width, values, width, label=name)
    crowded = len(groups) > 4
    ax.set_xticks(x, [g for g, _ in groups], rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of prompts")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside the bars
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ stage
@dataclass
class EvalConfig:
    generate: GenerateConfig
    label: LabelConfig
    correct: str | None = field(default=None, metadata={
        "flag": "--correct-reward", "metavar": "NAME",
        "help": "the reward that decides correctness (>= 1); default: math when given, else the first"})
    by: list[str] = field(default_factory=list, metadata={  # not in the fingerprint
        "metavar": "COLUMN", "help": "also report the figures per value of this prompt column (repeatable), e.g. level"})


class EvalStage(Stage):
    """`eval` as a stage: prompts in, scored completion rows out (one per sample). The generate stage holds
    the engine, the label stage the reward functions; both set up where the stage runs."""

    name = "eval"
    shard_size = 64

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        self.gen = GenerateStage(cfg.generate)
        self.label = LabelStage(cfg.label)  # builds the rewards once here: every spec checked before work
        names = self.label.names
        self.correct = cfg.correct or ("math" if "math" in names else names[0])
        if self.correct not in names:
            raise UserError(f"--correct-reward {self.correct}: not one of the rewards ({', '.join(names)})")
        self.num_gpus = self.gen.num_gpus

    @property
    def cpus(self) -> int | None:  # a Ray replica sets the CPUs it reserved; the reward pools size to them
        return self.label.cpus

    @cpus.setter
    def cpus(self, value: int | None) -> None:
        self.label.cpus = value

    def config(self) -> dict:
        return {"generate": self.gen.config(), "label": self.label.config(), "correct": self.correct,
                "correct_at": CORRECT_AT}

    def required(self) -> list[str]:
        return [self.cfg.generate.prompt_column, *map(self.label._column, self.label.needs)]

    def present(self) -> list[str]:
        return list(self.cfg.by)

    def setup(self) -> None:
        self.gen.setup()
        self.label.setup()

    def process(self, rows: list[dict], shard: Shard) -> dict:
        out, stats = self.gen.sample(rows, prompt_ids(rows, shard.start), shard.tick)  # trajectories with --env
        out = standard_rows(out, gold_column=self.cfg.label.gold_column)  # --gold-column: the rewards read `answer`
        scored = score_rows(out, self.label.fns, self.label.names, self.label.weights, self.correct,
                            self.cfg.label.batch_size)
        return {"rows": scored, "stats": stats}

    def close(self) -> None:
        self.gen.close()
        self.label.close()


@dataclass
class EvalResult:
    output: str
    summary: dict[str, Any]  # what eval.json holds
    skipped: bool = False


def evaluate(cfg: EvalConfig, prompts: str, output: str, *, overwrite: bool = False, limit: int | None = None,
             shard_size: int | None = None, progress: bool = True, plot_png: bool = True, executor=None,
             out=None, report_to: list[str] | None = None) -> EvalResult:
    """Run `prefsmith eval` (its Python API): the rows into `output`, then `output/eval.json`, the printed
    table and `output/eval.png`, and the figures to the `report_to` trackers (`report`). A finished run is not
    sampled again: the figures are recomputed from its rows (so another --by costs nothing)."""
    out = out or sys.stdout
    report_to = parse_report_to(report_to)
    check_installed(report_to)  # before any sampling
    stage = EvalStage(cfg)
    try:
        result = execute(stage, prompts, output, overwrite=overwrite, limit=limit, shard_size=shard_size,
                         progress=progress, executor=executor)
    finally:
        stage.close()
    table = ds.load_table(output)
    wanted = ["prompt_id", "sample_idx", "rewards", "reward_info", "reward", "answer_key", *cfg.by]
    rows = table.select([c for c in wanted if c in table.column_names]).to_pylist()
    if not rows:
        raise UserError(f"{prompts}: no prompts to evaluate")
    ks = default_ks(cfg.generate.sampling.n)
    names = stage.label.names
    figures = eval_summary(rows, names, stage.correct, ks, cfg.by)
    stats = result.manifest.get("stats", {})
    tokens, seconds = int(stats.get("tokens", 0)), float(stats.get("gen_seconds", 0.0))
    gen = cfg.generate
    summary = {
        "model": gen.model, "engine": gen.engine, "prompts": str(prompts), "output": str(output),
        "config": {"sampling": gen.sampling.to_dict(), "template": gen.template, "chat": gen.chat,
                   "system": gen.system, "rewards": list(cfg.label.rewards), "weights": stage.label.weights,
                   "correct_reward": stage.correct, "correct_at": CORRECT_AT, "by": list(cfg.by), "limit": limit},
        "ks": ks,
        **figures,
        "generation": {"tokens": tokens, "gen_seconds": round(seconds, 2),
                       "tokens_per_s": round(tokens / seconds, 1) if seconds else None},
    }
    if "tool_calls" in table.column_names:  # multi-turn rollouts (--env): how the policy used its tools
        summary["tools"] = tool_figures(table.select(["turns", "tool_calls", "tool_errors", "finish_reason"]).to_pylist())
        summary["config"].update(env=gen.env, max_turns=gen.max_turns, env_options=gen.env_options)
        print(format_tools(summary["tools"]), file=out)
    if plot_png:
        title = f"{Path(gen.model).name}: n={gen.sampling.n}, T={gen.sampling.temperature:g}, correct={stage.correct}"
        summary["plot"] = str(plot(figures, ks, Path(output) / "eval.png", title))
    atomic_write_json(Path(output) / "eval.json", summary)
    print(format_table(figures, names, ks), file=out)
    if report_to:
        samples = table.select([c for c in ("prompt", "completion", "reward") if c in table.column_names])
        report(summary, samples.slice(0, TABLE_ROWS).to_pylist(), report_to, output)
    return EvalResult(str(output), summary, result.skipped)


def tool_figures(rows: list[dict]) -> dict[str, Any]:
    """Tool use over the trajectories: the share that made at least one tool call, the share of calls that failed,
    mean turns and calls, and how the trajectories ended."""
    calls = sum(int(r["tool_calls"] or 0) for r in rows)
    errors = sum(int(r["tool_errors"] or 0) for r in rows)
    n = len(rows)
    return {"trajectories": n,
            "tool_call_rate": round(sum(1 for r in rows if r["tool_calls"]) / n, 4) if n else None,
            "tool_error_rate": round(errors / calls, 4) if calls else None,
            "tool_calls": calls, "tool_errors": errors,
            "mean_turns": round(sum(int(r["turns"] or 0) for r in rows) / n, 3) if n else None,
            "finish_reasons": dict(Counter(r["finish_reason"] for r in rows))}


def format_tools(t: dict[str, Any]) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    ends = ", ".join(f"{k} {v}" for k, v in sorted(t["finish_reasons"].items()))
    return (f"tools: {pct(t['tool_call_rate'])} of {t['trajectories']} trajectories called a tool; "
            f"{t['tool_calls']} calls, {pct(t['tool_error_rate'])} failed; {t['mean_turns']} turns on average; "
            f"ended: {ends}")


def scalar_figures(summary: dict[str, Any]) -> dict[str, float]:
    """eval.json's numbers as one flat record: the overall figures under their names (`accuracy`, `pass@4`,
    `reward`, `reward_math`, `null`...), each --by group's metrics as `COLUMN/VALUE/METRIC`, and the generation
    rate."""
    def figures(g: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        rec = {f"{prefix}{k}": g.get(k) for k in ("prompts", "completions", "accuracy")}
        rec.update({f"{prefix}{k}": v for k, v in g.items() if k.startswith(("pass@", "maj@"))})
        rec[f"{prefix}reward"] = g["reward"]["mean"]
        rec.update({f"{prefix}reward_{name}": r["mean"] for name, r in g["rewards"].items()})
        rec[f"{prefix}null"] = g["null"]["completions"]
        return rec

    rec = figures(summary["overall"])
    for column, groups in summary["by"].items():
        for value, g in groups.items():
            rec.update({k: v for k, v in figures(g, f"{column}/{value}/").items()
                        if k.rsplit("/", 1)[1].startswith(("accuracy", "pass@", "maj@"))})
    rec["tokens_per_s"] = summary["generation"]["tokens_per_s"]
    for k in ("tool_call_rate", "tool_error_rate", "mean_turns"):
        rec[k] = (summary.get("tools") or {}).get(k)
    return {k: v for k, v in rec.items() if v is not None}


def report(summary: dict[str, Any], samples: list[dict], report_to: list[str], output: str | Path) -> None:
    """The evaluation to the trackers, under OUTPUT like every run: the figures as `eval/...` at step 0, the
    config (model, engine, prompts, sampling, rewards) and a table of the first completions."""
    config = {k: summary[k] for k in ("model", "engine", "prompts")} | summary["config"]
    trackers = Trackers(report_to, output, config)
    try:
        trackers.log({"split": "eval", "step": 0, **scalar_figures(summary)})
        trackers.log_table("eval/samples", table_rows(samples), 0)
    finally:
        trackers.finish()


# -------------------------------------------------------------------------------------------------- CLI
LABEL_OPTIONS = ("weights", "workers", "gold_column", "null_on_timeout")  # the label stage's options eval takes


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options are the fields of `EvalConfig` and of what it holds (`SamplingConfig`, `GenerateConfig`, the
    reward options of `LabelConfig`); eval's own defaults (greedy, the `math` reward) and the run's options (where
    the prompts are, the output, the limit) are added here."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("Greedy accuracy: --n 1 --temperature 0 (the default). Sampled: --n K --temperature T gives "
                "pass@k and maj@k for k = 1, 2, 4, ... K. Metrics and outputs: docs/eval.md.")
    p.add_argument("--prompts", required=True,
                   help="prompts with gold answers: JSONL, Parquet, dataset directory or hub name")
    p.add_argument("--output", required=True, help="dataset directory: per-completion rows, eval.json, eval.png")
    p.add_argument("--reward", dest="rewards", action="append", default=[], metavar="SPEC",
                   help="a reward, as `prefsmith label` takes it (repeat for several; default: math)")
    add_generate_options(p)
    p.set_defaults(temperature=0.0, n=1)  # greedy accuracy unless asked
    add_dataclass_options(p, LabelConfig, only=LABEL_OPTIONS)
    add_dataclass_options(p, EvalConfig, skip=("generate", "label"))
    p.add_argument("--limit", type=int, help="evaluate only the first N prompts")
    p.add_argument("--shard-size", type=int, default=None,
                   help=f"prompts per output shard, the unit of resume (default {EvalStage.shard_size})")
    p.add_argument("--no-plot", action="store_true", help="do not write eval.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config or input")
    add_report_to_argument(p)
    add_executor_arguments(p)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    if args.n > 1 and args.temperature == 0:
        raise UserError(f"--n {args.n} with --temperature 0 samples the same greedy completion {args.n} times; "
                        "give --temperature (e.g. 1.0) for pass@k / maj@k, or use --n 1")
    gen = generate_config(args)
    label = from_args(LabelConfig, args, only=LABEL_OPTIONS + ("threads",), rewards=args.rewards or ["math"])
    return from_args(EvalConfig, args, generate=gen, label=label, by=list(dict.fromkeys(args.by)))


def run(args: argparse.Namespace) -> int:
    evaluate(config_from_args(args), args.prompts, args.output, overwrite=args.overwrite, limit=args.limit,
             shard_size=args.shard_size, progress=not args.no_progress, plot_png=not args.no_plot,
             executor=executor_config(args), report_to=args.report_to)
    return 0
