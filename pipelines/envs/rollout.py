"""Multi-turn rollouts: the policy and an environment take turns, and the tokens are kept as the engine made them.

`rollout_rows` is `generate_rows` (pipelines/stages/generate.py) for environments (pipelines/envs/base.py): the
same seeds, carried columns and `policy`/`sampling` columns, one trajectory row per (prompt, sample). A
trajectory is

    prompt ids     the messages `env.reset(row)` returns, rendered once with the chat template (`tools=env.tools`)
    policy turn    the engine continues prompt ids + completion ids so far (token ids, n=1, `stop=env.stop`;
                   at the first turn one call with n=m for a prompt's m trajectories, prefilled once);
                   its ids and log-probs are appended as they came back (mask 1)
    observation    `env.step(turn text)` -> messages; their tokens (`observation_ids`) are appended once (mask 0,
                   log-prob 0.0), then the next policy turn

until the environment answers None (the final answer), a fault, `max_turns` policy turns, an environment error or a
full context. The token rules and the round-trip check are in docs/environments.md, "Token rules and the
round-trip check"; the row columns in pipelines/envs/base.py.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from pipelines.core.columns import prompt_of
from pipelines.engines.base import TOO_LONG, derive_seed, end_of_turn_id, fits, prompt_seed
from pipelines.envs.base import CONTEXT, ENV_ERROR, FAULT, INFO_KEYS, MAX_TURNS, Environment, Messages
from pipelines.errors import UserError
from rewards.chat import is_messages, prompt_ids as render_prompt, render_chat

_PROBE = "PREFSMITH_TURN_PROBE"


def turn_seed(seed: int, sample_idx: int, turn: int) -> int:
    """The seed of policy turn `turn` of trajectory `sample_idx` of a prompt seeded `seed`, sampled alone. Turn 0 is
    the seed `generate` gives that sample (`derive_seed`); later turns get stable, distinct seeds. (The first turns
    of a prompt's trajectories 0..m-1 are sampled together, one prompt with m samples and the prompt's seed, as
    `generate` samples them: `_Rollout.shared_starts`.)"""
    if turn == 0:
        return derive_seed(seed, sample_idx)
    digest = hashlib.sha256(f"{seed}:{sample_idx}:turn{turn}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:300] if text else type(err).__name__


# ----------------------------------------------------------------------------------------------- the token rules
def observation_ids(tokenizer: Any, messages: Messages, observation: Messages, turn_ids: list[int],
                    turn_finish: str, tools: list[dict] | None = None) -> list[int]:
    """The tokens between the policy's last turn and its next one: what the chat template writes after the last
    assistant message's content, through the next generation prompt (ChatML: `<|im_end|>\\n<|im_start|>user\\n
    ...<|im_end|>\\n<|im_start|>assistant\\n`).

    It is found by rendering the conversation with the last assistant content replaced by a probe string, the
    observation after it and a generation prompt, and keeping the text after the probe; only that text is
    tokenized. Earlier turns are never rendered into the ids, so a template that rewrites them (drops an earlier
    `<think>`) changes nothing here. When the policy's turn ended on a stop token and the text starts with that
    same token (the end-of-turn token), it is not written twice; a turn a stop string or the length limit ended has
    no end-of-turn token, and gets the template's."""
    probe = [*messages[:-1], {**messages[-1], "content": _PROBE}, *observation]
    text = render_chat(tokenizer, probe, add_generation_prompt=True, tools=tools)
    parts = text.split(_PROBE)
    if len(parts) != 2:
        raise ValueError("the chat template does not write the assistant's content as it is (a probe string "
                         f"appears {len(parts) - 1} times in its rendering)")
    ids = list(tokenizer(parts[1], add_special_tokens=False)["input_ids"])
    if turn_finish == "stop" and ids and turn_ids and ids[0] == turn_ids[-1]:
        ids = ids[1:]
    return ids


def template_ids(tokenizer: Any, messages: Messages, ended_on_stop_token: bool, tools: list[dict] | None = None,
                 eot: int | None = None) -> list[int]:
    """The ids the chat template gives a finished trajectory: `messages` rendered with the last (assistant)
    message left open (`continue_final_message`), plus the end-of-turn token `eot` when the last turn ended on a
    stop token. An empty last message is placed where the template writes its content (a probe, as
    `observation_ids` does): `continue_final_message` cannot find an empty string."""
    last = messages[-1]
    if (last.get("content") or "").strip():
        text = render_chat(tokenizer, messages, continue_final_message=True, tools=tools)
    else:
        rendered = render_chat(tokenizer, [*messages[:-1], {**last, "content": _PROBE}], tools=tools)
        text = rendered.split(_PROBE)[0] + (last.get("content") or "")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids + [eot] if ended_on_stop_token and eot is not None else ids


def first_difference(tokenizer: Any, expected: list[int], got: list[int], prompt_len: int) -> str | None:
    """None when `got` (prompt ids + completion ids) equals `expected` (the template's ids); else one line: the
    first token that differs, both sides' text from there, and whether the decoded texts are equal (the same text,
    tokenized otherwise) or not."""
    if expected == got:
        return None
    i = next((k for k, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))

    def at(ids: list[int]) -> str:
        return f"{ids[i]} {tokenizer.decode(ids[i:i + 8], skip_special_tokens=False)[:40]!r}" if i < len(ids) else "the end"

    where = f"prompt token {i}" if i < prompt_len else f"completion token {i - prompt_len}"
    same = tokenizer.decode(expected, skip_special_tokens=False) == tokenizer.decode(got, skip_special_tokens=False)
    return (f"{where}: the template renders {at(expected)}, the ids have {at(got)} "
            f"({'the same text, tokenized otherwise' if same else 'the texts differ'})")


# ------------------------------------------------------------------------------------------------- trajectories
@dataclass
class _Trajectory:
    row: int  # position in the batch
    sample_idx: int
    seed: int  # the prompt's seed
    messages: Messages = field(default_factory=list)
    opening: int = 0  # how many of `messages` the environment started with (the prompt; `sampled_prompt`)
    state: Any = None
    prompt_ids: list[int] | None = None
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] | None = field(default_factory=list)
    turn_finish: list[str] = field(default_factory=list)
    tool_calls: int = 0
    tool_errors: int = 0
    rewards: list[float] = field(default_factory=list)
    info: list[dict] = field(default_factory=list)
    completion: str = ""
    finish: str | None = None  # set when the trajectory ends
    fault: str | None = None

    def end(self, finish: str, fault: str | None = None) -> None:
        self.finish, self.fault = finish, fault

    @property
    def length(self) -> int:
        return len(self.prompt_ids or []) + len(self.ids)


class _Rollout:
    """One `rollout_rows` call's fixed parts: the engine, the environment, its sampling and the tokenizer."""

    def __init__(self, engine, env: Environment, cfg, max_turns: int) -> None:
        if max_turns < 1:
            raise UserError(f"--max-turns must be >= 1, got {max_turns}")
        self.engine, self.env, self.cfg, self.max_turns = engine, env, cfg, max_turns
        self.tokenizer = engine.tokenizer
        if self.tokenizer is None:
            raise UserError(f"--env with --engine {engine.name} needs the served model's tokenizer to render the chat "
                            "template and continue from token ids: pass --engine-option tokenizer=DIR")
        self.sampling = replace(cfg.sampling, n=1, stop=tuple(env.stop or ()))
        self.context = getattr(engine, "context", None)  # the openai engine: unknown (None)
        self.tools = env.tools
        self.eot = end_of_turn_id(self.tokenizer)
        self._prompts: dict[str, list[int]] = {}

    # -- start ----------------------------------------------------------------------------------------------------
    def start(self, row: dict, prompt: Messages, i: int, k: int, seed: int) -> _Trajectory:
        """`env.reset` on the row (its `prompt` already templated, as `generate` samples it) and the prompt ids."""
        t = _Trajectory(row=i, sample_idx=k, seed=seed)
        try:
            messages, t.state = self.env.reset({**row, "prompt": prompt})
            if not is_messages(messages):
                raise TypeError(f"reset returned {type(messages).__name__}, not a list of {{role, content}} messages")
            t.messages = [dict(m) for m in messages]
            t.opening = len(t.messages)
        except Exception as err:  # noqa: BLE001 - this trajectory's environment failed, not the run
            t.messages, t.opening = list(prompt), len(prompt)
            t.end(ENV_ERROR, f"env_error: {one_line(err)}")
            return t
        key = json.dumps(t.messages, sort_keys=True, default=str)
        if key not in self._prompts:  # the n trajectories of a prompt usually start alike: rendered once
            try:
                self._prompts[key] = render_prompt(self.tokenizer, t.messages, tools=self.tools)
            except Exception as err:  # noqa: BLE001 - messages this template refuses (a role, a missing system)
                t.end(ENV_ERROR, f"env_error: the chat template cannot render the environment's messages "
                                 f"({one_line(err)})")
                return t
        t.prompt_ids = self._prompts[key]
        if not fits(len(t.prompt_ids), self.context):
            t.end(TOO_LONG)
        return t

    # -- one round: a policy turn for every live trajectory, then the environment's answers --------------------------
    def turn(self, live: list[_Trajectory]) -> tuple[int, float]:
        """Sample the next policy turn of each of `live` and step the environment on it. Returns (policy tokens,
        generation seconds)."""
        budget = {id(t): self.budget(t) for t in live}
        tokens, seconds = 0, 0.0
        for limit in sorted(set(budget.values())):
            shared = self.shared_starts([t for t in live if budget[id(t)] == limit])
            for n in sorted({len(same) for same in shared}):  # one call per sample count (n is per call)
                sets = [same for same in shared if len(same) == n]
                t0 = time.time()
                results = self.engine.generate(
                    [same[0].prompt_ids + same[0].ids for same in sets],
                    replace(self.sampling, max_new_tokens=limit, n=n),
                    [turn_seed(same[0].seed, same[0].sample_idx, len(same[0].turn_finish)) for same in sets])
                seconds += time.time() - t0
                for same, samples in zip(sets, results):
                    for t, sample in zip(same, samples):
                        tokens += self.take(t, sample, limit)
        stepping = [t for t in live if t.finish is None]
        for t, result in zip(stepping, self.step([t.completion for t in stepping], [t.state for t in stepping])):
            self.answer(t, result)
        return tokens, seconds

    def shared_starts(self, group: list[_Trajectory]) -> list[list[_Trajectory]]:
        """`group` cut into the sets one engine call samples together: at the first turn, the trajectories
        0..m-1 of a prompt continue the same ids, so they are one prompt with m samples (prefilled once; sample k
        is drawn with `derive_seed(seed, k)`, the seed it gets alone, `turn_seed`); every other trajectory is
        its own prompt with one sample."""
        sets: list[list[_Trajectory]] = []
        first: dict[int, list[_Trajectory]] = {}
        for t in group:
            same = first.get(t.row) if not t.turn_finish else None
            if same is not None and t.sample_idx == len(same) and t.prompt_ids == same[0].prompt_ids:
                same.append(t)
                continue
            sets.append([t])
            if not t.turn_finish and t.sample_idx == 0:
                first[t.row] = sets[-1]
        return sets

    def budget(self, t: _Trajectory) -> int:
        """The turn's max_new_tokens: the configured one, or less where the context has less room left."""
        room = None if self.context is None else self.context - t.length
        return self.sampling.max_new_tokens if room is None else max(1, min(self.sampling.max_new_tokens, room))

    def take(self, t: _Trajectory, sample, limit: int) -> int:
        """Append a policy turn's sample to `t` as it came back; returns its token count."""
        if sample.finish_reason == TOO_LONG:  # the engine found no room (vLLM's own max_model_len)
            t.end(TOO_LONG if not t.turn_finish else CONTEXT)
            return 0
        if sample.finish_reason.startswith("error:") or sample.token_ids is None:
            t.end(sample.finish_reason if sample.finish_reason.startswith("error:")
                  else "error:the engine returned no token ids for a turn")
            return 0
        ids = list(sample.token_ids)
        t.ids += ids
        t.mask += [1] * len(ids)
        if t.logprobs is not None and sample.logprobs is not None and len(sample.logprobs) == len(ids):
            t.logprobs += [float(x) for x in sample.logprobs]
        else:
            t.logprobs = None  # a server without log-probs: none for the whole trajectory
        t.turn_finish.append(sample.finish_reason)
        t.messages.append({"role": "assistant", "content": sample.text})
        t.completion = sample.text
        if sample.finish_reason == "length" and limit < self.sampling.max_new_tokens:
            t.end(CONTEXT)  # cut by the context, not by max_new_tokens: there is no room for another turn
        return len(ids)

    def step(self, turns: list[str], states: list[Any]) -> list[Any]:
        """The environment's answers to `turns`: `step_many` when it has one, else `step` on each; an item whose
        step raised is that exception."""
        if not turns:
            return []
        if hasattr(self.env, "step_many"):
            try:
                out = list(self.env.step_many(turns, states))
                if len(out) != len(turns):
                    raise ValueError(f"step_many returned {len(out)} results for {len(turns)} turns")
                return out
            except Exception as err:  # noqa: BLE001 - the call failed as a whole: every trajectory in it
                return [err] * len(turns)
        out = []
        for turn, state in zip(turns, states):
            try:
                out.append(self.env.step(turn, state))
            except Exception as err:  # noqa: BLE001
                out.append(err)
        return out

    def answer(self, t: _Trajectory, result: Any) -> None:
        """Apply the environment's answer to a turn: the counters, then the end of the trajectory or the
        observation's tokens."""
        try:
            if isinstance(result, BaseException):
                raise result
            observation, t.state, info = result
            if not isinstance(info, dict):
                raise TypeError(f"step returned info of type {type(info).__name__}, not a dict")
            if observation is not None and not is_messages(observation):
                raise TypeError(f"step returned an observation of type {type(observation).__name__}, not None or "
                                "a list of {role, content} messages")
            t.tool_calls += int(info.get("tool_calls") or 0)
            t.tool_errors += int(info.get("tool_errors") or 0)
            if info.get("reward") is not None:
                t.rewards.append(float(info["reward"]))
        except Exception as err:  # noqa: BLE001 - the environment failed on this trajectory
            t.end(ENV_ERROR, f"env_error: {one_line(err)}")
            return
        t.info.append({k: v for k, v in info.items() if k not in INFO_KEYS})
        if info.get("fault"):
            t.end(FAULT, str(info["fault"]))
        elif observation is None:
            t.end("length" if t.turn_finish[-1] == "length" else "stop")
        elif len(t.turn_finish) >= self.max_turns:
            t.end(MAX_TURNS, f"max_turns: no final answer after {self.max_turns} turns")
        else:
            self.observe(t, [dict(m) for m in observation])

    def observe(self, t: _Trajectory, observation: Messages) -> None:
        """Append an observation's tokens once (mask 0, log-prob 0.0), or end the trajectory when they leave no
        room for another policy token."""
        try:
            ids = observation_ids(self.tokenizer, t.messages, observation, t.ids, t.turn_finish[-1], self.tools)
        except Exception as err:  # noqa: BLE001 - messages this template cannot render (a role it refuses)
            t.end(ENV_ERROR, f"env_error: the chat template cannot render the observation ({one_line(err)})")
            return
        if not fits(t.length + len(ids), self.context):
            t.end(CONTEXT)
            return
        t.ids += ids
        t.mask += [0] * len(ids)
        if t.logprobs is not None:
            t.logprobs += [0.0] * len(ids)
        t.messages += observation

    # -- finish ---------------------------------------------------------------------------------------------------------
    def round_trip(self, t: _Trajectory) -> str | None:
        """None when the chat template renders `t.messages` to exactly prompt ids + completion ids, else the first
        difference in one line (`first_difference`). A trajectory with no policy turn has nothing to check."""
        if not t.turn_finish or t.prompt_ids is None:
            return None
        try:
            expected = template_ids(self.tokenizer, t.messages, t.turn_finish[-1] == "stop", self.tools, self.eot)
        except Exception as err:  # noqa: BLE001
            return f"the chat template cannot render the messages: {one_line(err)}"
        return first_difference(self.tokenizer, expected, t.prompt_ids + t.ids, len(t.prompt_ids))


def rollout_rows(engine, env: Environment, rows: list[dict], cfg, ids: list[str], use_chat: bool, max_turns: int,
                 tick: Callable[[int], None] | None = None) -> tuple[list[dict], dict[str, float]]:
    """The multi-turn `generate_rows`: `cfg.sampling.n` trajectories per row of `rows` (prompt ids `ids`), each up
    to `max_turns` policy turns with `env`. The live trajectories of a batch (`cfg.prompts_per_call` prompts) are
    sampled together, one engine call per turn. Returns the trajectory rows (columns: pipelines/envs/base.py) and the
    counters {tokens (policy tokens), gen_seconds, turns, tool_calls, tool_errors, too_long_prompts and
    round_trip_rows when any}. `tick(1)` as each prompt's trajectories have all ended."""
    if not use_chat:
        raise UserError("--env needs chat prompts: the model has no chat template (give one with --chat-template "
                        "FILE) or --chat never was passed")
    run = _Rollout(engine, env, cfg, max_turns)
    policy = {"model": cfg.model, "engine": cfg.engine}
    sampling = replace(cfg.sampling, stop=run.sampling.stop).to_dict()
    out: list[dict] = []
    stats = {"tokens": 0, "gen_seconds": 0.0, "turns": 0, "tool_calls": 0, "tool_errors": 0}
    too_long, differ = 0, 0
    size = cfg.prompts_per_call
    for b in range(0, len(rows), size):
        batch, batch_ids = rows[b:b + size], ids[b:b + size]
        prompts = [cfg.prompt(r, True) for r in batch]  # generate's `build_prompt`
        seeds = [prompt_seed(cfg.sampling.seed, pid) for pid in batch_ids]
        trajectories = [run.start(row, prompt, i, k, seed) for i, (row, prompt, seed) in
                        enumerate(zip(batch, prompts, seeds)) for k in range(cfg.sampling.n)]
        ticked: set[int] = set()

        def report() -> None:
            for i in range(len(batch)):
                if i not in ticked and all(t.finish is not None for t in trajectories if t.row == i):
                    ticked.add(i)
                    if tick is not None:
                        tick(1)

        report()
        while live := [t for t in trajectories if t.finish is None]:
            tokens, seconds = run.turn(live)
            stats["tokens"] += tokens
            stats["gen_seconds"] += seconds
            report()
        too_long += len({t.row for t in trajectories if t.finish == TOO_LONG})
        for t in trajectories:
            row, pid = batch[t.row], batch_ids[t.row]
            check = run.round_trip(t)
            differ += check is not None
            stats["turns"] += len(t.turn_finish)
            stats["tool_calls"] += t.tool_calls
            stats["tool_errors"] += t.tool_errors
            out.append({**row, **({"prompt": prompt_of(row[cfg.prompt_column], cfg.prompt_column)}
                                  if cfg.prompt_column != "prompt" else {}),
                        "id": f"{pid}-{t.sample_idx}", "prompt_id": pid, "sample_idx": t.sample_idx,
                        "completion": t.completion, "completion_ids": t.ids, "logprobs": t.logprobs,
                        "finish_reason": t.finish, "policy": policy, "sampling": sampling,
                        "sampled_prompt": t.messages[:t.opening], "prompt_token_ids": t.prompt_ids,
                        "messages": t.messages, "completion_mask": t.mask, "turns": len(t.turn_finish),
                        "tool_calls": t.tool_calls, "tool_errors": t.tool_errors,
                        "turn_finish_reasons": t.turn_finish, "env_fault": t.fault,
                        "env_info": json.dumps(t.info, default=str),
                        "turn_reward": sum(t.rewards) if t.rewards else None, "round_trip": check})
    if too_long:
        stats["too_long_prompts"] = too_long
    if differ:
        stats["round_trip_rows"] = differ
    return out, stats
