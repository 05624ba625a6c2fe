"""The judge and the submission: two processes that rewards/code.py starts in one fresh sandbox per row.

Stdlib only; it runs inside the sandbox, copied there as `harness.py`.

- `python -I -S harness.py --judge CHANNEL_FD [--isolated]` is the judge. Inside the sandbox it is the box's
  PID 1 (`bwrap --as-pid-1`): the submission cannot signal it (the kernel drops signals to a namespace's init that
  it has no handler for), and it makes itself non-dumpable first thing, so the submission (same uid) cannot ptrace
  it or open its memory, environment or file descriptors under /proc/1. It reads one job (marshal) on stdin (the
  program, the tests, the limits), caps its own memory, says `started` on the channel, starts the submission, runs
  the tests in its own interpreter and writes one reply naming the job's id on the channel. Nothing the submission
  can write reaches the channel.
- `python -I -S harness.py --submission` is the submission process, exec'd fresh by the judge (so it inherits
  none of the judge's memory) with the program's rlimits. It gets the program's source on fd 3, runs it, and then
  answers the judge's requests (look up this name, call this, get that attribute, iterate) on fd 4.

The tests see only trusted names (docs/sandbox.md, "The verdict"): the judge's builtins, standard-library modules
the judge imports itself, and the problem's own prompt code. A name the tests use that none of those define is
looked up in the program when the test first reads it. Values cross the boundary as tagged plain data (in
marshal's format, checked before it is decoded): None, bool, int, float, complex, str, bytes, bytearray, and
lists, tuples, sets, frozensets and dicts of those, plus the standard library's value types (Counter,
OrderedDict, defaultdict, deque, namedtuples, Fraction, Decimal, date/time/datetime/timedelta, range), each
checked by exact type and rebuilt by the judge as a fresh object of the judge's own class. Anything else stays
in the submission and reaches the tests as an opaque `Remote` handle whose `==` never asks the program when the
other side is the judge's value, so an object whose `__eq__` always says yes cannot pass a test.
"""
import builtins
import fcntl
import marshal
import os
import resource
import select
try:  # the C module: `signal` itself imports enum, which costs more than a test
    import _signal as signal
except ImportError:  # not CPython
    import signal
import sys
import time

_MAX_DEPTH = 200
_SCALAR_TAGS = {int: "i", float: "f", complex: "c", str: "s", bytes: "y"}
_SCALAR_KINDS = {tag: kind for kind, tag in _SCALAR_TAGS.items()}
_SEQ_TAGS = {list: "l", tuple: "t", set: "S", frozenset: "F"}
_SEQ_KINDS = {tag: kind for kind, tag in _SEQ_TAGS.items()}
_MUTABLE = (list, dict, set, bytearray)  # the judge's arguments whose in-place changes come back
_HIGH_FD = 100
_MAX_VALUE_BYTES = 16 << 20  # one message across the boundary (a call's result): larger is runtime_error
_DETAILS_KEPT = 50  # failure details in the reply; statuses are one character each, so any suite fits
_STATUS_CODES = {"passed": "p", "failed": "f", "compile_error": "c", "runtime_error": "r", "timeout": "t",
                 "memory_limit": "m", "sandbox_error": "s"}
STATUS_NAMES = {code: name for name, code in _STATUS_CODES.items()}
# the program's exceptions reach the tests as one of these (by their nearest builtin ancestor); the others end
# the test as an error of the submission, never as something a test could take for normal control flow
_NO_PASS_EXCEPTIONS = ("StopIteration", "StopAsyncIteration", "GeneratorExit", "SystemExit", "KeyboardInterrupt",
                       "MemoryError")
# standard-library modules whose import does something besides defining names
_NOT_IMPORTED = frozenset({"antigravity", "this", "__hello__", "__phello__", "idlelib", "tkinter", "turtle",
                           "turtledemo", "webbrowser", "pydoc", "ensurepip", "venv"})
_BUILTIN_EXCEPTIONS = {name: kind for name, kind in vars(builtins).items()
                       if isinstance(kind, type) and issubclass(kind, BaseException)}
_type, _isinstance, _id, _len = type, isinstance, id, len
_MISSING = object()
_COMPARISONS = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
                "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b}


class _TestTimeout(BaseException):
    pass


class SubmissionError(Exception):
    """The submission raised an exception with no builtin ancestor a test could catch, or broke the protocol."""


class _SubmissionGone(BaseException):
    """The submission process died or answered with something that is not a reply."""


class _SubmissionMemory(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _TestTimeout()


def _detail(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]


# -- marshal, checked before it allocates ----------------------------------------------------------------------------


def check_marshal(data: bytes) -> None:
    """Walk marshal bytes and raise ValueError unless every container's declared length fits in the bytes that are
    left (marshal.loads pre-allocates a list or tuple from its 4-byte header: 5 bytes can ask for 16 GiB), the
    nesting is shallow, and only data types appear (no code objects)."""
    n, at = len(data), 0
    todo = [1]  # per open container: values still to read; -1 for a dict (values until the '0' that ends it)
    while todo:
        if todo[-1] == 0:
            todo.pop()
            continue
        if at >= n:
            raise ValueError("truncated message")
        code = chr(data[at] & 0x7F)
        at += 1
        if todo[-1] > 0:
            todo[-1] -= 1
        elif code == "0":
            todo.pop()
            continue
        if code in "NTF":
            continue
        if code in "ir":
            at += 4
        elif code == "g":
            at += 8
        elif code == "y":
            at += 16
        elif code in "zZ)":
            if at >= n:
                raise ValueError("truncated message")
            size = data[at]
            at += 1
            if code == ")":
                todo.append(size)
            else:
                at += size
        elif code in "suatAl([<>":
            size = int.from_bytes(data[at:at + 4], "little", signed=True)
            at += 4
            width = 2 if code == "l" else 1  # a long's digits are 2 bytes each; any value takes at least 1
            size = abs(size) if code == "l" else size
            if size < 0 or size * width > n - at:
                raise ValueError("a length in the message is larger than the message")
            if code in "([<>":
                todo.append(size)
            else:
                at += size * width
        elif code == "{":
            todo.append(-1)
        else:
            raise ValueError(f"type {code!r} is not data")
        if len(todo) > _MAX_DEPTH + 50:
            raise ValueError("value nested too deeply")
    if at != n:
        raise ValueError("bytes after the message")


def loads(data: bytes):
    check_marshal(data)
    return marshal.loads(data)


# -- values across the boundary ---------------------------------------------------------------------------------------


def _std_kind(kind: type) -> str:
    """The tag of a standard-library value type (checked by identity with the module's own class), else ''."""
    module = sys.modules.get(getattr(kind, "__module__", None) or "")
    if module is None or getattr(module, getattr(kind, "__qualname__", "") or "", None) is not kind:
        return ""
    return _STD_TYPES.get((module.__name__, kind.__qualname__), "")


_STD_TYPES = {("collections", "Counter"): "C", ("collections", "OrderedDict"): "O", ("collections", "defaultdict"): "D",
              ("collections", "deque"): "Q", ("fractions", "Fraction"): "fr", ("decimal", "Decimal"): "dec",
              ("_decimal", "Decimal"): "dec", ("_pydecimal", "Decimal"): "dec", ("datetime", "date"): "date",
              ("datetime", "datetime"): "dt", ("datetime", "time"): "time", ("datetime", "timedelta"): "td",
              ("datetime", "timezone"): "tz"}
_FACTORIES = ("int", "float", "str", "list", "dict", "set", "tuple", "bool", "bytes", "frozenset", "complex")


def _namedtuple_fields(kind: type):
    if not issubclass(kind, tuple) or kind is tuple:
        return None
    fields = getattr(kind, "_fields", None)
    if _type(fields) is tuple and all(_type(f) is str for f in fields):
        return list(fields)
    return None


def encode(value, refer=None, depth: int = 0, memo=None, skip=None):
    """Tagged plain data for `value`. `refer(obj)` turns anything else into a reference (`["h", ...]`); without it,
    anything else raises TypeError. `memo` (id -> [mirror id, obj]) marks mutable containers so that their identity
    survives the crossing: the first time one is met it gets an id, later meetings become `["m", id]`; `skip` is an
    object encoded in full even when memo knows it (the object whose new state is being sent)."""
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply to cross the boundary")
    kind = _type(value)
    if value is None:
        return ["N"]
    if kind is bool:
        return ["b", value]
    if kind in _SCALAR_TAGS:
        return [_SCALAR_TAGS[kind], value]
    mid = None
    if memo is not None and kind in _MUTABLE or (memo is not None and _std_kind(kind) in ("C", "O", "D", "Q")):
        known = memo.get(_id(value))
        if known is not None and known[1] is value and value is not skip:
            return ["m", known[0]]
        if known is None:
            mid = memo[_id(value)] = [len(memo), value]
            mid = mid[0]
    sub = depth + 1
    if kind in _SEQ_TAGS:
        out = [_SEQ_TAGS[kind], [encode(v, refer, sub, memo) for v in value]]
    elif kind is dict:
        out = ["d", _pairs(value, refer, sub, memo)]
    elif kind is bytearray:
        out = ["ba", bytes(value)]
    elif kind is range:
        return ["rg", value.start, value.stop, value.step]
    elif kind is type and getattr(builtins, getattr(value, "__name__", ""), None) is value:
        return ["ty", value.__name__]
    else:
        tag = _std_kind(kind)
        if tag in ("C", "O"):
            out = [tag, _pairs(value, refer, sub, memo)]
        elif tag == "D":
            factory = getattr(value.default_factory, "__name__", None)
            factory = factory if factory in _FACTORIES and getattr(builtins, factory) is value.default_factory else None
            out = ["D", factory, _pairs(value, refer, sub, memo)]
        elif tag == "Q":
            out = ["Q", [encode(v, refer, sub, memo) for v in value], value.maxlen]
        elif tag == "fr":
            return ["fr", value.numerator, value.denominator]
        elif tag == "dec":
            return ["dec", str(value)]
        elif tag == "date":
            return ["date", value.year, value.month, value.day]
        elif tag == "td":
            return ["td", value.days, value.seconds, value.microseconds]
        elif tag == "tz":
            return ["tz", encode(value.utcoffset(None)), value.tzname(None)]
        elif tag in ("dt", "time"):
            tz = value.tzinfo
            if tz is not None and _std_kind(_type(tz)) != "tz":
                return _refer_or_fail(value, refer)
            parts = [value.hour, value.minute, value.second, value.microsecond, encode(tz), value.fold]
            return [tag, *([value.year, value.month, value.day] if tag == "dt" else []), *parts]
        elif _id(value) in _STAND_INS and _STAND_INS[_id(value)][0] is value:
            return refer(_STAND_INS[_id(value)][1])  # the judge passing back a stand-in: the program's own object
        elif _namedtuple_fields(kind) is not None:
            values = [encode(v, refer, sub, memo) for v in tuple.__iter__(value)]
            out = ["nt", kind.__name__[:60], _namedtuple_fields(kind), values]
            if refer is not None:
                out.append(refer(value))  # the program's methods on it stay callable
            return out
        elif refer is not None and _base_value(kind) is not None:
            # an int/str/list... subclass (an IntEnum member, a `class Stack(list)`): its value as the plain base
            # type, so the program's __eq__ never runs in the judge, and its attributes through a handle
            return ["sub", encode(_base_value(kind)(value), refer, sub), refer(value)]
        else:
            return _refer_or_fail(value, refer)
    if mid is not None:
        out.append(mid)
    return out


_BASES = (int, float, complex, str, bytes, tuple, list, dict, set, frozenset)


def _base_value(kind: type):
    """For a subclass of a plain type (never bool), how to copy an instance's value into the plain type itself,
    using the base type's own methods (the subclass's overrides are not called)."""
    for base in _BASES:
        if issubclass(kind, base) and kind is not base and kind is not bool:
            if base in (int, float, complex, str, bytes):
                return getattr(base, {int: "__int__", float: "__float__", complex: "__complex__", str: "__str__",
                                      bytes: "__bytes__"}[base])
            return lambda value, base=base: base(base.__iter__(value)) if base is not dict else dict(dict.items(value))
    return None


def _pairs(value, refer, depth, memo):
    return [[encode(k, refer, depth, memo), encode(v, refer, depth, memo)] for k, v in dict.items(value)]


def _refer_or_fail(value, refer):
    if refer is None:
        raise TypeError(f"a {type(value).__name__} cannot cross the boundary (plain data only)")
    return refer(value)


def decode(data, resolve=None, depth: int = 0, mirrors=None):
    """The inverse of `encode`, building fresh objects of this process's own classes; raises ValueError on anything
    malformed. `resolve(data)` turns a reference back into an object; `mirrors` (id -> object) collects the mutable
    containers that carry an id and resolves `["m", id]` to them."""
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if _type(data) is not list or not data or _type(data[0]) is not str:
        raise ValueError("malformed value")
    tag, rest = data[0], data[1:]
    sub = depth + 1
    try:
        if tag == "N" and not rest:
            return None
        if tag == "b" and _type(rest[0]) is bool:
            return rest[0]
        if tag in _SCALAR_KINDS and len(rest) == 1 and _type(rest[0]) is _SCALAR_KINDS[tag]:
            return rest[0]
        if tag == "m" and mirrors is not None and _type(rest[0]) is int and rest[0] in mirrors:
            return mirrors[rest[0]]
        if tag in _SEQ_KINDS and _type(rest[0]) is list:
            kind = _SEQ_KINDS[tag]
            if kind in (list, set):
                out = _register(kind(), rest, 1, mirrors)
                items = [decode(v, resolve, sub, mirrors) for v in rest[0]]
                out.extend(items) if kind is list else out.update(items)
                return out
            return kind([decode(v, resolve, sub, mirrors) for v in rest[0]])
        if tag in ("d", "C", "O") and _type(rest[0]) is list:
            out = _register(_dict_kind(tag)(), rest, 1, mirrors)
            return _fill(out, rest[0], resolve, sub, mirrors)
        if tag == "D" and _type(rest[1]) is list and (rest[0] is None or rest[0] in _FACTORIES):
            import collections
            out = _register(collections.defaultdict(getattr(builtins, rest[0]) if rest[0] else None), rest, 2,
                            mirrors)
            return _fill(out, rest[1], resolve, sub, mirrors)
        if tag == "Q" and _type(rest[0]) is list and (rest[1] is None or _type(rest[1]) is int):
            import collections
            out = _register(collections.deque(maxlen=rest[1]), rest, 2, mirrors)
            out.extend(decode(v, resolve, sub, mirrors) for v in rest[0])
            return out
        if tag == "ba" and _type(rest[0]) is bytes:
            return _register(bytearray(rest[0]), rest, 1, mirrors)
        if tag == "rg" and len(rest) == 3 and all(_type(v) is int for v in rest):
            return range(*rest)
        if tag == "ty" and _type(rest[0]) is str and _type(getattr(builtins, rest[0], None)) is type:
            return getattr(builtins, rest[0])
        if tag == "fr" and len(rest) == 2 and all(_type(v) is int for v in rest):
            import fractions
            return fractions.Fraction(rest[0], rest[1])
        if tag == "dec" and _type(rest[0]) is str and len(rest[0]) < 100000:
            import decimal
            return decimal.Decimal(rest[0])
        if tag in ("date", "dt", "time", "td", "tz"):
            return _decode_time(tag, rest)
        if tag == "nt" and _type(rest[0]) is str and _type(rest[1]) is list and _type(rest[2]) is list:
            values = [decode(v, resolve, sub, mirrors) for v in rest[2]]
            handle = decode(rest[3], resolve, sub) if len(rest) > 3 and resolve is not None else None
            return _namedtuple(rest[0], rest[1], values, handle)
        if tag == "sub" and len(rest) == 2 and resolve is not None:
            return _stand_in(decode(rest[0], resolve, sub), decode(rest[1], resolve, sub))
        if tag == "h" and resolve is not None:
            return resolve(data)
    except (IndexError, TypeError, OverflowError, KeyError, ArithmeticError) as exc:
        raise ValueError(f"malformed value: {exc}") from None
    raise ValueError(f"malformed value (tag {tag!r})")


def _dict_kind(tag: str):
    if tag == "d":
        return dict
    import collections
    return collections.Counter if tag == "C" else collections.OrderedDict


def _register(obj, rest, at: int, mirrors):
    if mirrors is not None and len(rest) > at and _type(rest[at]) is int:
        mirrors[rest[at]] = obj
    return obj


def _fill(out, pairs, resolve, depth, mirrors):
    for pair in pairs:
        if _type(pair) is not list or len(pair) != 2:
            raise ValueError("malformed dict item")
        key = decode(pair[0], resolve, depth, mirrors)
        out[key] = decode(pair[1], resolve, depth, mirrors)
    return out


def _decode_time(tag: str, rest: list):
    import datetime
    if tag == "td":
        return datetime.timedelta(days=rest[0], seconds=rest[1], microseconds=rest[2])
    if tag == "tz":
        offset = decode(rest[0])
        return datetime.timezone(offset, rest[1]) if _type(rest[1]) is str else datetime.timezone(offset)
    if tag == "date":
        return datetime.date(*rest[:3])
    head = 3 if tag == "dt" else 0
    ints = rest[:head + 4]
    if not all(_type(v) is int for v in ints):
        raise ValueError("malformed time")
    tz = decode(rest[head + 4])
    if tz is not None and _type(tz) is not datetime.timezone:
        raise ValueError("malformed time zone")
    kind = datetime.datetime if tag == "dt" else datetime.time
    return kind(*ints, tzinfo=tz, fold=rest[head + 5])


_NAMEDTUPLES: dict = {}


def _namedtuple(typename: str, fields: list, values: list, handle):
    """A namedtuple of the judge's own making with the program's type name and fields (equal to what the program's
    equals, field by field); attributes it lacks (the program's methods) are looked up on the program's object."""
    key = (typename, tuple(fields))
    kind = _NAMEDTUPLES.get(key)
    if kind is None:
        import collections
        import keyword
        ok = all(_type(f) is str and f.isidentifier() and not keyword.iskeyword(f) and not f.startswith("_")
                 for f in fields) and len(set(fields)) == len(fields)
        name = typename if typename.isidentifier() and not keyword.iskeyword(typename) else "namedtuple"
        if not ok:
            raise ValueError("malformed namedtuple fields")
        base = collections.namedtuple(name, fields)
        kind = _NAMEDTUPLES[key] = type(name, (base,), {"__slots__": (), "__getattr__": _remote_attribute})
    if len(values) != len(fields):
        raise ValueError("malformed namedtuple")
    out = kind(*values)
    if handle is not None:
        _STAND_INS[_id(out)] = (out, handle)
    return out


_STAND_INS: dict = {}  # id -> (the judge's stand-in, the handle of the program's object it stands for)
_SUBCLASSES: dict = {}


def _stand_in(value, handle):
    """A value of the judge's own subclass of the value's plain type: equal as that type, its other attributes
    (an enum member's `name`) read from the program's object."""
    kind = _type(value)
    if kind is bool:
        return value
    if kind not in _BASES:
        raise ValueError("malformed subclass value")
    stand = _SUBCLASSES.get(kind)
    if stand is None:
        stand = _SUBCLASSES[kind] = type(kind.__name__, (kind,), {"__getattr__": _remote_attribute})
    out = stand(value)
    _STAND_INS[_id(out)] = (out, handle)
    return out


def _remote_attribute(self, name):
    known = _STAND_INS.get(_id(self))
    if name.startswith("__") or known is None or known[0] is not self:
        raise AttributeError(name)
    return getattr(known[1], name)


# -- length-prefixed marshal messages over pipes ---------------------------------------------------------------------


class _Messages:
    """Reads length-prefixed marshal messages from `fd`; while waiting, drains the `drain` fds into capped buffers
    so that a writer to those cannot block. Blocking: the judge's per-test alarm interrupts it. marshal, not json:
    it is built in (json's import alone costs more than a test); what it reads is walked by `check_marshal` before
    marshal sees it, and checked again by `decode`."""

    def __init__(self, fd: int, cap: int, drain: dict | None = None, drain_cap: int = 65536):
        self.fd, self.cap, self.buf = fd, cap, bytearray()
        self.drain = dict(drain or {})
        self.drain_cap = drain_cap

    def read(self):
        while True:
            if len(self.buf) >= 4:
                size = int.from_bytes(self.buf[:4], "big")
                if size > self.cap:
                    raise _SubmissionGone(f"reply larger than the {self.cap >> 20} MiB a value may take")
                if len(self.buf) >= 4 + size:
                    payload = bytes(self.buf[4:4 + size])
                    del self.buf[:4 + size]
                    try:
                        return loads(payload)
                    except (EOFError, ValueError, TypeError) as exc:
                        raise ValueError(f"malformed message: {exc}") from None
            ready, _, _ = select.select([self.fd, *self.drain], [], [])
            for fd in ready:
                chunk = os.read(fd, 1 << 16)
                if fd == self.fd:
                    if not chunk:
                        raise _SubmissionGone("the submission exited")
                    self.buf += chunk
                elif not chunk:
                    del self.drain[fd]
                else:
                    buf = self.drain[fd]
                    if len(buf) < self.drain_cap:
                        buf += chunk[: self.drain_cap - len(buf)]


def frames(data: bytes) -> list:
    """Every whole message in `data` (the host reading the judge's channel)."""
    out, at = [], 0
    while at + 4 <= len(data):
        size = int.from_bytes(data[at:at + 4], "big")
        if at + 4 + size > len(data):
            break
        try:
            out.append(loads(data[at + 4:at + 4 + size]))
        except (EOFError, ValueError, TypeError):
            pass
        at += 4 + size
    return out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _send(fd: int, message: dict) -> None:
    data = marshal.dumps(message)
    _write_all(fd, len(data).to_bytes(4, "big") + data)


# -- the submission process ------------------------------------------------------------------------------------------


def submission_main() -> None:
    """Run the program from fd 3, then serve the judge's requests on fds 3/4 until fd 3 closes."""
    ctrl_in = _Messages(3, 1 << 30)
    out = 4
    try:
        job = ctrl_in.read()
        _lower_rlimits(job.get("rlimits") or {})
    except BaseException:  # noqa: BLE001
        os._exit(3)
    mode = job["mode"]
    try:
        code = compile(job["program"], "solution.py", "exec")
    except (SyntaxError, ValueError) as exc:
        _send(out, {"status": "compile_error", "detail": _detail(exc)})
        os._exit(1)
    del job
    for name in ("exit", "quit"):  # what `site` adds under plain CPython; -S leaves them out
        if not hasattr(builtins, name):
            setattr(builtins, name, _Exit(name))
    # a real module, registered under its name, as `python solution.py` would have it (dataclasses, pickle and
    # typing look the program's module up in sys.modules)
    module = type(sys)("__main__" if mode == "stdio" else "solution")
    module.__builtins__ = builtins
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    status = "ok"
    try:
        exec(code, namespace)
        error = None
    except SystemExit as exc:  # a stdin/stdout program may end with exit(); only a clean code is a success
        error = None if exc.code in (None, 0) else exc
    except BaseException as exc:  # noqa: BLE001 - everything the program raises is its own failure
        error = exc
    if mode == "stdio":
        try:
            sys.stdout.flush()
        except BaseException as exc:  # noqa: BLE001
            error = error or exc
        if error is not None:
            _send(out, {"status": _kind(error), "detail": _detail(error)})
            os._exit(1)
        os._exit(0)
    if error is not None:
        status = "runtime_error" if isinstance(error, (AssertionError, SystemExit)) else _kind(error)
        detail = _detail(error)
        del error
        namespace.clear()  # after a MemoryError the program's data may still fill the address space
        _send(out, {"status": status, "detail": detail})
        os._exit(1)
    served = _Served(namespace)
    _send(out, {"status": "ok"})
    while True:
        try:
            request = ctrl_in.read()
        except _SubmissionGone:
            os._exit(0)
        try:
            reply = served.answer(request)
            data = marshal.dumps(reply)
        except BaseException as exc:  # noqa: BLE001 - a value marshal cannot write (nested too deeply)
            data = marshal.dumps({"seq": request.get("seq"), "raise": [type(exc).__name__[:60], str(exc)[:200],
                                                                        _builtin_ancestor(exc)]})
        _write_all(out, len(data).to_bytes(4, "big") + data)


class _Exit:
    """`exit()` / `quit()` as `site` defines them: end the program with SystemExit."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"Use {self.name}() to exit"

    def __call__(self, code=None):
        raise SystemExit(code)


class _Served:
    """The submission's side of the requests: its namespace and the objects it has handed out by reference."""

    def __init__(self, namespace: dict):
        self.namespace = namespace
        self.objects: list = []
        self.index: dict = {}  # id -> position in objects (the same object keeps its reference)

    def refer(self, obj):
        at = self.index.get(_id(obj))
        if at is None or self.objects[at] is not obj:
            at = self.index[_id(obj)] = _len(self.objects)
            self.objects.append(obj)
        kind = _type(obj)
        if _isinstance(obj, type):
            role = "exception" if issubclass(obj, BaseException) else "class"
            base = _builtin_ancestor_of(obj) if role == "exception" else ""
            return ["h", at, obj.__name__[:60], role, base]
        role = "function" if kind.__name__ in ("function", "builtin_function_or_method", "method") else "object"
        return ["h", at, kind.__name__[:60], role, ""]

    def resolve(self, data):
        index = data[1]
        if _type(index) is not int or not 0 <= index < _len(self.objects):
            raise ValueError("unknown reference")
        return self.objects[index]

    def answer(self, request: dict) -> dict:
        seq = request.get("seq")
        op = request.get("op")
        try:
            if op == "name":
                return self._name(seq, request.get("name"))
            mirrors: dict = {}
            target = decode(request["target"], self.resolve)
            if op == "call":
                args = decode(request["args"], self.resolve, mirrors=mirrors)
                kwargs = decode(request["kwargs"], self.resolve, mirrors=mirrors)
                memo = {_id(obj): [mid, obj] for mid, obj in mirrors.items()}
                before = {mid: encode(obj, self.refer, memo=memo, skip=obj) for mid, obj in mirrors.items()}
                result = target(*args, **kwargs)
                reply = {"seq": seq, "value": encode(result, self.refer, memo=memo)}
                changed = {}
                for mid, obj in mirrors.items():
                    after = encode(obj, self.refer, memo=memo, skip=obj)
                    if after != before[mid]:
                        changed[mid] = after
                if changed:
                    reply["mirrors"] = changed
                return reply
            if op == "getattr":
                value = getattr(target, request["name"])
            elif op == "iter":
                return {"seq": seq, "value": self.refer(iter(target))}
            elif op == "next":
                value = next(target)
            elif op == "getitem":
                value = target[decode(request["key"], self.resolve)]
            elif op == "len":
                value = len(target)
            elif op in ("str", "repr"):
                value = (str if op == "str" else repr)(target)[:10000]
            elif op == "bool":
                value = bool(target)
            elif op in _COMPARISONS:
                value = _COMPARISONS[op](target, decode(request["other"], self.resolve))
            elif op == "contains":
                value = decode(request["item"], self.resolve) in target
            elif op in ("isinstance", "issubclass"):
                other = decode(request["other"], self.resolve)
                value = (isinstance if op == "isinstance" else issubclass)(other, target)
            else:
                raise ValueError(f"unknown request {op!r}")
            return {"seq": seq, "value": encode(value, self.refer)}
        except BaseException as exc:  # noqa: BLE001 - the judge decides what the exception means for the test
            return {"seq": seq, "raise": [type(exc).__name__[:60], str(exc)[:200], _builtin_ancestor(exc)]}

    def _name(self, seq, name) -> dict:
        """What the program's top level bound to `name`: a module (by the module's name: the judge imports its own),
        nothing, or the value."""
        if _type(name) is not str:
            return {"seq": seq, "kind": "undefined"}
        value = self.namespace.get(name, _MISSING)
        if value is _MISSING:
            return {"seq": seq, "kind": "undefined"}
        if _type(value).__name__ == "module":
            return {"seq": seq, "kind": "module", "module": str(getattr(value, "__name__", ""))[:200]}
        return {"seq": seq, "kind": "value", "value": encode(value, self.refer)}


def _builtin_ancestor_of(kind: type) -> str:
    for base in getattr(kind, "__mro__", ()):
        if _BUILTIN_EXCEPTIONS.get(getattr(base, "__name__", "")) is base:
            return base.__name__
    return "BaseException"


def _builtin_ancestor(exc: BaseException) -> str:
    return _builtin_ancestor_of(_type(exc))


def _kind(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "memory_limit"
    if isinstance(exc, SyntaxError):
        return "compile_error"
    return "runtime_error"


# -- the judge --------------------------------------------------------------------------------------------------------


class Remote:
    """Something of the submission's that is not plain data: calls, attributes, iteration, indexing, `len`, `str`,
    truth, `isinstance` against it and `==` against another of the submission's objects go to the submission;
    `==` against the judge's own values is this handle's identity, never the program's `__eq__`; hashing is
    identity. `sealed`: only calls go through (a program function bound to a standard-library module's name)."""

    __slots__ = ("_sub", "_ref", "_gen", "_role", "_sealed")

    def __init__(self, sub, ref, role: str = "object", sealed: bool = False):
        for name, value in (("_sub", sub), ("_ref", ref), ("_gen", sub.gen), ("_role", role), ("_sealed", sealed)):
            object.__setattr__(self, name, value)

    def _ask(self, op, **fields):
        return self._sub.request(op, self, **fields)

    def __call__(self, *args, **kwargs):
        return self._ask("call", args=args, kwargs=kwargs)

    def __getattr__(self, name):
        if name.startswith("__") or self._sealed:
            raise AttributeError(name)
        return self._ask("getattr", name=name)

    def __iter__(self):
        return self._ask("iter")

    def __next__(self):
        return self._ask("next")

    def __getitem__(self, key):
        return self._ask("getitem", key=key)

    def __len__(self):
        return self._ask("len")

    def __str__(self):
        return self._ask("str")

    def __bool__(self):
        return self._ask("bool") is True

    def __contains__(self, item):
        return self._ask("contains", item=item) is True

    def __eq__(self, other):
        if _type(other) is Remote and other._sub is self._sub:
            return self._ask("eq", other=other)
        return NotImplemented

    def __ne__(self, other):
        if _type(other) is Remote and other._sub is self._sub:
            return self._ask("ne", other=other)
        return NotImplemented

    def _compare(self, op, other):
        if _type(other) is Remote and other._sub is self._sub:
            return self._ask(op, other=other)
        return NotImplemented

    def __lt__(self, other):
        return self._compare("lt", other)

    def __le__(self, other):
        return self._compare("le", other)

    def __gt__(self, other):
        return self._compare("gt", other)

    def __ge__(self, other):
        return self._compare("ge", other)

    def __hash__(self):
        return hash((_id(self._sub), self._gen, self._ref[1]))

    def __instancecheck__(self, obj):
        try:
            return self._ask("isinstance", other=obj) is True
        except TypeError:  # a judge-side object that cannot cross is no instance of the program's class
            return False

    def __subclasscheck__(self, kind):
        try:
            return self._ask("issubclass", other=kind) is True
        except TypeError:
            return False

    def __repr__(self):
        return f"<{self._ref[2] if len(self._ref) > 2 else 'object'} of the submission>"


class _Submission:
    """The judge's side of one submission process."""

    def __init__(self, isolated: bool):
        self.job: dict = {}
        self.isolated = isolated
        self.pid = -1
        self.returncode = None
        self.err = bytearray()
        self.seq = 0
        self.gen = 0  # which run of the program: handles from an earlier run are dead
        self.remotes: dict = {}
        self.names: dict = {}
        self.prompt: dict | None = None

    def spawn(self, fresh_exec: bool = True) -> None:
        """Start a submission process with pipes for its stdin, stdout, stderr and the requests both ways.

        `fresh_exec=False` (once, before the judge has read its job) forks it without exec: the judge's memory then
        holds nothing but the harness, so the child needs no interpreter start of its own. Later ones (after a test
        killed the last) are exec'd fresh: by then the judge holds the tests."""
        pipes = [os.pipe() for _ in range(5)]  # stdin, stdout, stderr, requests, replies
        (in_r, in_w), (out_r, out_w), (err_r, err_w), (c_in_r, c_in_w), (c_out_r, c_out_w) = pipes
        if fresh_exec:
            argv = [sys.executable, *self.job["interpreter_flags"],
                    *launcher(os.path.dirname(os.path.abspath(__file__))), "--submission"]
        pid = os.fork()
        if pid == 0:
            try:
                wanted = [in_r, out_w, err_w, c_in_r, c_out_w]
                high = [fcntl.fcntl(fd, fcntl.F_DUPFD, _HIGH_FD) for fd in wanted]
                for target, fd in enumerate(high):
                    os.dup2(fd, target)
                os.closerange(len(wanted), 1 << 16)
                os.setsid()
                if fresh_exec:
                    _lower_rlimits(self.job["rlimits"])
                    os.execv(argv[0], argv)
                else:
                    _set_dumpable(1)  # the judge's flag is inherited; this process has nothing to hide
                    submission_main()
            finally:
                os._exit(127)
        for fd in (in_r, out_w, err_w, c_in_r, c_out_w):
            os.close(fd)
        self.pid = pid
        self.in_w, self.out_r, self.err_r, self.ctrl_w, self.ctrl_r = in_w, out_r, err_r, c_in_w, c_out_r
        self.err = bytearray()

    def start(self) -> tuple[str, str]:
        """Run the program in the submission (a fresh one unless the preforked one is waiting); returns the
        program's (status, detail)."""
        if self.pid <= 0:
            self.spawn()
        self.gen += 1
        self.remotes, self.names = {}, {}
        os.close(self.in_w)  # with asserts the program's stdin is empty
        self.in_w = -1
        self.reader = _Messages(self.ctrl_r, _MAX_VALUE_BYTES, {self.err_r: self.err, self.out_r: bytearray()})
        try:
            _send(self.ctrl_w, {"mode": "asserts", "program": self.job["program"], "rlimits": self.job["rlimits"]})
            ready = self.reader.read()
        except _SubmissionGone as exc:
            return self.exit_status(str(exc))
        except (ValueError, OSError) as exc:
            return "runtime_error", f"the submission broke the protocol: {_detail(exc)}"
        if type(ready) is not dict or ready.get("status") != "ok":
            status = ready.get("status") if type(ready) is dict else None
            if status not in ("compile_error", "runtime_error", "memory_limit"):
                status = "runtime_error"
            return status, str(ready.get("detail", ""))[:200] if type(ready) is dict else ""
        return "ok", ""

    # -- names the tests read -----------------------------------------------------------------------------------

    def lookup(self, name: str):
        """The value of a name the tests read that they did not define themselves; KeyError sends Python on to the
        judge's builtins (or to NameError). Order: the judge's builtins (unless it is the row's entry point), the
        problem's prompt code (its helpers, never its stubs), then the program's top level, except that a name of a
        standard-library module is that module, imported by the judge, unless the program bound it to a function
        or class of its own (which the tests may then only call)."""
        if name in self.names:
            return self.names[name]
        entry = self.job.get("entry_point")
        if name.startswith("__") or (name in _BUILTIN_NAMES and name != entry):
            raise KeyError(name)
        if name in self.job.get("prompt_names", ()) and name != entry:
            value = self._prompt()[name]
        else:
            value = self._program_name(name)
        self.names[name] = value
        return value

    def _program_name(self, name: str, plain: bool = False):
        """The program's binding of `name`; `plain`: as it is (the test imported it from the program by name),
        else with the standard-library rule of `lookup`."""
        reply = self._exchange({"op": "name", "name": name})
        kind = reply.get("kind")
        std = name in _STD_MODULES and not plain
        if kind == "module":
            module = reply.get("module")
            if type(module) is str and self._importable(module):
                return _import(module)
            raise KeyError(name)
        if kind == "undefined":
            if std and self._importable(name):
                return _import(name)
            raise KeyError(name)
        if kind != "value":
            raise _SubmissionGone("the submission answered out of turn")
        value = self._decode(reply.get("value"))
        if std:
            if type(value) is Remote and value._role in ("function", "class", "exception"):
                object.__setattr__(value, "_sealed", True)
                return value
            if self._importable(name):
                return _import(name)
        return value

    def _importable(self, module: str) -> bool:
        top = module.split(".")[0]
        if top in _NOT_IMPORTED:
            return False
        return top in _STD_MODULES or "-S" not in self.job.get("interpreter_flags", ())

    def _prompt(self) -> dict:
        """The problem's prompt code (trusted: it comes with the tests), run once in the judge on first use."""
        if self.prompt is None:
            self.prompt = {"__name__": "prompt", "__builtins__": builtins}
            exec(compile(self.job["prompt_code"], "prompt.py", "exec"), self.prompt)
        return self.prompt

    # -- requests -----------------------------------------------------------------------------------------------

    def resolve(self, data):
        if len(data) != 5 or type(data[1]) is not int or type(data[2]) is not str:
            raise ValueError("malformed reference")
        index, role, base = data[1], data[3], data[4]
        if role == "exception" and type(base) is str:
            return _exception_class(data[2], base)
        remote = self.remotes.get(index)
        if remote is None:
            remote = self.remotes[index] = Remote(self, ["h", index, data[2]], str(role))
        return remote

    def refer(self, obj):
        if type(obj) is Remote and obj._sub is self and obj._gen == self.gen:
            return obj._ref[:2]
        raise TypeError(f"a {type(obj).__name__} cannot be passed to the submission (plain data only)")

    def _decode(self, data, mirrors=None):
        try:
            return decode(data, self.resolve, mirrors=mirrors)
        except (ValueError, RecursionError) as exc:
            raise _SubmissionGone(f"the submission broke the protocol: {exc}") from None

    def _exchange(self, message: dict) -> dict:
        self.seq += 1
        message["seq"] = self.seq
        try:
            _send(self.ctrl_w, message)
            reply = self.reader.read()
        except (BrokenPipeError, ValueError):
            raise _SubmissionGone("the submission broke the protocol") from None
        if type(reply) is not dict or reply.get("seq") != self.seq:
            raise _SubmissionGone("the submission answered out of turn")
        return reply

    def request(self, op: str, target: Remote, **fields):
        if target._gen != self.gen or self.pid <= 0:
            raise _SubmissionGone("a handle from an earlier run of the program")
        message = {"op": op, "target": encode(target, self.refer)}
        memo: dict = {}  # the judge's mutable arguments, by mirror id: their identity survives the call
        if op == "call":
            message["args"] = ["t", [encode(v, self.refer, memo=memo) for v in fields["args"]]]
            message["kwargs"] = ["d", [[["s", k], encode(v, self.refer, memo=memo)]
                                       for k, v in fields["kwargs"].items()]]
        elif op == "getattr":
            message["name"] = fields["name"]
        else:
            for key, value in fields.items():
                message[key] = encode(value, self.refer)
        reply = self._exchange(message)
        if "raise" in reply:
            name, text, base = (list(reply["raise"]) + ["", "", ""])[:3]
            _raise_as(str(name), str(text), str(base), op)
        originals = {mid: obj for mid, obj in memo.values()}
        mirrors = dict(originals)  # + the containers the result brings: the arguments' new states may hold them
        value = self._decode(reply.get("value"), mirrors)
        if op in ("bool", "contains", "isinstance", "issubclass") and type(value) is not bool:
            raise TypeError(f"the submission's {op} answered a {type(value).__name__}, not a bool")
        if op == "call" and type(reply.get("mirrors")) is dict:
            self._copy_back(originals, mirrors, reply["mirrors"])
        return value

    def _copy_back(self, originals: dict, mirrors: dict, states: dict) -> None:
        """The arguments the program changed in place (sorting a list it was given, filling a dict): the same change
        to the judge's objects, with identity kept for the judge's containers nested inside them and for what the
        call returned."""
        new = {}
        for mid, state in states.items():
            if type(mid) is not int or mid not in originals:
                raise _SubmissionGone("the submission broke the protocol: unknown argument")
            new[mid] = self._decode(state, mirrors)
        for mid, value in new.items():
            original = originals[mid]
            if type(value) is not type(original):
                raise _SubmissionGone("the submission broke the protocol: an argument changed type")
            if type(original) in (list, bytearray):
                original[:] = value
            else:  # dict and its subclasses, set, deque
                original.clear()
                original.update(value) if hasattr(original, "update") else original.extend(value)

    def exit_status(self, reason: str = "") -> tuple[str, str]:
        """Why the submission stopped answering: the way it exited, else `reason` (it was then killed)."""
        signal.setitimer(signal.ITIMER_REAL, 0)
        on_its_own = self.kill(grace_s=0.2)
        err = bytes(self.err).decode(errors="replace")
        if self.returncode == -signal.SIGXCPU:
            return "timeout", "cpu-time limit"
        if "MemoryError" in err:
            return "memory_limit", "MemoryError"
        if not on_its_own:
            return "runtime_error", reason[:200]
        tail = err.strip().replace("\n", " ")[-150:]
        return "runtime_error", f"the submission exited with code {self.returncode} {tail}".strip()

    def kill(self, grace_s: float = 0.0) -> bool:
        """Kill the submission and everything it started, after waiting up to `grace_s` for it to exit by itself;
        reap it. True when it had exited by itself."""
        if self.pid <= 0:
            self._close_pipes()
            return True
        on_its_own = False
        deadline = time.monotonic() + grace_s
        while True:
            pid, raw = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                on_its_own = True
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.002)
        for target in (-self.pid, self.pid):
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass
        if self.isolated:  # PID 1 of the box: every other process in it is the submission's
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
        if not on_its_own:
            _, raw = os.waitpid(self.pid, 0)
        self.returncode = -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)
        self.pid = -1
        self._close_pipes()
        _reap()
        return on_its_own

    def _close_pipes(self) -> None:
        for name in ("ctrl_w", "ctrl_r", "err_r", "in_w", "out_r"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
            setattr(self, name, -1)


_BUILTIN_NAMES = frozenset(vars(builtins))
_STD_MODULES = frozenset(getattr(sys, "stdlib_module_names", ()))
_EXCEPTION_CLASSES: dict = {}


def _import(module: str):
    __import__(module)
    return sys.modules[module]


def _exception_class(name: str, base: str) -> type:
    """The judge's stand-in for an exception class of the program: a subclass of its nearest builtin ancestor with
    the program's name, the same class every time (so `except ProgramError` in a test catches what the program
    raised). Ancestors that must not pass for control flow become SubmissionError."""
    key = (name, base)
    kind = _EXCEPTION_CLASSES.get(key)
    if kind is None:
        parent = _BUILTIN_EXCEPTIONS.get(base)
        if parent is None or base in _NO_PASS_EXCEPTIONS or not issubclass(parent, Exception):
            parent = SubmissionError
        if name == base and parent.__name__ == name:
            kind = parent
        else:
            label = name if name.isidentifier() else "ProgramError"
            kind = type(label, (parent,), {"__module__": "solution", "__init__": _exception_init,
                                           "__str__": _exception_str})
        _EXCEPTION_CLASSES[key] = kind
    return kind


def _exception_init(self, *args):
    BaseException.__init__(self, *args)


def _exception_str(self):
    return str(self.args[0]) if len(self.args) == 1 else BaseException.__str__(self)


def _raise_as(name: str, text: str, base: str, op: str) -> None:
    """Raise, in the judge, what the submission raised: the builtin exception itself, or the judge's stand-in for
    the program's class (a test may expect a ValueError). StopIteration ends only an iteration the test asked for
    (`next`); from any other call it would end the test's own `map`/`all` early, so it is an error there."""
    if base == "MemoryError" or name == "MemoryError":
        raise _SubmissionMemory(text)
    if op == "next" and base == "StopIteration":
        raise StopIteration(text) if name == "StopIteration" else _exception_class(name, "StopIteration")(text)
    if base in _NO_PASS_EXCEPTIONS or base not in _BUILTIN_EXCEPTIONS:
        raise SubmissionError(f"{name}: {text}")
    kind = _exception_class(name, base)
    try:
        exc = kind(text)
    except Exception:  # noqa: BLE001 - a builtin whose constructor wants more arguments (UnicodeDecodeError)
        exc = _exception_class(name + "_", base)(text)
    raise exc


def _reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _test_status(exc: BaseException) -> str:
    if isinstance(exc, _TestTimeout):
        return "timeout"
    if isinstance(exc, (MemoryError, _SubmissionMemory)):
        return "memory_limit"
    if isinstance(exc, AssertionError):
        return "failed"
    return "runtime_error"


class _TestGlobals(dict):
    """A test's namespace: what the test defines, plus, on first read, the names `_Submission.lookup` resolves."""

    __slots__ = ("sub",)

    def __missing__(self, name):
        value = self.sub.lookup(name)
        self[name] = value
        return value


def _pytest_functions(namespace: dict, filename: str) -> list:
    """The `test*` functions a pytest-style test file defines (taking no arguments): they run after the file, in
    the order defined, as pytest would run them; a file that only defines them must not pass by defining them."""
    found = []
    for name, value in list(namespace.items()):
        code = getattr(value, "__code__", None)
        if (name.startswith("test") and type(value).__name__ == "function" and code is not None
                and code.co_filename == filename and code.co_argcount == 0 and not code.co_kwonlyargcount):
            found.append(value)
    return found


class _ProgramModule(type(sys)):
    """`solution`, as the judge's tests import it (`from solution import add`): each attribute is the program's own
    binding of that name (the test asked for the program's, by name), looked up in the submission."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return _SOLUTION_OF[0]._program_name(name, plain=True)
        except KeyError:
            raise AttributeError(name) from None


_SOLUTION_OF: list = []  # the submission whose program `import solution` in a test reaches


def judge_asserts(job: dict, sub: _Submission) -> dict:
    timeout = float(job["timeout_s"])
    _SOLUTION_OF[:] = [sub]
    sys.modules["solution"] = _ProgramModule("solution")
    tests = job["tests"]
    codes, details = [], {}
    program = None
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        program = sub.start()
    except _TestTimeout:
        program = ("timeout", "the program's top level ran past the time limit")
    except OSError as exc:  # fork failed: the submission filled the process table
        program = ("runtime_error", _detail(exc))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if program[0] != "ok":
        sub.kill()
        return {"program": list(program), "codes": "", "details": {}}
    for index, test in enumerate(tests):
        broken = False  # the submission is stuck, full or dead: the next test gets a fresh one
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            if sub.pid <= 0:  # the last test ended it: a fresh one, with the program run again
                again = sub.start()
                if again[0] != "ok":
                    raise _SubmissionGone(f"{again[0]}: {again[1]}")
            namespace = _TestGlobals(__name__="__main__", __builtins__=builtins)
            namespace.sub = sub
            filename = f"test_{index}.py"
            exec(compile(test, filename, "exec"), namespace)
            for function in _pytest_functions(namespace, filename):
                function()
            status, detail = "passed", ""
        except _SubmissionGone as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            status, detail = sub.exit_status(str(exc))
        except SystemExit as exc:
            status, detail = "runtime_error", _detail(exc)
        except BaseException as exc:  # noqa: BLE001 - the test's own exception, or the submission's re-raised
            status = _test_status(exc)
            detail = "time limit" if status == "timeout" else _detail(exc)
            broken = status in ("timeout", "memory_limit")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if broken:
            sub.kill()
        codes.append(_STATUS_CODES[status])
        if status != "passed" and len(details) < _DETAILS_KEPT:
            details[index] = detail
    sub.kill()
    return {"program": ["ok", ""], "codes": "".join(codes), "details": details}


def judge_stdio(job: dict, sub: _Submission) -> dict:
    """Feed the case's stdin, read stdout up to the cap, and compare with the expected output here, in the judge:
    the reply carries the verdict and short excerpts, never the whole output."""
    timeout = float(job["timeout_s"])
    expected = job["expected"]
    cap = max(int(job["output_bytes"]), 2 * len(expected.encode()) + 4096)
    if sub.pid <= 0:
        sub.spawn()
    bufs = {sub.out_r: bytearray(), sub.err_r: bytearray(), sub.ctrl_r: bytearray()}
    stdout, stderr, ctrl = (bufs[fd] for fd in (sub.out_r, sub.err_r, sub.ctrl_r))
    caps = {sub.out_r: cap, sub.err_r: 1 << 16, sub.ctrl_r: 1 << 16}
    flooded = False
    program = ("ok", "")
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        _send(sub.ctrl_w, {"mode": "stdio", "program": job["program"], "rlimits": job["rlimits"]})
        pending = memoryview(job["stdin"].encode())
        os.set_blocking(sub.in_w, False)
        open_reads = set(bufs)
        while open_reads and not flooded:
            writers = [sub.in_w] if sub.in_w >= 0 else []
            readable, writable, _ = select.select(list(open_reads), writers, [])
            if writable:
                try:
                    pending = pending[os.write(sub.in_w, pending[:1 << 16]):]
                except BlockingIOError:
                    pass
                except BrokenPipeError:
                    pending = pending[:0]
                if not pending:
                    os.close(sub.in_w)
                    sub.in_w = -1
            for fd in readable:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    open_reads.discard(fd)
                    continue
                room = caps[fd] - len(bufs[fd])
                bufs[fd] += chunk[:max(room, 0)]
                flooded |= fd == sub.out_r and len(chunk) > room  # stderr past its cap is dropped, not fatal
        if not flooded:
            _, raw = os.waitpid(sub.pid, 0)  # stdout closed is not the end: the process must exit in time
            code = -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)
            sub.pid = -1
            program = _stdio_status(code, bytes(ctrl), bytes(stderr))
    except _TestTimeout:
        program = ("timeout", "time limit")
    except OSError as exc:
        program = ("runtime_error", _detail(exc))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    sub.kill()
    got = bytes(stdout).decode(errors="replace")
    if flooded:
        verdict, detail = "failed", f"output limit exceeded ({cap} bytes of stdout)"
    elif program[0] != "ok":
        verdict, detail = program
    elif lines(got) == lines(expected):
        verdict, detail = "passed", ""
    else:
        verdict, detail = "failed", f"expected {expected.strip()[:60]!r}, got {got.strip()[:60]!r}"
    return {"program": list(program), "verdict": verdict, "detail": detail[:200], "truncated": flooded,
            "stdout_head": bytes(stdout[:2048]), "stderr_tail": bytes(stderr[-2048:])}


def lines(text: str) -> list:
    """How stdin/stdout answers compare: line by line, trailing whitespace and blank edges ignored."""
    return [line.rstrip() for line in text.strip().splitlines()]


def _stdio_status(code: int, ctrl: bytes, err: bytes) -> tuple[str, str]:
    if code == 0:
        return "ok", ""
    if code == -signal.SIGXCPU:
        return "timeout", "cpu-time limit"
    said = (frames(ctrl) or [None])[0]
    if type(said) is dict and said.get("status") in ("compile_error", "runtime_error", "memory_limit"):
        return said["status"], str(said.get("detail", ""))[:200]
    if b"MemoryError" in err:
        return "memory_limit", "MemoryError"
    return "runtime_error", f"exited with code {code}"


def boot_command(folder: str) -> list[str]:
    """How to start this harness from `folder` when the host put it there precompiled (`harness.bin`, marshal of
    the code object, same interpreter): compiling 700 lines costs more than the tests of most rows."""
    code = (f"import marshal;exec(marshal.loads(open({folder + '/harness.bin'!r},'rb').read()),"
            f"dict(__name__='__main__',__file__={folder + '/harness.py'!r},__builtins__=__builtins__))")
    return ["-c", code]


def launcher(folder: str) -> list[str]:
    if os.path.exists(os.path.join(folder, "harness.bin")):
        return boot_command(folder)
    return [os.path.join(folder, "harness.py")]


def _set_dumpable(flag: int) -> None:
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, flag, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
        raise OSError(ctypes.get_errno(), f"prctl(PR_SET_DUMPABLE, {flag}) failed")


def _lower_rlimits(limits: dict) -> None:
    for name, value in limits.items():
        limit = getattr(resource, name)
        hard = resource.getrlimit(limit)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)  # only lowering is allowed
        resource.setrlimit(limit, (value, value))


def judge_main(channel_fd: int, isolated: bool) -> None:
    _set_dumpable(0)
    sub = _Submission(isolated)
    sub.spawn(fresh_exec=False)  # before the job is read: nothing of the tests is in this memory yet
    raw = b""
    while True:  # the job, whole, before anything else runs
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        raw += chunk
    job = marshal.loads(raw)  # the host wrote it: trusted
    # the judge's own limits: what it decodes is bounded by check_marshal, what it holds by its address space
    _lower_rlimits({name: job["rlimits"][name] for name in ("RLIMIT_AS", "RLIMIT_CORE") if name in job["rlimits"]})
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):  # the tests' prints go nowhere; the channel is the only way out
        os.dup2(null, fd)
    os.close(null)
    channel = fcntl.fcntl(channel_fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(channel_fd)
    _send(channel, {"id": job["id"], "event": "started"})
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        sub.job = job
        reply = judge_stdio(job, sub) if job["mode"] == "stdio" else judge_asserts(job, sub)
    except BaseException as exc:  # noqa: BLE001 - the judge must answer; the host scores what it says
        reply = {"program": ["runtime_error", f"judge: {_detail(exc)}"], "codes": "", "details": {}}
    reply.update({"id": job["id"], "event": "done"})
    _send(channel, reply)


if __name__ == "__main__":
    if sys.argv[1] == "--submission":
        submission_main()
    else:
        judge_main(int(sys.argv[2]), "--isolated" in sys.argv[3:])
