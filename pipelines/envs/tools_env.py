"""`tools:FILE.py`: function calling. Every public top-level function of FILE.py is a tool; the policy calls tools
the Hermes / Qwen way, and each call runs in its own sandbox.

    turn:        <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>
    observation: [{"role": "tool", "name": "add", "content": "5"}]

The rules (docs/environments.md, "Built-in environments"):
- `tools` = each function's JSON schema from its type hints and Google-style docstring
  (`transformers.utils.get_json_schema`, what chat templates take as `tools=`);
- a turn's calls are its `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` spans, in order (several per
  turn); `arguments` may also be a JSON string of the object (OpenAI style), and may be left out (no arguments);
- a call that is not such an object, or an unclosed `<tool_call>` -> fault `malformed_tool_call: <why>`; a name
  that is not a tool -> fault `unknown_tool: <name>` (the trajectory ends, outcome 0; no call of the turn runs);
- each call: a fresh box runs FILE.py's source and then the function with the decoded arguments; its return value
  is the `tool` message's content (a string as it is, anything else as JSON). A tool that raises (a wrong
  argument too) or runs out of `timeout_s`: the content is "Error: ...", tool_errors += 1, the trajectory goes
  on. Tools keep no state between calls; what they print is not shown;
- a turn with no tool call is the final answer (observation None).
- stop = (): a turn ends with the end-of-turn token, so one turn may make several calls.
"""
from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

from pipelines.envs.base import EnvSpecError, Messages, prompt_messages
from pipelines.envs.sandboxed import SandboxedEnv, clip

_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
# Qwen2.5's (Hermes') own words, for a template that does not describe tools itself (describe_tools_in_system)
SYSTEM = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
          "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
          "For each function call, return a json object with function name and arguments within "
          "<tool_call></tool_call> XML tags:\n<tool_call>\n"
          '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>')


class ToolCallError(ValueError):
    """A turn's tool call the environment cannot read; the message is the fault's reason."""


def parse_tool_calls(turn: str) -> list[tuple[str, dict]]:
    """The turn's Hermes tool calls as (name, arguments), in order; ToolCallError("malformed_tool_call: ...")
    for one that cannot be read."""
    calls = []
    for body in _CALL.findall(turn):
        try:
            call = json.loads(body)
        except json.JSONDecodeError as e:
            raise ToolCallError(f"malformed_tool_call: invalid JSON ({e.msg} at char {e.pos})") from None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ToolCallError('malformed_tool_call: not a JSON object with a "name" string')
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as e:
                raise ToolCallError(f"malformed_tool_call: arguments string is not JSON ({e.msg})") from None
        if not isinstance(arguments, dict):
            raise ToolCallError('malformed_tool_call: "arguments" is not a JSON object')
        calls.append((call["name"], arguments))
    if turn.count("<tool_call>") > turn.count("</tool_call>"):
        raise ToolCallError("malformed_tool_call: a <tool_call> is not closed")
    return calls


def tool_functions(path: Path, where: str) -> dict:
    """FILE's public top-level functions (defined in it, name not starting with _), by name, in file order."""
    from rewards.plugins import RewardSpecError, load_file_module

    try:
        module = load_file_module(path)
    except RewardSpecError as e:
        raise EnvSpecError(f"{where}: {e}") from None
    return {name: fn for name, fn in vars(module).items()
            if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__ == module.__name__}


class ToolsEnv(SandboxedEnv):
    """The `tools:FILE.py` environment (module docstring). Options:

    describe_tools_in_system  False: the tools reach the model through the chat template's `tools=` (Qwen2.5,
                      Llama 3.1, Hermes templates describe them); True: also a system message listing them in the
                      Hermes format, for a template with no tool support (it would otherwise never see them)
    max_output_chars  1024: a tool's result shown to the policy is cut to this many characters
    timeout_s         5.0: per call
    workers, memory_mb, python, site_packages, allow_unsandboxed_code_execution: as `python`'s. The file runs in the
                      box with the standard library only unless site_packages=True; it must be self-contained
                      (its folder is not in the box). It is also imported here once, to read the signatures.
    """

    stop: tuple[str, ...] = ()

    def __init__(self, file: str, describe_tools_in_system: bool = False, max_output_chars: int = 1024,
                 timeout_s: float = 5.0, workers: int | None = None, memory_mb: int = 2048,
                 python: str | None = None, site_packages: bool = False,
                 allow_unsandboxed_code_execution: bool = False):
        from transformers.utils import get_json_schema

        super().__init__(timeout_s, max_output_chars, workers, memory_mb, python, site_packages,
                         allow_unsandboxed_code_execution)
        where = f"env {'tools:' + str(file)!r}"
        path = Path(file).expanduser()
        if not path.is_file():
            raise EnvSpecError(f"{where}: file {file} not found; name the Python file whose functions are the tools")
        functions = tool_functions(path, where)
        if not functions:
            raise EnvSpecError(f"{where}: {file} defines no public function; each top-level function whose name "
                               "does not start with _ is a tool")
        self.tools = []
        for name, fn in functions.items():
            try:
                self.tools.append(get_json_schema(fn))
            except Exception as e:  # transformers' TypeHintParsingException / DocstringParsingException
                raise EnvSpecError(f"{where}: function {name}: {e}; give every argument a type hint and the "
                                   "function a Google-style docstring (Args: section)") from None
        self.name = f"tools:{file}"
        self.file = str(path)
        self.source = path.read_text()
        self.describe_tools_in_system = bool(describe_tools_in_system)

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    def reset(self, row: dict) -> tuple[Messages, None]:
        system = None
        if self.describe_tools_in_system:
            system = SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in self.tools))
        return prompt_messages(row, system), None

    def step(self, assistant_turn: str, state: None) -> tuple[Messages | None, None, dict]:
        try:
            calls = parse_tool_calls(assistant_turn)
        except ToolCallError as e:
            return None, state, {"fault": str(e), "tool_calls": 0, "tool_errors": 0}
        if not calls:
            return None, state, {"tool_calls": 0, "tool_errors": 0}
        names = self.tool_names
        for name, _ in calls:
            if name not in names:
                return None, state, {"fault": f"unknown_tool: {name}", "tool_calls": 0, "tool_errors": 0}
        observation, errors = [], 0
        for name, arguments in calls:
            ok, content = self.call(name, arguments)
            errors += not ok
            observation.append({"role": "tool", "name": name, "content": clip(content, self.max_output_chars)})
        return observation, state, {"tool_calls": len(calls), "tool_errors": errors}

    def call(self, name: str, arguments: dict) -> tuple[bool, str]:
        """Run one tool in a fresh box: (it returned, the content: its value, or "Error: ...")."""
        run = self.launch({"mode": "call", "source": self.source, "filename": Path(self.file).name, "name": name,
                           "arguments": arguments}, blocks=2)  # the file's own top level, then the call
        reply_text = run.channel.split(b"\n", 1)[1] if b"\n" in run.channel else b""
        try:
            reply = json.loads(reply_text)
        except json.JSONDecodeError:
            reply = {}
        if "ok" in reply:
            return True, reply["ok"]
        if reply.get("timeout") or run.timed_out:
            return False, f"Error: the tool timed out after {self.timeout_s:g} s"
        if "error" in reply:
            return False, f"Error: {reply['error']}"
        if run.extra.get("memory_limit"):
            return False, f"Error: the tool ran out of memory ({self.memory_mb} MiB)"
        return False, f"Error: the tool ended without answering (exit {run.returncode})"

    def __repr__(self) -> str:
        return f"ToolsEnv({self.file!r}, tools={self.tool_names})"
