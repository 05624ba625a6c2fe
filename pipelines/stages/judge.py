"""`prefsmith judge`: an LLM judge over a dataset, resumable like every stage (docs/judges.md).

- `--mode pointwise`: every row (`prompt`, `completion`) gets `judge_score` (a number on the rubric's scale,
  or null), `judge_reason` (`ok`, `unparseable`, `no_reference`), `judge_raw` (the judge's last reply) and
  `judge_tokens`.
- `--mode pairwise`: each prompt's completions (rows with the same `prompt_id`, identical texts once) are
  judged pair by pair, in both orders (judges/pairwise.py, the swap rule). A consistent verdict is a
  preference row: `prompt`, `chosen`, `rejected`, `score_chosen`, `score_rejected` (each completion's win rate
  over its consistent comparisons, ties counting one half), `prompt_id`, `chosen_id`, `rejected_id`,
  `judge_verdicts` (both orders: which id was A, which B, the verdict, the raw reply), `judge`, `rubric`, plus
  the prompt's shared columns. Ties, position-inconsistent and unparseable pairs go to `DIR/skipped/` with
  their reason.

The judge is any chat model: `--engine openai` (default: any OpenAI-compatible server, through
`pipelines/engines/openai_client.py`: `--concurrency` requests at once, retries, and an on-disk cache of
every reply, so a killed run resumes without asking again what was already answered), or `hf` / `vllm` (a local
model through `pipelines/engines/chat.py`). The fingerprint holds the mode, model, engine, rubric text and
sampling; the URL, concurrency, cache folder, API-key variable and --threads may change on resume.

`--reward judge:RUBRIC@URL#MODEL` (in `label` and `train grpo`) is the pointwise judge as a reward
(`judge_reward`).
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from judges.pairwise import PairwiseJudge
from judges.pointwise import PointwiseJudge
from judges.protocol import ChatModel
from judges.rubrics import Rubric, RubricError, builtin_rubrics, load_rubric
from judges.verdicts import JudgeConfig
from pipelines.builders.samples import (as_completion, context, group_rows, normalize_text, prompt_columns, read_side,
                                        row_id)
from pipelines.core import dataset as ds
from pipelines.core.options import add_dataclass_options, from_args
from pipelines.core.runner import Shard, execute, update_manifest
from pipelines.core.stage import Stage
from pipelines.core.threads import add_threads_argument
from pipelines.engines.openai_client import OpenAIChat, OpenAIClient, default_chat_cache
from pipelines.errors import UserError
from pipelines.executors import add_executor_arguments, executor_config
from rewards.chat import completion_text
from rewards.plugins import RewardFn, RewardSpecError

MODES = ("pointwise", "pairwise")
ENGINES = ("openai", "hf", "vllm")


@dataclass
class ChatModelConfig:
    """Which chat model a stage talks to and how it reaches it: the fields `chat_model` reads, shared by `judge`
    and `critique-revise` (their options: `add_model_arguments`). All but `model` and `engine` stay out of the
    fingerprint: a resume may change them."""
    model: str = field(metadata={"help": "the served model name (openai) or a local folder (hf, vllm)"})
    engine: str = field(default="openai", metadata={"choices": ENGINES})
    base_url: str | None = None  # OpenAI-compatible server URL (default $OPENAI_BASE_URL)
    concurrency: int = 8  # requests in flight at once
    # where every reply is cached, for resume; None: no cache (--no-cache)
    cache_dir: str | None = field(default_factory=lambda: str(default_chat_cache()), metadata={
        "help": "where every reply is cached, for resume (default $PREFSMITH_CHAT_CACHE, else "
                "~/.cache/prefsmith/chat)"})
    api_key_env: str | None = field(default=None, metadata={
        "metavar": "NAME", "help": "environment variable holding the API key (default OPENAI_API_KEY)"})
    max_retries: int = 5  # retries per request, on 429 / 5xx / timeouts / connection errors
    backoff_s: float = 1.0  # first retry wait in seconds, doubled each time (jittered)
    timeout_s: float = 600.0  # seconds one request may take
    threads: int | None = None  # hf: torch CPU threads, None auto (docs/engines.md, Threads)
    chat_template: str | None = field(default=None, metadata={
        "metavar": "FILE.jinja", "help": "hf, vllm: a Jinja chat template file used instead of the model's own"})
    shard_size: int | None = None  # input rows per shard, the unit of resume (None: the stage's)


@dataclass
class JudgeStageConfig(ChatModelConfig):
    mode: str = field(default="pointwise", metadata={"choices": MODES})
    rubric: Rubric = field(default_factory=lambda: load_rubric("helpfulness"))  # --rubric NAME|FILE (by hand)
    sampling: JudgeConfig = field(default_factory=JudgeConfig)
    reference_column: str = "answer"  # gold answers for reference-guided rubrics
    max_pairs: int | None = None  # pairwise: pairs judged per prompt (default: every pair)


def run_settings(cfg: Any) -> dict[str, Any]:
    """How a chat stage reached its model (the config fields `chat_model` reads), as the manifest records it
    beside the fingerprinted config: never the API key, only its variable's name."""
    return {"base_url": cfg.base_url, "concurrency": cfg.concurrency, "cache_dir": cfg.cache_dir,
            "api_key_env": cfg.api_key_env or "OPENAI_API_KEY", "max_retries": cfg.max_retries,
            "backoff_s": cfg.backoff_s, "timeout_s": cfg.timeout_s, "threads": cfg.threads}


def chat_model(cfg: Any) -> ChatModel:
    """The chat model a config names (a `ChatModelConfig`: `JudgeStageConfig`, `CritiqueStageConfig`), checked
    (server reachable, key accepted, model listed) before any work."""
    if cfg.engine == "openai":
        base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise UserError("--engine openai needs --base-url (e.g. http://127.0.0.1:8000/v1) or $OPENAI_BASE_URL")
        client = OpenAIClient(base_url, api_key_env=cfg.api_key_env, timeout_s=cfg.timeout_s,
                              max_retries=cfg.max_retries, backoff_s=cfg.backoff_s)
        client.check(cfg.model)
        return OpenAIChat(client, cfg.model, concurrency=cfg.concurrency, cache_dir=cfg.cache_dir)
    from pipelines.engines import load_engine
    from pipelines.engines.chat import EngineChat

    template = {"chat_template": cfg.chat_template} if cfg.chat_template else {}
    return EngineChat(load_engine(cfg.engine, cfg.model, threads=cfg.threads, **template))


def _counts(model: Any) -> Counter:
    """Requests / retries / cached replies so far, when the model is an OpenAIChat (hf/vllm count none)."""
    if not isinstance(model, OpenAIChat):
        return Counter()
    c = model.client.counts
    return Counter({"requests": c["requests"], "retries": c["retries"], "replies_sent": model.counts["sent"],
                    "replies_cached": model.counts["cached"], "replies_refused": model.counts["refused"]})


# ---------------------------------------------------------------------------------------------- row cores
def pointwise_rows(judge: PointwiseJudge, rows: list[dict]) -> list[dict]:
    """Rows + judge_score / judge_reason / judge_raw / judge_tokens."""
    refs = [r.get(judge.reference_column) for r in rows] if judge.rubric.reference else None
    results = judge.judge([r["prompt"] for r in rows], [r["completion"] for r in rows], refs)
    return [{**row, "judge_score": res.score, "judge_reason": res.reason, "judge_raw": res.info.get("raw"),
             "judge_tokens": res.info.get("tokens")} for row, res in zip(rows, results)]


def pairwise_rows(judge: PairwiseJudge, rows: list[dict], max_pairs: int | None = None,
                  reference_column: str = "answer") -> dict[str, list[dict]]:
    """Each prompt's completions (consecutive rows with one `prompt_id`) -> preference rows, plus the pairs
    skipped with their reason (see module docstring)."""
    pairs: list[tuple[list[dict], dict, dict]] = []  # (group, first, second)
    for group in group_rows(rows):
        seen, distinct = set(), []
        for pos, row in enumerate(group):
            text = normalize_text(completion_text(row["completion"]))
            if text not in seen:
                seen.add(text)
                order = row["sample_idx"] if row.get("sample_idx") is not None else pos
                distinct.append({**row, "id": row_id(row, order)})
        combos = list(itertools.combinations(distinct, 2))
        pairs += [(group, a, b) for a, b in combos[:max_pairs]]
    refs = [g[0].get(reference_column) for g, _, _ in pairs] if judge.rubric.reference else None
    results = judge.judge([a["prompt"] for _, a, _ in pairs], [a["completion"] for _, a, _ in pairs],
                          [b["completion"] for _, _, b in pairs], refs)

    wins: Counter = Counter()
    games: Counter = Counter()
    for (_, a, b), res in zip(pairs, results):
        if res.score is not None:
            wins[a["id"]] += res.score
            wins[b["id"]] += 1.0 - res.score
            games[a["id"]] += 1
            games[b["id"]] += 1
    rate = lambda i: wins[i] / games[i]  # noqa: E731

    out, skipped = [], []
    for (group, a, b), res in zip(pairs, results):
        verdicts = res.info.get("verdicts") or [None, None]
        raw = res.info.get("raw") or [None, None]
        orders = [{"a": a["id"], "b": b["id"], "winner": verdicts[0], "raw": raw[0]},
                  {"a": b["id"], "b": a["id"], "winner": verdicts[1], "raw": raw[1]}]
        if res.reason not in ("first", "second"):
            skipped.append({"prompt_id": a.get("prompt_id"), "first_id": a["id"], "second_id": b["id"],
                            "reason": res.reason, "judge_verdicts": orders})
            continue
        chosen, rejected = (a, b) if res.reason == "first" else (b, a)
        prompt = context(a)  # the judge read the question; the pair trains where the policy sampled
        out.append({"prompt": prompt, "chosen": as_completion(prompt, chosen["completion"]),
                    "rejected": as_completion(prompt, rejected["completion"]),
                    "score_chosen": rate(chosen["id"]), "score_rejected": rate(rejected["id"]),
                    "prompt_id": a.get("prompt_id"), "chosen_id": chosen["id"], "rejected_id": rejected["id"],
                    "judge_verdicts": orders, "judge": res.info.get("judge"), "rubric": res.info.get("rubric"),
                    **prompt_columns(group)})
    return {"rows": out, "skipped": skipped}


# ---------------------------------------------------------------------------------------------- the stage
class ChatStage(Stage):
    """A stage that talks to a chat model (`judge`, `critique-revise`): the driver builds the model once
    (checking the server) and uses it when shards run here; a replica elsewhere builds its own in `setup`.
    Subclasses set `self.cfg` (with the fields `chat_model` reads) and `self.model`."""

    shard_size = 64
    _runtime = ("model",)

    def setup(self) -> None:
        if self.model is None:
            self.model = chat_model(self.cfg)

    def close(self) -> None:
        if self.model is not None:
            self.model.close()
            self.model = None


def run_chat_stage(stage: ChatStage, input: str, output: str, *, overwrite: bool, progress: bool, executor):
    """Execute a chat stage and close its model; a run that did work records in the output's manifest how it
    reached the model (`run_settings`)."""
    try:
        result = execute(stage, input, output, shard_size=stage.cfg.shard_size, overwrite=overwrite,
                         progress=progress, executor=executor)
    finally:
        stage.close()
    if not result.skipped:
        update_manifest(output, run=run_settings(stage.cfg))
    return result


class JudgeStage(ChatStage):
    """`judge` as a stage."""

    name = "judge"

    def __init__(self, cfg: JudgeStageConfig, model: ChatModel | None = None):
        if cfg.mode not in MODES:
            raise UserError(f"--mode {cfg.mode}: choose one of {', '.join(MODES)}")
        if cfg.max_pairs is not None and cfg.max_pairs < 1:
            raise UserError(f"--max-pairs must be >= 1, got {cfg.max_pairs}")
        self.cfg = cfg
        self.group_by = "prompt_id" if cfg.mode == "pairwise" else None
        self.model = model

    def config(self) -> dict:
        c = self.cfg
        return {"mode": c.mode, "model": c.model, "engine": c.engine, "rubric": c.rubric.to_dict(),
                "sampling": asdict(c.sampling), "reference_column": c.reference_column,
                **({"max_pairs": c.max_pairs} if c.mode == "pairwise" else {})}

    def required(self) -> list[str]:
        return ["prompt", "completion"] + (["prompt_id"] if self.cfg.mode == "pairwise" else [])

    def present(self) -> list[str]:
        return [self.cfg.reference_column] if self.cfg.rubric.reference else []

    def process(self, rows: list[dict], shard: Shard) -> dict:
        before = _counts(self.model)
        if self.cfg.mode == "pointwise":
            judge = PointwiseJudge(self.model, self.cfg.rubric, self.cfg.sampling, self.cfg.reference_column)
            result = {"rows": pointwise_rows(judge, rows)}
            reasons = Counter(r["judge_reason"] for r in result["rows"])
            tokens = sum(r["judge_tokens"] or 0 for r in result["rows"])
        else:
            judge = PairwiseJudge(self.model, self.cfg.rubric, self.cfg.sampling)
            result = pairwise_rows(judge, rows, self.cfg.max_pairs, self.cfg.reference_column)
            reasons = Counter({"decided": len(result["rows"])}) + Counter(r["reason"] for r in result["skipped"])
            tokens = 0
        shard.tick(len(rows))
        stats = dict(_counts(self.model) - before)
        stats.update({f"reason_{k}": v for k, v in reasons.items()}, **({"tokens": tokens} if tokens else {}))
        return {**result, "stats": stats}


@dataclass
class JudgeResult:
    output: str
    summary: dict[str, Any]
    skipped: bool = False


def summarize(output: str, cfg: JudgeStageConfig) -> dict[str, Any]:
    manifest = ds.read_manifest(output) or {}
    stats = manifest.get("stats", {})
    summary: dict[str, Any] = {"mode": cfg.mode, "rubric": cfg.rubric.name, "model": cfg.model,
                               "requests": int(stats.get("requests", 0)), "retries": int(stats.get("retries", 0)),
                               "replies_cached": int(stats.get("replies_cached", 0))}
    if cfg.mode == "pointwise":
        table = ds.load_table(output)
        scores = table.column("judge_score").to_pylist()
        got = [s for s in scores if s is not None]
        reasons = Counter(r for s, r in zip(scores, table.column("judge_reason").to_pylist()) if s is None)
        summary.update(rows=table.num_rows, scored=len(got), mean=sum(got) / len(got) if got else None,
                       null=len(scores) - len(got), null_reasons=dict(reasons.most_common()))
    else:
        rows = int(manifest.get("rows_out") or 0)
        skipped = Counter(r["reason"] for r in read_side(output, "skipped"))
        judged = rows + sum(skipped.values())
        summary.update(pairs_judged=judged, preference_rows=rows, skipped=dict(skipped.most_common()),
                       position_consistency=(judged - skipped.get("position_inconsistent", 0)
                                             - skipped.get("unparseable", 0)) / judged if judged else None)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    head = f"judge {s['model']} ({s['mode']}, rubric {s['rubric']}): "
    traffic = f"requests this run: {s['requests']} (retries {s['retries']}, replies from cache {s['replies_cached']})"
    if s["mode"] == "pointwise":
        mean = "-" if s["mean"] is None else f"{s['mean']:.3f}"
        nulls = ", ".join(f"{k}: {v}" for k, v in s["null_reasons"].items())
        return head + f"{s['rows']} rows, {s['scored']} scored, mean {mean}, {s['null']} null" + \
            (f" ({nulls})" if nulls else "") + "\n" + traffic
    skipped = ", ".join(f"{k}: {v}" for k, v in s["skipped"].items())
    rate = "-" if s["position_consistency"] is None else f"{100 * s['position_consistency']:.1f}%"
    return head + f"{s['pairs_judged']} pairs judged, {s['preference_rows']} preference rows, position-consistent " \
        f"{rate}" + (f"; skipped {skipped}" if skipped else "") + "\n" + traffic


def judge(input: str, output: str, cfg: JudgeStageConfig, *, overwrite: bool = False, progress: bool = True,
          executor=None, out=None) -> JudgeResult:
    """Run the judge stage (Python API of `prefsmith judge`)."""
    result = run_chat_stage(JudgeStage(cfg, chat_model(cfg)), input, output, overwrite=overwrite,
                            progress=progress, executor=executor)
    summary = summarize(output, cfg)
    if not result.skipped:
        run = result.extra.get("run_stats", {})
        summary.update(requests=int(run.get("requests", 0)), retries=int(run.get("retries", 0)),
                       replies_cached=int(run.get("replies_cached", 0)))
        update_manifest(output, summary=summary)
    else:
        summary.update(requests=0, retries=0, replies_cached=0)
    print(format_summary(summary), file=out or sys.stdout)
    return JudgeResult(str(output), summary, result.skipped)


# ---------------------------------------------------------------------------------------------- as a reward
def parse_reward_spec(spec: str) -> tuple[str, str, str]:
    """`judge:RUBRIC@URL#MODEL` -> (rubric, url, model).

    >>> parse_reward_spec("judge:helpfulness@http://127.0.0.1:8000/v1#Qwen/Qwen3-8B")
    ('helpfulness', 'http://127.0.0.1:8000/v1', 'Qwen/Qwen3-8B')
    """
    body = spec.removeprefix("judge:")
    rubric, at, rest = body.partition("@")
    url, hash_, model = rest.rpartition("#")
    if not (at and hash_ and rubric and url and model):
        raise RewardSpecError(f"{spec}: write judge:RUBRIC@URL#MODEL, e.g. "
                              "judge:helpfulness@http://127.0.0.1:8000/v1#my-judge (RUBRIC: a built-in name or "
                              "a YAML file)")
    return rubric, url, model


def judge_reward(spec: str, concurrency: int = 8) -> RewardFn:
    """The pointwise judge as a `label` / `train grpo` reward: its score is the judge's number on the rubric's
    scale (null: unparseable / no_reference), its reason the judge's. The API key comes from $OPENAI_API_KEY;
    replies are cached in `default_chat_cache()`."""
    from pipelines.engines.base import EngineError
    from pipelines.core.files import fingerprint_json

    rubric_name, url, model = parse_reward_spec(spec)
    try:
        rubric = load_rubric(rubric_name)
        client = OpenAIClient(url)
        client.check(model)
    except (RubricError, EngineError) as err:
        raise RewardSpecError(str(err)) from None
    fn = PointwiseJudge(OpenAIChat(client, model, concurrency=concurrency, cache_dir=default_chat_cache()), rubric)
    return RewardFn("judge", spec, fn, [fn.reference_column] if rubric.reference else [],
                    fingerprint=fingerprint_json(rubric.to_dict()))


# ---------------------------------------------------------------------------------------------- CLI
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that say which chat model to call and how: `ChatModelConfig`'s fields (shared with
    `critique-revise`), `--threads` and `--no-cache` (cache_dir None) written by hand."""
    add_dataclass_options(p, ChatModelConfig, skip=("shard_size", "threads"))  # --shard-size: with the run's options
    add_threads_argument(p)
    p.add_argument("--no-cache", action="store_true", help="do not cache replies (a killed run asks again)")


def model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The `ChatModelConfig` fields whose flags need checking or resolving: the model (a local folder resolved),
    the reply cache (`--no-cache`: none) and the chat template file; the others come as parsed (`from_args`)."""
    if args.concurrency < 1:
        raise UserError(f"--concurrency must be >= 1, got {args.concurrency}")
    from pipelines.stages.generate import chat_template_for

    if args.engine == "openai":  # the served name; a local folder (transformers serve) as an absolute path
        model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    else:
        from pipelines.engines.models import resolve_model

        model = resolve_model(args.model)
    return dict(model=model, cache_dir=None if args.no_cache else args.cache_dir or str(default_chat_cache()),
                chat_template=chat_template_for(args.engine, args.chat_template))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options are `JudgeStageConfig`'s fields and its `sampling` (`JudgeConfig`)'s; written by hand: the
    run's (input, output, shard size, overwrite, progress, executor), `--rubric` (a rubric's name or file, loaded
    into the Rubric the config holds), `--threads` and `--no-cache`."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (f"built-in rubrics: {', '.join(builtin_rubrics())} (data/rubrics/); --rubric FILE for your own. "
                "The API key is read from $OPENAI_API_KEY (or the variable --api-key-env names) and never written "
                "anywhere. See docs/judges.md.")
    p.add_argument("--input", required=True, help="rows with prompt, completion (pairwise: and prompt_id)")
    p.add_argument("--output", required=True, help="dataset directory to write")
    add_dataclass_options(p, JudgeStageConfig, only=("mode",))
    add_model_arguments(p)
    p.add_argument("--rubric", default="helpfulness", help="built-in rubric name or a YAML file (default helpfulness)")
    add_dataclass_options(p, JudgeStageConfig, skip=("sampling", "shard_size"))  # --reference-column, --max-pairs
    add_dataclass_options(p, JudgeConfig)  # --retries, --temperature, --retry-temperature, --max-new-tokens, --seed
    p.add_argument("--shard-size", type=int, default=None,
                   help=f"input rows per shard, the unit of resume (default {JudgeStage.shard_size})")
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_arguments(p)


def config_from_args(args: argparse.Namespace) -> JudgeStageConfig:
    """The JudgeStageConfig `add_arguments`' flags give, level by level (`from_args`), checked."""
    try:
        rubric = load_rubric(args.rubric)
    except RubricError as err:
        raise UserError(f"--rubric: {err}") from None
    if args.retries < 0:
        raise UserError(f"--retries must be >= 0, got {args.retries}")
    return from_args(JudgeStageConfig, args, rubric=rubric, sampling=from_args(JudgeConfig, args),
                     **model_settings(args))


def run(args: argparse.Namespace) -> int:
    judge(args.input, args.output, config_from_args(args), overwrite=args.overwrite, progress=not args.no_progress,
          executor=executor_config(args))
    return 0
