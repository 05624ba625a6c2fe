"""The environment protocol: what a multi-turn rollout asks of an environment, and what it writes down.

An environment is a small picklable class (so an executor can ship it), named like a reward: a built-in
(`python`, `tools:FILE.py`), `module:Class` or `path/to/file.py:Class` (`pipelines.envs.load_env`).

    reset(row) -> (messages, state)
        the conversation the policy starts from (usually the row's prompt as chat messages; the environment
        may add a system message describing its tools) and the trajectory's private state.
    step(assistant_turn, state) -> (observation | None, state, info)
        called after every policy turn with that turn's text. `observation` is the list of messages to append
        (role `tool` or `user`) before the policy's next turn; None ends the trajectory (the turn was the final
        answer). `info` is a dict; the rollout reads these keys and keeps the rest in the row's `env_info`:
            tool_calls   int, tool calls made in this turn
            tool_errors  int, tool calls in this turn that failed (a crashing program, a tool that raised)
            reward       float, an optional per-turn reward (summed into the row's `turn_reward`)
            fault        str, a policy fault that ends the trajectory now (malformed tool call, unknown tool,
                         an unterminated code block): the row's outcome is 0 with this reason
    step_many(assistant_turns, states) -> list of step results   (optional)
        `step` on each (turn, state), run concurrently (the built-ins launch their sandboxes in a thread pool); an
        item whose step raised is that exception instead of a result. The rollout calls it when present, else
        `step` in a loop.
    close()   (optional)
        releases what the environment holds (the built-ins' sandbox, which is also released when the object is
        collected or the process exits); whoever loaded the environment calls it when done with it.
    stop: tuple[str, ...]
        strings that end a policy turn early (the `python` environment's closing code fence). The engines stop a
        sample as soon as its text contains one; the tokens up to and including the one that completed the
        string are the turn.
    tools: list[dict] | None
        JSON schemas of the environment's tools, passed to the chat template (`tools=`) when the prompt is
        rendered, so the template's own tool format describes them.

An exception raised by `reset` or `step` is the environment's fault (the sandbox could not start, a plug-in
bug): the trajectory ends and its rewards are null with reason `env_error: ...` (docs/rewards.md, "What null
means"). Running out of `--max-turns` while the policy still calls tools ends it with outcome 0, reason
`max_turns: no final answer after K turns`.

A trajectory row (one per sample) carries every input column plus the `generate` columns, with these meanings:
    messages           the whole conversation: the prompt messages, then each assistant turn and observation (an
                       observation the policy never answered, after `max_turns` or a fault, is left out)
    sampled_prompt     the messages `reset` returned (what prompt_token_ids render)
    completion         the final assistant turn's text, the text of its ids (the reward specs score it by default)
    completion_ids     every token after the prompt: the policy's tokens exactly as the engine returned them,
                       each observation's tokens appended once between turns (never re-tokenized)
    completion_mask    1 on policy tokens, 0 on environment tokens (same length as completion_ids)
    logprobs           the sampler's log-prob of each token of completion_ids; 0.0 on environment tokens (null
                       when the engine reports none)
    turns              policy turns taken
    tool_calls, tool_errors   totals over the trajectory
    turn_finish_reasons  each policy turn's finish reason (`stop`, `length`, `stop_string`)
    finish_reason      how the trajectory ended: `stop` (a final answer), `length` (the last turn hit
                       max_new_tokens), `max_turns`, `fault` (a policy fault, reason in env_fault),
                       `env_error` (the environment failed; rewards null), `context` (the context is full),
                       `too_long` (the prompt alone fills it: never sampled, as in `generate`), `error:<why>` (the
                       engine failed on a turn)
    env_fault          why it ended early: the policy fault's reason, `max_turns: ...` or `env_error: ...`; else null
    env_info           the environment's other info, one dict per turn (JSON text)
    turn_reward        the sum of per-turn rewards, null when the environment gives none
    round_trip         null when rendering `messages` with the chat template gives exactly prompt_token_ids +
                       completion_ids; else a one-line description of the first difference (the ids win;
                       docs/environments.md, "Token rules and the round-trip check")
"""
from __future__ import annotations

from typing import Any, Protocol

from pipelines.core.columns import PROMPT, prompt_of
from rewards.chat import as_messages

Messages = list[dict[str, Any]]


class Environment(Protocol):
    name: str
    stop: tuple[str, ...]
    tools: list[dict] | None

    def reset(self, row: dict) -> tuple[Messages, Any]: ...

    def step(self, assistant_turn: str, state: Any) -> tuple[Messages | None, Any, dict]: ...


class EnvSpecError(ValueError):
    """An `--env` spec that cannot be loaded (unknown name, missing file or class): one line, before any work."""


# the info keys the rollout reads itself (everything else goes to env_info)
INFO_KEYS = ("tool_calls", "tool_errors", "reward", "fault")

# how a trajectory can end besides generate's own finish reasons (stop, length, too_long, error:<why>)
ENV_ERROR, FAULT, MAX_TURNS, CONTEXT = "env_error", "fault", "max_turns", "context"
POLICY_FAULTS = (FAULT, MAX_TURNS)  # the policy ended without an answer: outcome 0 (pipelines/stages/label.py)
# --max-turns' default everywhere (generate, eval, the online trainers): room for a tool call, its result, a retry
# and the final answer, while a policy that never stops calling tools costs at most 4 x max_new_tokens per trajectory
DEFAULT_MAX_TURNS = 4


def prompt_messages(row: dict, system: str | None = None) -> Messages:
    """The usual start of `reset`: the row's `prompt` (a string or a message list) as chat messages, as `generate`
    renders it; `system`, when given, is added as a system message, or after the row's own system message's
    text (a blank line between)."""
    messages = as_messages(prompt_of(row[PROMPT], PROMPT), "user")
    if system:
        if messages and messages[0].get("role") == "system":
            messages[0] = {**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{system}"}
        else:
            messages.insert(0, {"role": "system", "content": system})
    return messages
