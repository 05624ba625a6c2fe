"""Small environments for the rollout tests, loaded as `tests/plugin_envs.py:Class` specs (pipelines/envs/base.py)."""
from __future__ import annotations

import json
import re

from rewards.chat import as_messages

TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


def _add(a: float, b: float) -> float:
    return a + b


def _divide(a: float, b: float) -> float:
    return a / b


class CalculatorEnv:
    """Tools called as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (a turn stops at the closing tag).

    A turn without a call is the final answer; a call that is not JSON with a name and arguments, or names no tool,
    is a policy fault; a tool that raises is a tool error (its message comes back, the trajectory goes on). Each
    valid call earns a turn reward of 0.5. A prompt with RESET_FAIL makes `reset` raise, a turn with CRASH makes
    `step` raise (the environment's own failures)."""

    name = "calculator"
    stop = ("</tool_call>",)
    tools = [{"type": "function", "function": {"name": n, "description": f"{n} two numbers", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}
        for n in ("add", "divide")]
    functions = {"add": _add, "divide": _divide}

    def reset(self, row: dict):
        messages = as_messages(row["prompt"], "user")
        if "RESET_FAIL" in json.dumps(messages):
            raise RuntimeError("the calculator could not start")
        return messages, 0

    def step(self, turn: str, state: int):
        if "CRASH" in turn:
            raise RuntimeError("the calculator crashed")
        found = TOOL_CALL.search(turn)
        if found is None:
            return None, state, {"tool_calls": 0}
        try:
            call = json.loads(found.group(1))
            name, arguments = call["name"], dict(call["arguments"])
        except (ValueError, KeyError, TypeError) as err:
            return None, state, {"tool_calls": 1, "fault": f"malformed_tool_call: {type(err).__name__}"}
        if name not in self.functions:
            return None, state, {"tool_calls": 1, "fault": f"unknown_tool: {name}"}
        try:
            result, errors = f"{self.functions[name](**arguments):g}", 0
        except Exception as err:  # noqa: BLE001 - a failing tool is the policy's problem, shown to it
            result, errors = f"error: {type(err).__name__}: {err}", 1
        return [{"role": "tool", "content": result}], state + 1, {"tool_calls": 1, "tool_errors": errors,
                                                                   "reward": 0.5, "call": name}


class EchoEnv:
    """Answers every turn but the last with a user message "Go on." and ends after `replies` answers (options:
    `replies`, `stop`)."""

    name = "echo"
    tools = None

    def __init__(self, replies: int = 1, stop: list[str] | tuple[str, ...] = ()) -> None:
        self.replies, self.stop = int(replies), tuple(stop)

    def reset(self, row: dict):
        return as_messages(row["prompt"], "user"), 0

    def step(self, turn: str, state: int):
        if state >= self.replies:
            return None, state, {}
        return [{"role": "user", "content": "Go on."}], state + 1, {"echoed": len(turn)}
