"""Environment plug-ins (pipelines/envs): `--env` spec loading and its errors, the identity a resumed run compares,
and the two built-ins against the real sandbox (bubblewrap): the python environment's blocks, state, faults,
limits and pickling; the tools environment's schemas, calls, faults and isolation."""
import json
import pickle
import socket
import sys
import textwrap
import time

import pytest

from pipelines.envs import BUILTINS, EnvSpecError, env_fingerprint, load_env
from pipelines.envs.python_env import STOP, SYSTEM, PythonEnv, last_code
from pipelines.envs.tools_env import ToolsEnv, parse_tool_calls

FENCE = "```"

ECHO = '''
class Echo:
    """Says `greeting` once after the first turn, then takes the next turn as the answer."""
    name = "echo"
    stop = ()
    tools = None

    def __init__(self, greeting: str = "hi", times: int = 1):
        self.greeting, self.times = greeting, times

    def reset(self, row):
        return [{"role": "user", "content": row["prompt"]}], 0

    def step(self, turn, state):
        if state >= self.times:
            return None, state, {}
        return [{"role": "user", "content": self.greeting}], state + 1, {"reward": 1.0}
'''

TOOLS = '''
import json
import socket


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def describe(city: str, metric: bool = True) -> dict:
    """Weather for a city.

    Args:
        city: The city's name.
        metric: Celsius when true, else Fahrenheit.
    """
    return {"city": city, "unit": "C" if metric else "F"}


def fail(reason: str) -> str:
    """Always raises.

    Args:
        reason: What to say.
    """
    raise ValueError(reason)


def read(path: str) -> str:
    """Read a file.

    Args:
        path: The file's path.
    """
    with open(path) as f:
        return f.read()


def connect(port: int) -> str:
    """Connect to a port on the loopback interface.

    Args:
        port: The port.
    """
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    return "connected"


def nap(seconds: float) -> str:
    """Sleep.

    Args:
        seconds: How long.
    """
    import time
    time.sleep(seconds)
    return "awake"


def _helper():
    return "not a tool"
'''


def block(code: str, before: str = "Let me compute.\n", end: str = "\n") -> str:
    """A policy turn that ends with a ```python block, as the engine returns it (stop string included)."""
    return f"{before}{FENCE}python\n{code}\n{FENCE}{end}"


@pytest.fixture(scope="module")
def py():
    env = PythonEnv(timeout_s=1.0, max_output_chars=400, workers=2)
    yield env
    env.close()


@pytest.fixture(scope="module")
def tools_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tools") / "my_tools.py"
    path.write_text(TOOLS)
    return path


@pytest.fixture(scope="module")
def tools(tools_file):
    env = load_env(f"tools:{tools_file}", {"timeout_s": 1.0, "workers": 2})
    yield env
    env.close()


def call(name: str, **arguments) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


# ------------------------------------------------------------------------------------------------ loading
def test_builtins_map_names_the_built_ins():
    assert set(BUILTINS) == {"python", "tools"}


def test_load_python_with_options():
    env = load_env("python", {"timeout_s": 2, "max_output_chars": 50, "observation_role": "tool", "system": False})
    try:
        assert isinstance(env, PythonEnv) and env.name == "python"
        assert (env.timeout_s, env.max_output_chars, env.observation_role, env.system) == (2.0, 50, "tool", None)
        assert env.stop == ("\n```\n",) and env.tools is None
        assert env._sandbox is not None  # opened at load: a machine without a sandbox fails before any work
    finally:
        env.close()


def test_load_tools_file(tools, tools_file):
    assert isinstance(tools, ToolsEnv)
    assert tools.name == f"tools:{tools_file}" and tools.stop == ()
    assert tools.tool_names == ["add", "describe", "fail", "read", "connect", "nap"]  # file order, no _helper


def test_load_module_class_and_file_class(tmp_path, monkeypatch):
    (tmp_path / "echo_env_mod.py").write_text(ECHO)
    monkeypatch.chdir(tmp_path)  # the module form finds modules in the current directory
    env = load_env("echo_env_mod:Echo", {"greeting": "again", "times": 2})
    assert (type(env).__name__, env.greeting, env.times) == ("Echo", "again", 2)
    messages, state = env.reset({"prompt": "q"})
    assert messages == [{"role": "user", "content": "q"}] and state == 0
    assert env.step("a", state) == ([{"role": "user", "content": "again"}], 1, {"reward": 1.0})

    env = load_env(f"{tmp_path / 'echo_env_mod.py'}:Echo")
    assert (env.greeting, env.times) == ("hi", 1)
    sys.modules.pop("echo_env_mod", None)


@pytest.mark.parametrize("spec, options, says", [
    ("python:fast", {}, "`python` takes no argument"),
    ("python", {"timeout": 3}, "unexpected keyword argument 'timeout'; its options are system, observation_role"),
    ("python", {"observation_role": "assistant"}, "observation_role must be 'user' or 'tool'"),
    ("tools", {}, "name the file whose functions are the tools: tools:path/to/tools.py"),
    ("tools:missing_tools.py", {}, "file missing_tools.py not found"),
    ("nonsense", {}, "name a built-in (python, tools:FILE.py) or a class as module:Class or path/to/file.py:Class"),
    ("no_such_env_module:Env", {}, "no module named 'no_such_env_module' (from env 'no_such_env_module'); run "
                                   "from the folder that holds it"),
    ("missing/envs.py:Env", {}, "file missing/envs.py not found"),
    ("pipelines.envs.python_env:Nope", {}, "pipelines.envs.python_env has no 'Nope' (it defines PythonEnv)"),
    ("pipelines.envs.python_env:STOP", {}, "STOP is a tuple, not a class"),
    ("pipelines.envs.base:EnvSpecError", {}, "EnvSpecError lacks name, stop, tools, reset, step"),
])
def test_a_spec_that_cannot_load_is_one_line(spec, options, says):
    with pytest.raises(EnvSpecError) as err:
        load_env(spec, options)
    message = str(err.value)
    assert message.startswith(f"env {spec!r}: ") and says in message and "\n" not in message


def test_a_class_that_misses_the_protocol_or_fails_to_construct(tmp_path):
    path = tmp_path / "bad_envs.py"
    path.write_text("class NoStep:\n    name = 'x'\n    stop = ()\n    tools = None\n    def reset(self, row): pass\n"
                    "class Boom:\n    def __init__(self):\n        raise RuntimeError('no key')\n"
                    "class BadStop:\n    name = 'x'\n    stop = '```'\n    tools = None\n"
                    "    def reset(self, row): pass\n    def step(self, turn, state): pass\n")
    with pytest.raises(EnvSpecError, match=r"NoStep lacks step; an environment has name, stop, tools"):
        load_env(f"{path}:NoStep")
    with pytest.raises(EnvSpecError, match=r"setting it up failed: RuntimeError: no key"):
        load_env(f"{path}:Boom")
    with pytest.raises(EnvSpecError, match=r"stop must be a tuple of non-empty strings, got '```'"):
        load_env(f"{path}:BadStop")


def test_tools_file_errors_name_the_function(tmp_path):
    path = tmp_path / "untyped.py"
    path.write_text("def f(x):\n    '''Do.\n\n    Args:\n        x: it\n    '''\n")
    with pytest.raises(EnvSpecError, match=r"function f: Argument x is missing a type hint.*give every argument"):
        load_env(f"tools:{path}")
    path = tmp_path / "private.py"
    path.write_text("def _private():\n    pass\n")
    with pytest.raises(EnvSpecError, match=r"defines no public function"):
        load_env(f"tools:{path}")


def test_fingerprint_follows_spec_options_and_file_content(tmp_path):
    path = tmp_path / "fp_envs.py"
    path.write_text(ECHO)
    spec = f"{path}:Echo"
    first = env_fingerprint(spec, {"greeting": "a"})
    assert first == env_fingerprint(spec, {"greeting": "a"})
    assert first != env_fingerprint(spec, {"greeting": "b"})
    path.write_text(ECHO + "\n# edited\n")
    assert env_fingerprint(spec, {"greeting": "a"}) != first

    tools = tmp_path / "fp_tools.py"
    tools.write_text(TOOLS)
    before = env_fingerprint(f"tools:{tools}")
    tools.write_text(TOOLS + "\n# edited\n")
    assert env_fingerprint(f"tools:{tools}") != before
    assert env_fingerprint("python", {"timeout_s": 1}) != env_fingerprint("python", {"timeout_s": 2})


# ------------------------------------------------------------------------------------------------ python: parsing
def test_stop_string_matches_a_closing_fence_not_an_opening_one():
    opening = f"I will compute it.\n{FENCE}python\nx = 1\n"
    assert not any(s in opening for s in STOP)
    turn = block("print(1)", end="\nThen more text")
    assert turn.index(STOP[0]) == turn.index("print(1)") + len("print(1)")  # first match: the closing fence


@pytest.mark.parametrize("turn, expected", [
    (block("print(1)"), ("run", "print(1)")),
    (block("print(1)", end=""), ("run", "print(1)")),  # "\n```" then the end-of-turn token
    (block("x = 1\nprint(x)", end="\n\n"), ("run", "x = 1\nprint(x)")),
    (f"{FENCE}py\nprint(2)\n{FENCE}\n", ("run", "print(2)")),
    (f"Code:\n{FENCE}python\nx = [1,\n", ("open", "python")),  # ran out of tokens inside the block
    (f"Code:\n{FENCE}\n", ("open", "")),  # a bare opening fence matches the stop string: unterminated
    ("The answer is \\boxed{4}.", ("final", "")),
    (block("print(1)") + "So the answer is 1.", ("final", "")),
    (f"{FENCE}text\nnot code\n{FENCE}\n", ("final", "")),
])
def test_last_code(turn, expected):
    assert last_code(turn) == expected


def test_reset_adds_the_instruction_to_the_prompt():
    assert PythonEnv(system=True).reset({"prompt": "What is 2**10?"}) == (
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2**10?"}], [])
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]
    messages, _ = PythonEnv().reset({"prompt": own})
    assert messages[0] == {"role": "system", "content": f"Be brief.\n\n{SYSTEM}"} and own[0]["content"] == "Be brief."
    assert PythonEnv(system=False).reset({"prompt": "q"})[0] == [{"role": "user", "content": "q"}]
    assert PythonEnv(system="Use Python.").reset({"prompt": "q"})[0][0] == {"role": "system", "content": "Use Python."}


# ------------------------------------------------------------------------------------------------ python: running
def test_a_block_runs_and_its_output_comes_back(py):
    observation, state, info = py.step(block("print(2 ** 10)"), [])
    assert observation == [{"role": "user", "content": "```output\n1024\n```"}]
    assert state == ["print(2 ** 10)"]
    assert info == {"tool_calls": 1, "tool_errors": 0, "status": "ok"}


def test_state_is_kept_across_turns_by_replay(py):
    _, state, _ = py.step(block("x = 2\nprint('set')"), [])
    observation, state, info = py.step(block("print(x * 3)", end=""), state)
    assert observation[0]["content"] == "```output\n6\n```"  # the first block's "set" is not printed again
    assert state == ["x = 2\nprint('set')", "print(x * 3)"] and info["tool_errors"] == 0
    # the stdlib's random draws the same numbers on replay: a value seen once stays the same
    seen, state, _ = py.step(block("import random\nr = random.random()\nprint(r)"), [])
    again, _, _ = py.step(block("print(r)"), state)
    assert again[0]["content"] == seen[0]["content"]


def test_a_crash_shows_the_traceback_and_the_trajectory_goes_on(py):
    observation, state, info = py.step(block("x = 5\ny = x / 0"), ["z = 1"])
    content = observation[0]["content"]
    assert content.startswith("```output\nTraceback (most recent call last):\n")
    assert 'File "<block 2>", line 2, in <module>' in content and "ZeroDivisionError: division by zero" in content
    assert info == {"tool_calls": 1, "tool_errors": 1, "status": "error"}
    assert state == ["z = 1"]  # the crashing block is not replayed later
    observation, state, info = py.step(block("print(z)"), state)
    assert observation[0]["content"] == "```output\n1\n```" and info["tool_errors"] == 0


def test_stdout_and_stderr_interleave_and_syntax_errors_show(py):
    code = "import sys\nprint('out')\nprint('err', file=sys.stderr)\nprint('out again')"
    assert py.step(block(code), [])[0][0]["content"] == "```output\nout\nerr\nout again\n```"
    observation, _, info = py.step(block("print(1"), [])
    assert "SyntaxError: '(' was never closed" in observation[0]["content"] and info["tool_errors"] == 1


def test_unterminated_block_is_a_fault_and_no_block_is_the_final_answer(py):
    assert py.step(f"Let me see.\n{FENCE}python\nfor i in range(", ["x = 1"]) == (
        None, ["x = 1"], {"fault": "unterminated_code_block", "tool_calls": 0, "tool_errors": 0})
    assert py.step("So the answer is \\boxed{6}.", ["x = 1"]) == (None, ["x = 1"], {"tool_calls": 0, "tool_errors": 0})


def test_long_output_is_cut_with_a_marker(py):
    observation, _, info = py.step(block("print('a' * 5000)\nprint('the end')"), [])
    content = observation[0]["content"]
    body = content[len("```output\n"):-len("\n```")]
    # max_output_chars=400 of the program's 5008 characters: the first 200 and the last 200
    assert body == "a" * 200 + "\n[... truncated 4608 chars]\n" + "a" * 192 + "\nthe end"
    assert info["tool_errors"] == 0


def test_a_block_that_floods_its_output_is_stopped(py):
    observation, state, info = py.step(block("print('b' * 200_000)\nprint('never')"), [])
    content = observation[0]["content"]
    assert content.startswith("```output\n" + "b" * 200) and "[... truncated " in content
    assert content.endswith("\n[the program was stopped: it wrote more than 65536 bytes]\n```")
    assert info == {"tool_calls": 1, "tool_errors": 1, "status": "error"} and state == []


def test_a_block_that_runs_too_long_times_out(py):
    start = time.monotonic()
    observation, state, info = py.step(block("print('started')\nwhile True:\n    pass"), ["y = 1"])
    assert time.monotonic() - start < 4
    assert observation[0]["content"] == "```output\nstarted\nTimeoutError: timed out after 1 s\n```"
    assert info == {"tool_calls": 1, "tool_errors": 1, "status": "timeout"} and state == ["y = 1"]


def test_a_block_cannot_read_the_host(py, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host data")
    observation, _, info = py.step(block(f"print(open({str(secret)!r}).read())"), [])
    assert "FileNotFoundError" in observation[0]["content"] and "host data" not in observation[0]["content"]


def test_pickle_drops_the_sandbox_and_the_copy_runs(py):
    py.open()
    copy = pickle.loads(pickle.dumps(py))
    assert copy._sandbox is None and (copy.timeout_s, copy.max_output_chars) == (1.0, 400)
    try:
        assert copy.step(block("print(7 * 6)"), [])[0][0]["content"] == "```output\n42\n```"
    finally:
        copy.close()


def test_step_many_runs_concurrently_and_keeps_order(py):
    turns = [block(f"import time\ntime.sleep(0.5)\nprint({i})") for i in range(2)] + ["no code", block("print(1)")]
    start = time.monotonic()
    results = py.step_many(turns, [[], [], [], None])  # the last state is broken: that item is its exception
    assert time.monotonic() - start < 1.4  # the two half-second blocks ran side by side (workers=2)
    assert [r[0][0]["content"] for r in results[:2]] == ["```output\n0\n```", "```output\n1\n```"]
    assert results[2] == (None, [], {"tool_calls": 0, "tool_errors": 0})
    assert isinstance(results[3], TypeError)


# ------------------------------------------------------------------------------------------------ tools
def test_schemas_come_from_type_hints_and_docstrings(tools):
    assert tools.tools[1] == {"type": "function", "function": {
        "name": "describe", "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city's name."},
            "metric": {"type": "boolean", "description": "Celsius when true, else Fahrenheit."}},
            "required": ["city"]},
        "return": {"type": "object"}}}


def test_reset_describes_tools_in_a_system_message_only_when_asked(tools_file, tools):
    assert tools.reset({"prompt": "2+3?"}) == ([{"role": "user", "content": "2+3?"}], None)
    env = ToolsEnv(str(tools_file), describe_tools_in_system=True)
    messages, _ = env.reset({"prompt": "2+3?"})
    assert messages[0]["role"] == "system" and json.dumps(tools.tools[0]) in messages[0]["content"]
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' \
        in messages[0]["content"]


def test_a_call_returns_a_tool_message(tools):
    observation, state, info = tools.step(f"I'll add.\n{call('add', a=2, b=3)}", None)
    assert observation == [{"role": "tool", "name": "add", "content": "5"}]
    assert info == {"tool_calls": 1, "tool_errors": 0} and state is None


def test_two_calls_in_one_turn_answer_in_order(tools):
    turn = call("describe", city="Oslo", metric=False) + "\n" + \
        '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 1}"}</tool_call>'  # arguments as a string
    observation, _, info = tools.step(turn, None)
    assert observation == [{"role": "tool", "name": "describe", "content": '{"city": "Oslo", "unit": "F"}'},
                           {"role": "tool", "name": "add", "content": "2"}]
    assert info == {"tool_calls": 2, "tool_errors": 0}


@pytest.mark.parametrize("turn, fault", [
    ('<tool_call>{"name": "add", "arguments": {"a": 1,}}</tool_call>', "malformed_tool_call: invalid JSON"),
    ('<tool_call>["add"]</tool_call>', 'malformed_tool_call: not a JSON object with a "name" string'),
    ('<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>', 'malformed_tool_call: "arguments" is not'),
    ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}', "malformed_tool_call: a <tool_call> is not closed"),
    (call("add", a=1, b=2) + call("subtract", a=1, b=2), "unknown_tool: subtract"),
])
def test_unreadable_calls_and_unknown_tools_are_faults(tools, turn, fault):
    observation, _, info = tools.step(turn, None)
    assert observation is None and info["fault"].startswith(fault) and info["tool_calls"] == 0


def test_a_raising_tool_answers_with_the_error_and_goes_on(tools):
    observation, _, info = tools.step(call("fail", reason="bad input") + call("add", a=1), None)
    assert observation == [{"role": "tool", "name": "fail", "content": "Error: ValueError: bad input"},
                           {"role": "tool", "name": "add",
                            "content": "Error: TypeError: add() missing 1 required positional argument: 'b'"}]
    assert info == {"tool_calls": 2, "tool_errors": 2}


def test_a_tool_that_runs_too_long_times_out(tools):
    observation, _, info = tools.step(call("nap", seconds=30), None)
    assert observation[0]["content"] == "Error: the tool timed out after 1 s" and info["tool_errors"] == 1


def test_no_call_is_the_final_answer(tools):
    assert tools.step("It is 5.", None) == (None, None, {"tool_calls": 0, "tool_errors": 0})
    assert parse_tool_calls("no calls here") == []


def test_tools_run_inside_the_sandbox(tools, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host data")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        turn = call("read", path=str(secret)) + call("read", path="/etc/hostname") + \
            call("connect", port=server.getsockname()[1])
        observation, _, info = tools.step(turn, None)
    finally:
        server.close()
    assert [m["content"].split(":")[:2] for m in observation] == [["Error", " FileNotFoundError"]] * 2 + \
        [["Error", " ConnectionRefusedError"]]  # the host's loopback server is not reachable from the box
    assert info == {"tool_calls": 3, "tool_errors": 3}


def test_long_tool_results_are_cut(tools_file):
    env = ToolsEnv(str(tools_file), max_output_chars=40)
    try:
        content = env.step(call("describe", city="x" * 100), None)[0][0]["content"]
    finally:
        env.close()
    assert content == '{"city": "' + "x" * 10 + "\n[... truncated 85 chars]\n" + "x" * 5 + '", "unit": "C"}'


def test_tools_env_pickles_without_its_sandbox(tools):
    tools.open()
    copy = pickle.loads(pickle.dumps(tools))
    try:
        assert copy._sandbox is None and copy.tools == tools.tools
        assert copy.step(call("add", a=20, b=22), None)[0][0]["content"] == "42"
    finally:
        copy.close()


def test_docs_example_environment_runs():
    """The example class in docs/environments.md, "Writing an environment", loads and plays a trajectory."""
    from pathlib import Path

    text = Path(__file__).resolve().parents[1].joinpath("docs", "environments.md").read_text()
    section = text.split("## Writing an environment\n", 1)[1]
    source = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(textwrap.dedent(source), namespace)
    env = namespace["GuessNumber"](high=8)
    messages, state = env.reset({"prompt": "Guess my number.", "secret": 5})
    assert messages == [{"role": "user", "content": "Guess my number."}]
    observation, state, info = env.step("My guess: 3", state)
    assert observation == [{"role": "user", "content": "Higher."}] and info["tool_calls"] == 1
    assert env.step("My guess: 5", state) == (None, state, {"reward": 1.0})
    assert env.step("no number", state)[2] == {"fault": "no_guess"}
