"""`python`: tool-integrated reasoning (ToRA, SimpleTIR). The policy writes ```python blocks; each block that
closes a turn runs in the sandbox and its output comes back as an ```output block before the next turn.

    turn:        Let me compute it.\\n```python\\nx = 2**10\\nprint(x)\\n```\\n        (stopped by STOP)
    observation: {"role": "user", "content": "```output\\n1024\\n```"}

The rules (docs/environments.md, "Built-in environments"):
- a turn ends at the string "\\n```\\n" (`STOP`): a fence line of its own followed by a newline. "```python\\n"
  never contains it. A bare "```" opening a block with no language matches it too (strings cannot tell an
  opening fence from a closing one): such a turn ends inside a block, see the next rule;
- the turn's text ends inside a fenced block (the last fence opens one, e.g. the turn ran out of tokens) ->
  fault `unterminated_code_block` (the trajectory ends, outcome 0);
- the turn ends with a closed ```python (or py, python3) block, only whitespace after it (the stop string, or
  "\\n```" then the end-of-turn token) -> the block runs; anything else -> the final answer (observation None);
- state = the trajectory's earlier blocks that ran cleanly. Each launch is a fresh box: it re-runs them first
  (output discarded), then the new block, so variables and imports carry over. Their side effects re-run too
  (a file written to /tmp is written again), and the stdlib `random` is seeded the same for every launch, so
  a replay is deterministic unless a block reads the clock, os.urandom or similar;
- a block that raises: the traceback is the observation, tool_errors 1, the trajectory goes on (the block is
  not kept for replay); a timeout likewise ("TimeoutError: timed out after N s");
- stdout and stderr, interleaved, are cut to `max_output_chars` (beginning and end kept, "[... truncated N
  chars]" in between).
"""
from __future__ import annotations

from pipelines.envs.base import Messages, prompt_messages
from pipelines.envs.sandboxed import EXIT_OK, EXIT_REPLAY, EXIT_TIMEOUT, SandboxedEnv, clip

STOP = ("\n```\n",)
PYTHON_TAGS = ("python", "py", "python3")
SYSTEM = ("You can run Python code: write it in a ```python block. When the block closes, it runs and its output "
          "(stdout and stderr) is shown to you in an ```output block, and you continue from there. Variables and "
          "imports carry over from block to block; only printed values are shown.")
UNTERMINATED = "unterminated_code_block"


def last_code(turn: str) -> tuple[str, str]:
    """What a policy turn asks for: ("run", code) when it ends with a closed ```python block, ("open", lang) when
    it ends inside a fenced block, ("final", "") otherwise. A fence is a line that starts with ``` (after
    indentation); inside a block only a line that is exactly ``` closes it."""
    lang: str | None = None  # the open block's language; None outside a block
    body: list[str] = []
    closed: tuple[str, str, int] | None = None  # the last closed block: language, code, line of its closing fence
    lines = turn.split("\n")
    for i, line in enumerate(lines):
        fence = line.strip()
        if lang is None and fence.startswith("```"):
            lang, body = fence[3:].strip().lower(), []
        elif lang is not None and fence == "```":
            closed, lang = (lang, "\n".join(body), i), None
        elif lang is not None:
            body.append(line)
    if lang is not None:
        return "open", lang
    if closed is not None and closed[0] in PYTHON_TAGS and not "".join(lines[closed[2] + 1:]).strip():
        return "run", closed[1]
    return "final", ""


class PythonEnv(SandboxedEnv):
    """The `python` environment (module docstring). Options:

    system            True: add `SYSTEM` (what the sandbox does) to the prompt, as its own system message or after
                      the row's own system message; False: nothing; a string: that text instead
    observation_role  the role of the output message: "user" (default: every chat template renders it) or "tool"
    max_output_chars  1024: the output shown to the policy is cut to this many characters
    timeout_s         5.0: per block (each replayed block gets as long again)
    workers           sandbox launches at once in `step_many` (default: CPU cores)
    memory_mb, python, site_packages, allow_unsandboxed_code_execution: as the code reward's (docs/sandbox.md);
                      site_packages=True with a `python` that has sympy/numpy lets blocks import them
    """

    name = "python"
    stop = STOP
    tools = None

    def __init__(self, system: bool | str = True, observation_role: str = "user", max_output_chars: int = 1024,
                 timeout_s: float = 5.0, workers: int | None = None, memory_mb: int = 2048,
                 python: str | None = None, site_packages: bool = False,
                 allow_unsandboxed_code_execution: bool = False):
        super().__init__(timeout_s, max_output_chars, workers, memory_mb, python, site_packages,
                         allow_unsandboxed_code_execution)
        if observation_role not in ("user", "tool"):
            raise ValueError(f"observation_role must be 'user' or 'tool', not {observation_role!r}")
        self.system = SYSTEM if system is True else (system or None)
        self.observation_role = observation_role

    def reset(self, row: dict) -> tuple[Messages, list[str]]:
        return prompt_messages(row, self.system), []

    def step(self, assistant_turn: str, state: list[str]) -> tuple[Messages | None, list[str], dict]:
        kind, code = last_code(assistant_turn)
        if kind == "open":
            return None, state, {"fault": UNTERMINATED, "tool_calls": 0, "tool_errors": 0}
        if kind == "final":
            return None, state, {"tool_calls": 0, "tool_errors": 0}
        status, output = self.run_block(list(state), code)
        content = "```output\n" + clip(output.rstrip(), self.max_output_chars) + "\n```"
        observation = [{"role": self.observation_role, "content": content}]
        new_state = [*state, code] if status == "ok" else list(state)
        return observation, new_state, {"tool_calls": 1, "tool_errors": int(status != "ok"), "status": status}

    def run_block(self, replay: list[str], code: str) -> tuple[str, str]:
        """Run `code` after `replay` in a fresh box: (status, output). status: ok, error (it raised, or was
        killed), timeout, replay_error (an earlier block failed on its re-run: non-determinism)."""
        run = self.launch({"mode": "cells", "replay": replay, "code": code}, blocks=len(replay) + 1)
        output = run.stdout.decode(errors="replace")
        if run.truncated:
            limit = self.open().limits.output_bytes
            return "error", f"{output}\n[the program was stopped: it wrote more than {limit} bytes]"
        if run.timed_out or run.returncode == EXIT_TIMEOUT:
            return "timeout", output if run.returncode == EXIT_TIMEOUT else \
                f"{output}\nTimeoutError: timed out after {self.timeout_s:g} s"
        if run.extra.get("memory_limit"):
            return "error", f"{output}\nMemoryError: the program ran out of memory ({self.memory_mb} MiB)"
        if run.returncode == EXIT_OK:
            return "ok", output
        if run.returncode == EXIT_REPLAY:
            return "replay_error", output
        if run.returncode is not None and run.returncode < 0:
            return "error", f"{output}\n[the program was killed by signal {-run.returncode}]"
        return "error", output

    def __repr__(self) -> str:
        return f"PythonEnv(timeout_s={self.timeout_s}, max_output_chars={self.max_output_chars})"
