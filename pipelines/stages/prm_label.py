"""`prefsmith prm-label`: step labels for process reward models, from Monte Carlo continuations.

    prefsmith prm-label --input labeled/ --output steps/ --model default --rollouts-per-step 8 --method mc

A row's completion is cut into steps (`--step-sep`, or `--step-regex`; `rewards.prm.split_steps`). Prefix i is
the prompt, rendered with the model's chat template once, followed by the completion's own text through step
i and its delimiter; the policy continues it K times as the same assistant message, each continuation running
to the end of the solution (EOS or `--max-new-tokens`), and each whole solution (prefix + continuation) is
scored by `--reward` through the label stage's reward loading, so "correct" (reward >= `--min-reward`) means
what it means in `label`. The last step is labeled by the row's own completion (no rollouts: nothing is left
to continue). Methods (docs/prm.md has their cost):

- `mc` (Math-Shepherd): every prefix gets K continuations; soft label = correct / scored, hard label = any
  correct (or soft >= `--hard-threshold`);
- `binary-search` (OmegaPRM): a correct completion is good throughout (no rollouts); otherwise a binary
  search for the first prefix from which no continuation is correct, at most ceil(log2 S) evaluated
  prefixes (+1: the completion itself): steps before it are good, it and later ones bad; the evaluated
  prefixes keep their soft values, the others' are null.

Output rows keep every input column and add TRL's stepwise-supervision columns `completions` (the steps),
`labels` (bool per step), plus `soft_labels` (float or null per step), `first_error_step` (index of the first
bad step, null if none), `rollouts_used`, `rollout_tokens`, `prefixes_evaluated`, `null_rollouts`. A
continuation the reward could not score (null) is counted in `null_rollouts` and left out of the fraction,
never guessed; a row that cannot be labeled (its completion unscored, every continuation of a prefix null, no
steps, more than `--max-steps`) goes to `OUTPUT/unlabeled/` with the reason in `label_info`. The manifest's
`prm` block totals rollouts and tokens per labeled step.

A continuation's seed is `hash(seed, row id, prefix length)`: the same prefix gets the same K continuations
under either method, on any shard layout, and after a resume.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.core.options import add_dataclass_options, from_args
from pipelines.core.runner import Shard, StageResult, execute, update_manifest
from pipelines.core.stage import Stage
from pipelines.core.threads import add_threads_argument
from pipelines.engines.base import Prompt, SamplingConfig
from pipelines.errors import UserError
from pipelines.executors import add_executor_arguments, executor_config
from pipelines.stages.generate import (GenerateConfig, _has_chat_template, _parse_options, build_prompt,
                                       chat_template_for, engine_model, prompt_ids, prompt_seed)
from pipelines.stages.label import LabelConfig, label_rows, load_rewards
from rewards.chat import completion_text, render_chat
from rewards.prm import split_steps

METHODS = ("mc", "binary-search")
TEXT_ENGINES = ("openai",)  # the server tokenizes: prefixes go as text to /v1/completions


@dataclass
class PRMLabelConfig:
    model: str = field(metadata={"help": "the policy that continues prefixes: `default`, a folder, or the served "
                                         "name (--engine openai)"})
    engine: str = field(default="hf", metadata={"choices": ("hf", "vllm", "openai")})
    method: str = field(default="mc", metadata={"choices": METHODS})
    rollouts_per_step: int = field(default=8, metadata={"metavar": "K",
                                                        "help": "continuations per evaluated prefix"})
    step_sep: str = field(default="\n\n", metadata={
        "help": "step separator (default a blank line); `\\n` escapes work on the command line"})
    step_regex: str | None = field(default=None, metadata={"metavar": "RE",
                                                           "help": "split steps at matches of RE instead"})
    reward: str = "math"  # reward spec that decides a continuation (as in label)
    min_reward: float = 1.0  # a continuation is correct when its reward >= this
    # mc: hard label = soft >= this (None: any continuation correct)
    hard_threshold: float | None = field(default=None, metadata={
        "help": "mc: a step is good when this fraction of continuations is correct (default: any)"})
    max_new_tokens: int = 512  # budget of one continuation
    max_steps: int | None = field(default=None, metadata={"metavar": "S",
                                                          "help": "rows with more steps are not labeled (unlabeled/)"})
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    prompt_column: str = "prompt"
    chat: str = field(default="auto", metadata={"choices": ("auto", "always", "never")})
    batch_size: int = 16  # prefixes per engine call (does not change the output)
    # --engine-option KEY=VALUE items, --base-url and --chat-template (by hand: a dict has no flag)
    engine_options: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None  # hf: torch CPU threads, None auto (docs/engines.md, Threads); not in the fingerprint

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.rollouts_per_step < 1:
            raise UserError(f"--rollouts-per-step must be >= 1, got {self.rollouts_per_step}")
        if self.hard_threshold is not None and (self.method != "mc" or not 0.0 < self.hard_threshold <= 1.0):
            raise UserError("--hard-threshold is a fraction in (0, 1] and applies to --method mc only "
                            "(binary-search's rule is OmegaPRM's: no continuation correct)")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max-steps must be >= 1, got {self.max_steps}")
        if not self.step_regex and not self.step_sep:
            raise UserError("--step-sep is empty: give a separator or --step-regex")

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(n=self.rollouts_per_step, temperature=self.temperature, top_p=self.top_p,
                              max_new_tokens=self.max_new_tokens, seed=self.seed)


@dataclass
class _Row:
    """One solution being labeled: its steps and what its evaluated prefixes returned."""

    row: dict
    id: str
    text: str
    steps: list  # rewards.prm.Step
    base: Any  # the rendered prompt: token ids (hf, vllm) or text (openai)
    final: bool = False  # the completion itself is correct
    counts: dict = field(default_factory=dict)  # prefix length -> (correct, scored)
    rollouts: int = 0
    tokens: int = 0
    no_ids: int = 0  # continuations whose token ids the engine could not give (tokens unknown)
    nulls: int = 0
    null_reason: str | None = None  # set when a prefix had no scored continuation: the row is unlabeled
    lo: int = 1  # binary search: prefixes shorter than lo are known good, prefix hi known bad
    hi: int = 0


class Judge:
    """Whole solutions -> (correct or None, reason), through `label_rows` with the stage's reward spec."""

    def __init__(self, fns, names, weights, min_reward: float) -> None:
        self.fns, self.names, self.weights, self.min_reward = fns, names, weights, min_reward

    def __call__(self, rows: list[dict], texts: list[str], own: bool = False) -> list[tuple[bool | None, str]]:
        """`own`: the texts are the rows' own completions (their `completion_ids` still describe them)."""
        fresh = {} if own else {"completion_ids": None}
        scored = label_rows([{**r, "completion": t, **fresh} for r, t in zip(rows, texts)], self.fns, self.names,
                            self.weights)
        out = []
        for r in scored:
            reason = "; ".join(f"{k}: {v}" for k, v in r["reward_info"].items())
            out.append((None if r["reward"] is None else r["reward"] >= self.min_reward, reason))
        return out


def _base_prompt(engine, prompt: Prompt) -> Any:
    """The prompt as the engine continues it, rendered once: token ids, or text for a server."""
    if engine.name not in TEXT_ENGINES:
        return engine.prompt_ids(prompt)
    if isinstance(prompt, str):
        return prompt
    if engine.tokenizer is None:
        raise UserError(f"--engine {engine.name} needs the served model's tokenizer to render the chat template "
                        "before the steps: pass --engine-option tokenizer=DIR (or --chat never for text prompts)")
    return render_chat(engine.tokenizer, prompt, add_generation_prompt=True)


def _prefix(engine, st: _Row, i: int) -> Prompt:
    text = st.text[: st.steps[i - 1].end]
    if isinstance(st.base, str):
        return st.base + text
    return st.base + list(engine.tokenizer(text, add_special_tokens=False)["input_ids"])


def _evaluate(engine, judge: Judge, cfg: PRMLabelConfig, todo: list[tuple[_Row, int]]) -> float:
    """K continuations of each (row, prefix length), judged as whole solutions; returns generation seconds."""
    seconds, sampling = 0.0, cfg.sampling
    for b in range(0, len(todo), cfg.batch_size):
        batch = todo[b: b + cfg.batch_size]
        t0 = time.time()
        results = engine.generate([_prefix(engine, st, i) for st, i in batch], sampling,
                                  [prompt_seed(cfg.seed, f"{st.id}/{i}") for st, i in batch])
        seconds += time.time() - t0
        rows, texts = [], []
        for (st, i), samples in zip(batch, results):
            head = st.text[: st.steps[i - 1].end]
            for s in samples:
                rows.append(st.row)
                texts.append(head + s.text)
                st.rollouts += 1
                st.tokens += len(s.token_ids or [])
                st.no_ids += s.token_ids is None
        verdicts = iter(judge(rows, texts))
        for st, i in batch:
            got = [next(verdicts) for _ in range(sampling.n)]
            scored = [ok for ok, _ in got if ok is not None]
            st.nulls += len(got) - len(scored)
            st.counts[i] = (sum(scored), len(scored))
            if not scored and st.null_reason is None:
                st.null_reason = f"null_rollouts: all {len(got)} continuations of prefix {i} unscored ({got[0][1]})"
    return seconds


def _cost(st: _Row | None) -> dict[str, int]:
    """What labeling a row spent (zeros for a row set aside before any rollout)."""
    if st is None:
        return {"rollouts_used": 0, "rollout_tokens": 0, "null_rollouts": 0, "prefixes_evaluated": 0}
    return {"rollouts_used": st.rollouts, "rollout_tokens": st.tokens, "null_rollouts": st.nulls,
            "prefixes_evaluated": 1 + len(st.counts)}


def prm_label_rows(engine, judge: Judge, rows: list[dict], cfg: PRMLabelConfig, ids: list[str], use_chat: bool
                   ) -> tuple[list[dict], list[dict], dict[str, float]]:
    """The row-level core of `prm-label`: (labeled rows, unlabeled rows with `label_info`, counters)."""
    gen_cfg = GenerateConfig(model=cfg.model, prompt_column=cfg.prompt_column, chat=cfg.chat)
    unlabeled, states = [], []
    for row, rid in zip(rows, ids):
        text = completion_text(row["completion"])
        steps = split_steps(text, cfg.step_sep, cfg.step_regex)
        if not steps:
            unlabeled.append({**row, "label_info": "no_steps", **_cost(None)})
        elif cfg.max_steps is not None and len(steps) > cfg.max_steps:
            unlabeled.append({**row, "label_info": f"too_many_steps: {len(steps)} > --max-steps {cfg.max_steps}",
                              **_cost(None)})
        else:
            states.append(_Row(row, rid, text, steps, _base_prompt(engine, build_prompt(row, gen_cfg, use_chat))))
    finals = judge([st.row for st in states], [st.row["completion"] for st in states], own=True) if states else []
    ready = []
    for st, (ok, reason) in zip(states, finals):
        if ok is None:
            unlabeled.append({**st.row, "label_info": f"completion_unscored: {reason}", **_cost(st)})
        else:
            st.final, st.hi = ok, len(st.steps)
            ready.append(st)

    seconds = 0.0
    if cfg.method == "mc":
        seconds += _evaluate(engine, judge, cfg, [(st, i) for st in ready for i in range(1, len(st.steps))])
    else:
        active = [st for st in ready if not st.final and st.lo < st.hi]
        while active:  # one round: every unfinished row evaluates its midpoint; each round halves [lo, hi]
            todo = [(st, (st.lo + st.hi) // 2) for st in active]
            seconds += _evaluate(engine, judge, cfg, todo)
            for st, mid in todo:
                correct, scored = st.counts[mid]
                if scored and correct:
                    st.lo = mid + 1
                elif scored:
                    st.hi = mid
            active = [st for st in active if st.null_reason is None and st.lo < st.hi]

    out, steps_labeled = [], 0
    for st in ready:
        extra = _cost(st)
        if st.null_reason is not None:
            unlabeled.append({**st.row, "label_info": st.null_reason, **extra})
            continue
        n = len(st.steps)
        soft: list[float | None] = [None] * n
        for i, (correct, scored) in st.counts.items():
            soft[i - 1] = correct / scored
        soft[-1] = 1.0 if st.final else 0.0
        if cfg.method == "mc":
            counts = [st.counts.get(i) for i in range(1, n)]
            hard = [(c >= 1) if cfg.hard_threshold is None else (c / s >= cfg.hard_threshold) for c, s in counts]
            labels = [*hard, st.final]
        else:
            first_bad = n if st.final else st.hi - 1  # 0-based index of the first bad step
            labels = [j < first_bad for j in range(n)]
        first_error = next((j for j, ok in enumerate(labels) if not ok), None)
        steps_labeled += n
        out.append({**st.row, "completions": [s.text for s in st.steps], "labels": labels, "soft_labels": soft,
                    "first_error_step": first_error, **extra})
    stats = {"rows": len(rows), "labeled_rows": len(out), "unlabeled_rows": len(unlabeled),
             "labeled_steps": steps_labeled, "rollouts": sum(st.rollouts for st in states),
             "rollout_tokens": sum(st.tokens for st in states),
             "rollouts_without_token_ids": sum(st.no_ids for st in states),
             "null_rollouts": sum(st.nulls for st in states),
             "prefix_evaluations": sum(len(st.counts) for st in states), "gen_seconds": seconds}
    return out, unlabeled, stats


class PRMLabelStage(Stage):
    """`prm-label` as a stage: the engine and the reward functions are made where the shards run."""

    name = "prm-label"
    shard_size = 32
    _runtime = ("engine", "fns")

    def __init__(self, cfg: PRMLabelConfig):
        self.cfg = cfg
        self.label_cfg = LabelConfig(rewards=[cfg.reward], threads=cfg.threads)
        fns, self.names, self.weights = load_rewards(self.label_cfg)  # every spec mistake before any work
        self.needs = list(dict.fromkeys(c for f in fns for c in f.required))
        self.fns = fns  # used as they are when the stage runs in this process
        self.engine = None
        self.num_gpus = 1.0 if cfg.engine == "vllm" else 0.0

    def config(self) -> dict:
        config = asdict(self.cfg)
        config.pop("batch_size")
        config.pop("threads")
        config["engine_options"] = {k: v for k, v in self.cfg.engine_options.items() if k != "api_key"}
        return config

    def required(self) -> list[str]:
        return [self.cfg.prompt_column, "completion", *self.needs]

    def setup(self) -> None:
        from pipelines.engines import load_engine

        if self.fns is None:
            self.fns, _, _ = load_rewards(self.label_cfg)
        self.engine = load_engine(self.cfg.engine, self.cfg.model, threads=self.cfg.threads, **self.cfg.engine_options)

    def process(self, rows: list[dict], shard: Shard) -> dict:
        use_chat = _has_chat_template(self.engine) if self.cfg.chat == "auto" else self.cfg.chat == "always"
        judge = Judge(self.fns, self.names, self.weights, self.cfg.min_reward)
        out, unlabeled, stats = prm_label_rows(self.engine, judge, rows, self.cfg, prompt_ids(rows, shard.start), use_chat)
        shard.tick(len(rows))
        return {"rows": out, "unlabeled": unlabeled, "stats": stats}

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        for f in self.fns or []:
            f.close()
        self.fns = None


def totals(stats: dict, method: str) -> dict[str, Any]:
    """The manifest's `prm` block: the run's cost per labeled step."""
    steps = stats.get("labeled_steps", 0)
    seconds = float(stats.get("gen_seconds", 0.0))
    tokens = int(stats.get("rollout_tokens", 0))
    per = (lambda x: round(x / steps, 3) if steps else None)
    return {"method": method, "labeled_rows": stats.get("labeled_rows", 0),
            "unlabeled_rows": stats.get("unlabeled_rows", 0), "labeled_steps": steps,
            "rollouts": stats.get("rollouts", 0), "rollout_tokens": tokens,
            "null_rollouts": stats.get("null_rollouts", 0), "prefix_evaluations": stats.get("prefix_evaluations", 0),
            "rollouts_without_token_ids": stats.get("rollouts_without_token_ids", 0),
            "rollouts_per_labeled_step": per(stats.get("rollouts", 0)), "tokens_per_labeled_step": per(tokens),
            "gen_seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1) if seconds else None}


def prm_label(cfg: PRMLabelConfig, input: str, output: str, *, overwrite: bool = False, shard_size: int | None = None,
              limit: int | None = None, progress: bool = True, executor=None) -> StageResult:
    """Run the stage (Python API of `prefsmith prm-label`); the `prm` totals go to the manifest and `extra`."""
    stage = PRMLabelStage(cfg)
    try:
        result = execute(stage, input, output, overwrite=overwrite, shard_size=shard_size, limit=limit,
                         progress=progress, executor=executor)
    finally:
        stage.close()  # the reward functions the driver built (a replica closes its own)
    result.extra["prm"] = totals(result.manifest.get("stats", {}), cfg.method)
    if not result.skipped:
        update_manifest(output, prm=result.extra["prm"])
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options are `PRMLabelConfig`'s fields; written by hand: the run's (input, output, shard size, limit,
    overwrite, executor), `--threads`, and `--base-url`, `--chat-template` and `--engine-option`, which make up
    the `engine_options` dict."""
    p.add_argument("--input", required=True, help="rows with prompt, completion and the reward's gold columns (answer)")
    p.add_argument("--output", required=True, help="dataset directory to write")
    add_dataclass_options(p, PRMLabelConfig, only=("model", "engine"))
    p.add_argument("--base-url", help="OpenAI-compatible server URL (engine openai)")
    add_dataclass_options(p, PRMLabelConfig, skip=("engine_options", "threads"))  # every other field
    p.add_argument("--chat-template", default=None, metavar="FILE.jinja",
                   help="Jinja chat template file used instead of the model's own (hf, vllm)")
    p.add_argument("--shard-size", type=int, default=None,
                   help=f"rows per output shard, the unit of resume (default {PRMLabelStage.shard_size})")
    p.add_argument("--limit", type=int, help="use only the first N rows")
    p.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra engine option (JSON value), e.g. tokenizer=\"path\" for --engine openai")
    add_threads_argument(p)
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config or input")
    add_executor_arguments(p)


def _unescape(text: str) -> str:
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def config_from_args(args: argparse.Namespace) -> PRMLabelConfig:
    """The PRMLabelConfig `add_arguments`' flags give (`from_args`), checked: the model resolved for its engine,
    the engine options (`--engine-option`, `--base-url`, `--chat-template`) gathered, `--step-sep` unescaped."""
    options = _parse_options(args.engine_option)
    model = engine_model(args.engine, args.model, args.base_url, options)
    if args.chat_template:  # goes to the engine, and into the output's fingerprint
        options["chat_template"] = chat_template_for(args.engine, args.chat_template)
    return from_args(PRMLabelConfig, args, model=model, step_sep=_unescape(args.step_sep), engine_options=options)


def run(args: argparse.Namespace) -> int:
    result = prm_label(config_from_args(args), args.input, args.output, overwrite=args.overwrite,
                       shard_size=args.shard_size, limit=args.limit, executor=executor_config(args))
    print(json.dumps(result.extra["prm"]), file=sys.stdout)
    return 0
