"""Math answer reward: 1 if the completion's final answer equals the gold answer, else 0, with a reason.

    from rewards import math_reward        # TRL signature: (prompts, completions, answer, **columns)
    math_reward(prompts, ["... so \\boxed{\\frac12}"], answer=["0.5"])   # -> [1.0]

Pipeline per row: take the final answer out of the completion (`rewards.extract`), normalize both strings
(units, currency, `percent`, scientific notation, `\\left`/`\\right`...), then decide equivalence with
math-verify (gold parsed first, `verify(gold, answer)` in that order, because verify is asymmetric), falling
back to a guarded sympy parse of plain-text answers where math-verify's LaTeX reading gives up (`pi/2`).
A completion with no answer marker is read by math-verify's own extraction (`extraction="mathverify"`, the
default) or counts as no answer (`extraction="markers"`).
Exact numbers, fractions, percents and number lists are decided in the parent without sympy; every other
check runs in a worker process under a hard wall-clock limit (`rewards.pool`). Identical normalized
(gold, answer) pairs are checked once per process and cached.

An answer that names several candidates (`\\boxed{4 \\text{ or } 5}`, `4 \\approx 5`, `\\boxed{4}, or 5`, `C or D`)
is `hedged`, whichever one the gold is (`rewards.hedge` finds them); the marker-less fallbacks never read code,
questions or the prompt's own text.

Format as asked: when the prompt the model saw asks for the answer in `\\boxed{}` (the rollout's `sampled_prompt`
column, which holds any template, else the prompt), a completion with no `\\boxed{}` scores 0
`format_not_followed`, however right its final number (`as_asked=False` reads any answer, as before).

Reasons: `correct` (1), `wrong` (0), `no_answer` (0), `hedged` (0), `format_not_followed` (0), `timeout` / `too_large` / `crashed` (0: the
answer's fault; None with `null_on_timeout=True`), `bad_gold` (None), `bad_completion` (None). Rules in
docs/rewards_math.md.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Sequence

from rewards.extract import Extracted, extract_answer, gold_text, last_number_answer, whole_answer
from rewards.hedge import (after_refusal, answer_candidates, approximation, choice_letters, is_refusal, is_relation,
                           nearby_candidates, numbers, opens_with_alternative, prose_candidates, prose_for_fallback,
                           rounds_to, without_code)
from rewards.pool import WorkerPool
from rewards.chat import completion_text, conversation_text
from rewards.result import RewardResult, trl_reward

DEFAULT_TIMEOUT_S = 5.0
CACHE_SIZE = 200_000
MAX_ANSWER_CHARS = 2_000  # a longer extracted answer scores 0 `too_large` without being parsed
RAW_TAIL_CHARS = 2_000  # math-verify's own extraction reads this much of the end of a marker-less completion
EXTRACTIONS = ("mathverify", "markers")
_ANSWER_FAILURES = ("timeout", "crashed", "too_large")

# ---------------------------------------------------------------------------------------------------------
# String normalization (parent process, pure)

_NUM = r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+)?"
# LaTeX thousands separators between digit groups: `10,\\!000`, `10{,}000`, `5\\,000`, `1\\ 000`, `1~000`.
_LATEX_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3})((?:(?:,\\!|\{,\}|\\,|\\!|\\ |\\;|~)\d{3})+)(?![\d.]?\d)")
_WRAPPERS = [(r"\\mathrm\{e\}", "e"), (r"\\varnothing", r"\\emptyset"),
             (r"\\left", ""), (r"\\right", ""), (r"\\displaystyle", ""), (r"\\[dt]frac", r"\\frac"),
             (r"(?<!\\)\\[!,;:]", " "), (r"~", " "), (r"\^\s*\{?\\circ\}?", ""), ("°", ""), (r"(?<!\\)\\\s", " ")]
_PERCENT_WORD = re.compile(r"(\d)\s*(?:\\text\{\s*)?(?:percent|per\s*cent)\b\}?", re.IGNORECASE)
_UNIT_NUM = rf"({_NUM}|\\frac\{{\d+\}}\{{\d+\}})"
_TEXT_UNIT = re.compile(rf"^{_UNIT_NUM}\s*\\(?:text|mbox|mathrm)\{{\s*([A-Za-z][A-Za-z .]*)\}}(?:\^\d)?$")
_WORD_UNIT = re.compile(rf"^{_UNIT_NUM}\s*([A-Za-z]{{2,}}[A-Za-z .]*)(?:\^\d|\^\{{\d\}})?$")
_REPEATING = re.compile(r"^(-?)(\d*)\.(\d*)\\overline\{(\d{1,6})\}$")  # 2.\overline{3} = 7/3
_CHOICE = re.compile(r"^\(?([A-E])\)?$")
_CHOICE_ANSWER = re.compile(r"^(?:\\text\{)?\(?([A-E])\)?(?:\}|[\s.:]|$)")
_SCIENTIFIC = re.compile(r"^(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)$")
_THOUSANDS = re.compile(r"^-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")  # not `0,111`
_TEXT_WRAP = re.compile(r"^\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}$")
_MATH_WORDS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "sqrt", "pi", "inf", "infty",
               "oo", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "frac", "and", "or"}


def normalize_answer(s: str) -> str:
    """Canonical string for an answer: same meaning, fewer spellings; the cache key of a check."""
    s = str(s).strip()
    for _ in range(2):  # "$\$5$" needs two passes
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$" and not s.startswith("$$\\"):
            s = s.strip("$").strip()
        if s.startswith("\\(") and s.endswith("\\)"):
            s = s[2:-2].strip()
        if s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2].strip()
    s = _LATEX_THOUSANDS.sub(lambda m: m.group(1) + re.sub(r"\D", "", m.group(2)), s)
    for pat, rep in _WRAPPERS:
        s = re.sub(pat, rep, s)
    if len(s) > 500:  # long answers skip the unit rules (their regexes backtrack); math-verify still reads them
        return s
    s = _PERCENT_WORD.sub(r"\1\\%", s)
    s = re.sub(r"^(?:\\\$|\$|US\$|USD)\s*", "", s)  # currency prefix
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    s = re.sub(r"^\\(?:text|mbox|mathrm)\{\s*(-?\d[^{}]*)\}$", r"\1", s)  # `\text{5 dollars}` -> `5 dollars`
    m = _TEXT_UNIT.match(s) or _WORD_UNIT.match(s)
    if m and not _MATH_WORDS.intersection(w.lower() for w in re.findall(r"[A-Za-z]+", m.group(2))):
        s = m.group(1)  # "5 cm", "5\\text{ dollars}" -> "5"; but "3 pi" stays
    m = _REPEATING.match(s)
    if m:
        sign, whole, fixed, rep = m.groups()
        value = (Fraction(int(whole or 0)) + Fraction(int(fixed or 0), 10 ** len(fixed))
                 + Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed)))
        s = f"{sign}\\frac{{{value.numerator}}}{{{value.denominator}}}"
    m = _SCIENTIFIC.match(s)
    if m:
        s = f"{m.group(1)}\\times 10^{{{m.group(2)}}}"
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s


def _is_text(s: str) -> bool:
    """True for a word answer ("Monday", "\\text{even}") that must not be read as a product of symbols."""
    m = _TEXT_WRAP.match(s)
    inner = m.group(1).strip() if m else s
    if not re.fullmatch(r"[A-Za-z][A-Za-z '\-]*", inner):
        return False
    words = re.findall(r"[A-Za-z]+", inner)
    return inner.lower() == "no" or any(len(w) >= 3 and w.lower() not in _MATH_WORDS for w in words)


_NUMBER_WORDS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
                 "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred",
                 "thousand", "million", "billion", "and", "a", "point", "minus", "negative"}


def is_number_words(s: str) -> bool:
    """True for a number written in words (`forty two`, `one hundred and five`): a gold we cannot score."""
    m = _TEXT_WRAP.match(s)
    words = re.findall(r"[A-Za-z]+", (m.group(1) if m else s).lower())
    return bool(words) and _is_text(s) and all(w in _NUMBER_WORDS for w in words)


def choice_compare(gold: str, answer: str) -> bool | None:
    """A multiple-choice gold (`D`, `(D)`, `\\text{(D)}`) against an answer that opens with a letter
    (`D`, `(D) 42`, `D.`): same letter or not; None when the gold is not a choice letter."""
    m = _TEXT_WRAP.match(gold)
    g = _CHOICE.match((m.group(1) if m else gold).strip())
    if not g:
        return None
    a = _CHOICE_ANSWER.match(answer.strip())
    return None if a is None else a.group(1) == g.group(1)


def _text_key(s: str) -> str:
    m = _TEXT_WRAP.match(s)
    inner = (m.group(1) if m else s).strip().lower()
    inner = re.sub(r"^the\s+", "", inner)
    return re.sub(r"[\s'\-]+", " ", inner).strip()


_ASSIGN = re.compile(r"^[A-Za-z]\s*=\s*")


def _signed_frac(m: re.Match) -> Fraction:
    return Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)


_SIMPLE = [
    (re.compile(r"^-?\d+(?:\.\d{1,5})?$"), lambda m: Fraction(m.group(0))),
    (re.compile(r"^(-?)(\d+)/([1-9]\d*)$"), _signed_frac),
    (re.compile(r"^(-?)\\frac\{(\d+)\}\{([1-9]\d*)\}$"), _signed_frac),
    (re.compile(r"^(-?)\\frac(\d)([1-9])$"), _signed_frac),
]


def simple_value(s: str, allow_assignment: bool = True) -> tuple[Fraction, bool] | None:
    """(value, is_percent) for a plain number, fraction or percent (`x = ` allowed); None for anything else.

    Decimals stop at 5 places: from 6 on math-verify rounds (`0.333333` = 1/3), and those pairs go to the worker.
    """
    if len(s) > 60:  # long digit strings go to the worker (and its time limit)
        return None
    if allow_assignment:
        s = _ASSIGN.sub("", s)
    pct = s.endswith("%")
    if pct:
        s = s.removesuffix("\\%").removesuffix("%").strip()
    for pattern, value in _SIMPLE:
        m = pattern.match(s)
        if m:
            return value(m), pct
    return None


def simple_equal(gold: tuple[Fraction, bool], answer: tuple[Fraction, bool]) -> bool:
    """math-verify's percent rule on exact numbers: `x%` also accepts `x/100`; a plain gold accepts `x%` as x."""
    (g, g_pct), (a, a_pct) = gold, answer
    if g_pct and not a_pct:
        return a == g or a == g / 100
    if a_pct and not g_pct:
        return a == g or a / 100 == g
    return a == g


def simple_compare(gold: str, answer: str) -> bool | None:
    """Decide exact-number pairs without sympy: True / False, or None when a worker has to decide.

    Covers single numbers, fractions and percents (`simple_value`), number lists / sets (`2, 3`,
    `\\{3,2\\}`: equal as sets, so every gold answer is required and nothing extra is allowed) and
    bracketed pairs (`(1, 2]`: same brackets, same numbers; read as interval or tuple, the verdict agrees).
    """
    gv, av = simple_value(gold, allow_assignment=False), simple_value(answer)  # `y=3` gold: math-verify decides
    if gv is not None and av is not None:
        return simple_equal(gv, av)
    gs, as_ = _simple_structure(gold), _simple_structure(answer)
    if gs is None or as_ is None:
        return None
    if gs[0] == "set" and as_[0] == "set":
        return gs[1] == as_[1]
    if gs[0] == "bracket" and as_[0] == "bracket":
        return gs[1:] == as_[1:]
    return None


def _simple_structure(s: str) -> tuple | None:
    if len(s) > 200:
        return None
    bracket = re.fullmatch(r"([\(\[])([^,()\[\]]+),([^,()\[\]]+)([\)\]])", s)
    if bracket:
        values = [simple_value(x.strip()) for x in bracket.group(2, 3)]
        if any(v is None or v[1] for v in values):
            return None
        return "bracket", bracket.group(1), bracket.group(4), tuple(v[0] for v in values)
    inner = s[2:-2] if s.startswith("\\{") and s.endswith("\\}") else s
    parts = [x.strip() for x in inner.split(",")]
    if len(parts) < 2 and inner == s:
        return None
    values = [simple_value(x) if "=" not in x else None for x in parts]
    if any(v is None or v[1] for v in values):
        return None
    return "set", frozenset(v[0] for v in values)


# ---------------------------------------------------------------------------------------------------------
# The check (worker process)

_SAFE_EXPR = re.compile(r"[0-9A-Za-z+\-*/^()., ]+")
_SAFE_NAMES = {"pi", "sqrt", "e", "E", "I", "log", "ln", "exp", "sin", "cos", "tan", "oo", "infty"}


def _quiet_math_verify() -> None:
    # We disable math-verify's signal timeouts (the pool owns the clock); silence its one-time warning.
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _sympy_parse(s: str) -> list:
    """Plain-text expression (`pi/2`, `2^10`, `sqrt(2)/2`) -> [sympy expr]; [] if unsafe or unparseable.

    sympy's parse_expr evaluates Python, so only arithmetic characters and a short list of names pass.
    """
    if "\\" in s or not _SAFE_EXPR.fullmatch(s) or "," in s:
        return []
    names = set(re.findall(r"[A-Za-z]+", s))
    if any(len(n) > 1 and n not in _SAFE_NAMES for n in names):
        return []
    from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application,
                                            parse_expr, standard_transformations)

    s = s.replace("infty", "oo").replace("ln", "log")
    try:
        expr = parse_expr(s, transformations=standard_transformations + (implicit_multiplication_application,
                                                                          convert_xor))
    except Exception:  # SyntaxError, TypeError, TokenError...: not an expression
        return []
    return [expr]


@functools.lru_cache(maxsize=4096)
def _mv_parse(s: str) -> tuple:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    found = parse("\\boxed{" + s + "}",
                  extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
                  parsing_timeout=None)
    return tuple(x for x in found if not isinstance(x, str))


def _verify(gold: Sequence, answer: Sequence) -> bool:
    from math_verify import verify

    return bool(answer) and verify(list(gold), list(answer), timeout_seconds=None)


def warm_worker() -> None:
    """First math-verify call in a process builds the LaTeX parser (~0.5 s); do it before taking work."""
    check_pair(("\\frac{1}{2}", "\\sqrt{x}"))


def _mv_extract(text: str) -> tuple[tuple, str]:
    """math-verify's own extraction on a whole text (boxed, then `$...$` / LaTeX, then plain expressions)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    found = parse(text, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=None)
    return tuple(x for x in found if not isinstance(x, str)), next((x for x in found if isinstance(x, str)), "")


def _check_one(gold: str, gold_parsed: tuple, answer: str, raw: tuple | None = None) -> tuple[bool, str]:
    """(equal, rule) for one normalized answer against a parsed gold; `raw`: math-verify's own parse of it."""
    if _is_text(gold):
        return _text_key(gold) == _text_key(answer), "text"
    if gold == answer:
        return True, "same_string"
    answer_parsed = _mv_parse(answer) if raw is None else raw
    if _verify(gold_parsed, answer_parsed):
        return True, "math_verify"
    # math-verify reads plain text as LaTeX (`pi/2` -> p*i/2, `sqrt(2)` -> s*q*r*t*2); for plain text with a
    # function or constant name, give sympy's reading of the same string a try.
    if "\\" not in answer and re.search(r"[A-Za-z]{2,}", answer) and _verify(gold_parsed, _sympy_parse(answer)):
        return True, "sympy"
    return False, "unparseable" if not answer_parsed else ""


def _rounds(parsed: tuple, decimal: str) -> bool:
    try:
        return bool(parsed) and rounds_to(float(parsed[0].evalf()), decimal)
    except (TypeError, ValueError, AttributeError):  # not a number (a symbol, a set...): no rounding of it
        return False


def check_pair(pair: tuple[str, ...]) -> tuple[float | None, str, dict[str, Any]]:
    """Decide one normalized pair: (score, reason, info).

    `(gold, answer)`; `(gold, None)` checks the gold only; `(gold, None, reason)` checks the gold only and
    then scores 0 with `reason` (a row decided in the parent whose gold is not a plain number);
    `(gold, text, "mathverify")` lets math-verify find the answer in a completion that has no marker;
    `(gold, answer, "all", other, ...)` is an answer naming several candidates, correct only when every one
    of them equals the gold (else `hedged`).
    """
    gold, answer, *how = pair
    _quiet_math_verify()
    if answer is None and how:  # decided in the parent; the gold alone is checked as below
        gold_parsed = () if _is_text(gold) else _mv_parse(gold) or tuple(_sympy_parse(gold))
        if not gold_parsed and not _is_text(gold):
            return None, "bad_gold", {"gold": gold[:200]}
        if gold_parsed:
            _verify(gold_parsed, _mv_parse("0"))
        return 0.0, how[0], {}
    raw = None
    candidates = list(how[1:]) if how and how[0] == "all" else []
    approx = how[1] if how and how[0] == "approx" else None
    if how and how[0] == "mathverify" and answer is not None:
        raw, answer = _mv_extract(answer)
        raw = raw if answer else ()
        if answer and _gold_kind(gold) != "several":
            found = answer_candidates(answer, relations=not is_relation(gold))
            if len(found) > 1:  # `$4 \approx 5$` read by math-verify's extraction: every side must be the gold
                raw, answer, candidates = None, normalize_answer(found[0]), [normalize_answer(c) for c in found[1:]]
    info = {"extracted": answer} if how and how[0] == "mathverify" else {}
    if _is_text(gold):
        if not answer:
            return 0.0, "no_answer", {}
    gold_parsed = () if _is_text(gold) else _mv_parse(gold) or tuple(_sympy_parse(gold))
    if not gold_parsed and not _is_text(gold):
        return None, "bad_gold", {"gold": gold[:200]}
    if answer is None and not how:  # the gold-only check also compares the gold with 0, so a gold too slow
        _verify(gold_parsed, _mv_parse("0"))  # to evaluate (`9^{9^{9^9}}`) times out here and is blamed
    if not answer:
        return 0.0, "no_answer", {}
    ok, rule = _check_one(gold, gold_parsed, answer, raw)
    if approx is not None:  # `A \approx d`: A is the answer, and d must be A rounded
        if not ok or not _rounds(_mv_parse(answer), approx):
            return 0.0, "hedged", {**info, "candidates": [answer, approx]}
        return 1.0, "correct", {**info, "rule": rule}
    if candidates:
        if not ok or not all(_check_one(gold, gold_parsed, c)[0] for c in candidates):
            return 0.0, "hedged", {**info, "candidates": [answer, *candidates][:10]}
        return 1.0, "correct", {**info, "rule": rule, "candidates": 1 + len(candidates)}
    if ok:
        return 1.0, "correct", {**info, "rule": rule}
    return 0.0, "wrong", {**info, "detail": "answer_unparseable"} if rule == "unparseable" else info


# ---------------------------------------------------------------------------------------------------------
# Batch scoring (parent process)


def default_workers() -> int:
    """CPUs this process may use (respects taskset / cgroup affinity), capped at 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


@dataclass(frozen=True)
class _Pending:
    """A row a worker has to decide: its check, what extraction found, and whether the answer is too large."""

    key: tuple[str, ...]
    info: dict[str, Any]
    too_large: int = 0  # chars of an answer over MAX_ANSWER_CHARS; then `key` checks the gold only


@dataclass
class MathVerifier:
    """Scores batches; owns the worker pool and the pair cache, so reuse one across batches.

    `checks` counts pairs actually sent to workers (cache hits and fast paths excluded). `null_on_timeout`
    scores `timeout` / `too_large` / `crashed` answers None instead of 0 (for audits).
    """

    timeout: float = DEFAULT_TIMEOUT_S
    workers: int = field(default_factory=default_workers)
    null_on_timeout: bool = False
    checks: int = 0

    def __post_init__(self) -> None:
        self._pool: WorkerPool | None = None
        self._cache: OrderedDict[tuple[str, ...], tuple] = OrderedDict()
        self._lock = threading.Lock()

    def _pool_(self) -> WorkerPool:
        if self._pool is None:
            self._pool = WorkerPool(self.workers, timeout=self.timeout, preload=["rewards.math"],
                                    warmup=warm_worker)
        return self._pool

    def _check(self, keys: Sequence[tuple[str, ...]], fresh: dict) -> None:
        """Decide the keys not yet in `fresh` or the cache; failures are (None, timeout | crashed, info)."""
        todo = list(dict.fromkeys(k for k in keys if k not in fresh and k not in self._cache))
        if not todo:
            return
        self.checks += len(todo)
        for key, out in zip(todo, self._pool_().map(check_pair, todo)):
            if out.status == "ok":
                fresh[key] = self._cache[key] = out.value
            elif out.status == "timeout":  # not cached: a loaded machine may decide it next time
                fresh[key] = (None, "timeout", {"limit_s": self.timeout})
            else:  # the check raised, or killed its worker
                fresh[key] = (None, "crashed", {"error": out.error[-500:]})
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    def score(self, completions: Sequence[Any], answers: Sequence[Any], last_number_fallback: bool = False,
              extraction: str = "mathverify", null_on_timeout: bool | None = None,
              prompts: Sequence[Any] | None = None, boxed_asked: Sequence[bool] | None = None) -> list[RewardResult]:
        """One result per (completion, gold). `prompts` (optional, one per row): the question, whose own text a
        marker-less completion restates without answering it (never read as the answer). `boxed_asked` (one per
        row): the prompt asked for `\\boxed{}`, so a completion without one is `format_not_followed`."""
        if len(completions) != len(answers):
            raise ValueError(f"math reward: {len(completions)} completions but {len(answers)} values in the "
                             "`answer` column; pass one gold answer per completion")
        if extraction not in EXTRACTIONS:
            raise ValueError(f"math reward: extraction={extraction!r}; use one of {', '.join(EXTRACTIONS)}")
        null_on_timeout = self.null_on_timeout if null_on_timeout is None else null_on_timeout
        results: list[RewardResult | None] = [None] * len(completions)
        pending: list[_Pending | None] = [None] * len(completions)
        if prompts is None or len(prompts) != len(completions):
            prompts = [None] * len(completions)
        asked = list(boxed_asked) if boxed_asked is not None else [False] * len(completions)
        for i, (completion, gold, prompt) in enumerate(zip(completions, answers, prompts)):
            prepared = _prepare_row(completion, gold, last_number_fallback, extraction, prompt, asked[i])
            if isinstance(prepared, RewardResult):
                results[i] = prepared
            else:
                pending[i] = prepared
        with self._lock:
            fresh: dict[tuple[str, ...], tuple] = {}
            self._check([p.key for p in pending if p is not None], fresh)
            # An answer that timed out, crashed or is too large is wrong, unless the gold alone fails too.
            failed = [p for p in pending if p is not None and (p.too_large or self._get(p.key, fresh)[1]
                                                               in _ANSWER_FAILURES)]
            self._check([p.key[:1] + (None,) for p in failed], fresh)
            for i, p in enumerate(pending):
                if p is None:
                    continue
                score, reason, info = self._get(p.key, fresh)
                if p.too_large or reason in _ANSWER_FAILURES:
                    gold_score, gold_reason, gold_info = self._get(p.key[:1] + (None,), fresh)
                    if gold_score is None:
                        score, reason, info = None, "bad_gold", {**gold_info, "gold": p.key[0][:200],
                                                                 "detail": gold_reason}
                    elif p.too_large:
                        score, reason, info = 0.0, "too_large", {"chars": p.too_large, "limit": MAX_ANSWER_CHARS}
                    else:
                        score = 0.0
                    if reason in _ANSWER_FAILURES and null_on_timeout:
                        score = None
                results[i] = RewardResult(score, reason, {**info, **p.info})
        return results  # type: ignore[return-value]

    def _get(self, key: tuple[str, ...], fresh: dict) -> tuple:
        return fresh[key] if key in fresh else self._cache[key]

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


_MAY_HOLD_MATH = re.compile(r"[\d$]|\\[(\[]")


def _prompt_text(prompt: Any) -> str | None:
    try:
        return conversation_text(prompt)
    except TypeError:  # an unusual prompt column is not the completion's fault: read no prompt
        return None


def _several(gold: str) -> bool:
    """A gold that lists several answers (`2, 3`, `\\{1,2\\}`, `\\pm 1`, `x=2 \\text{ or } x=3`, a union):
    an answer naming several values is then a list, compared as a set, not a hedge."""
    if re.search(r"\\(?:pm|mp|cup|lor|vee)(?![A-Za-z])|\b(?:or|and)\b", gold):
        return True
    depth = 0
    for c in gold:
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c in ",;" and depth <= 0:
            return True
    return False


def _gold_kind(gold: str) -> str:
    """`choice` (a letter), `several` (a list), `text` (words) or `math`: how the candidates of an answer
    are compared."""
    m = _TEXT_WRAP.match(gold)
    if _CHOICE.match((m.group(1) if m else gold).strip()):
        return "choice"
    if _several(gold):
        return "several"
    return "text" if _is_text(gold) else "math"


def _is_word(s: str) -> bool:
    """A candidate that is a plain word (`more`, `so`): never equal to a number."""
    return bool(re.fullmatch(r"[A-Za-z]{2,}", s)) and s.lower() not in _MATH_WORDS


def _compare_candidates(kind: str, candidates: list[str]) -> str:
    """`same` (all name one value), `differ` (two are surely different) or `check` (a worker must decide)."""
    norm = list(dict.fromkeys(normalize_answer(c) for c in dict.fromkeys(candidates)))
    if len(norm) == 1:
        return "same"
    if kind == "text":
        return "same" if len({_text_key(n) for n in norm}) == 1 else "differ"
    first, undecided, word = None, False, False
    for n in norm:
        v = simple_value(n)
        if v is None:
            undecided, word = True, word or _is_word(n)
        elif first is None:
            first = v
        elif not (simple_equal(first, v) or simple_equal(v, first)):
            return "differ"
    if first is not None and word:
        return "differ"  # `5 or more`: a number and a word
    return "check" if undecided else "same"


def _hedge(text: str, found: Extracted, kind: str, gold: str, prompt: str | None) -> tuple[str, list[str]]:
    """(`none` | `same` | `differ` | `check` | `approx`, candidates) for the answer `found` in `text` (for the
    fallbacks, `text` is the prose they read)."""
    if kind == "several":
        return "none", [found.text]
    choice = kind == "choice"
    approx = approximation(found.text) if not is_relation(gold) else None
    if approx and not nearby_candidates(text, found.end, found.end, prompt, choice):
        exact = simple_value(normalize_answer(approx[0]))
        if exact is None:
            return "approx", list(approx)
        return ("same" if rounds_to(float(exact[0]), approx[1]) else "differ"), list(approx)
    candidates = answer_candidates(found.text, relations=not is_relation(gold), choice=choice)
    nearby: list[str] = []
    if found.method in ("boxed", "answer_is", "hashes"):
        nearby = nearby_candidates(text, found.start, found.end, prompt, choice)
        if opens_with_alternative(text, found.start):  # `\boxed{4}. Alternatively: \boxed{5}`: the 4 too
            earlier = extract_answer(text[: found.start])
            nearby += [earlier.text] if earlier else []
    elif found.method == "last_number":
        nearby = prose_candidates(text, choice)
    candidates = candidates + nearby
    if choice:  # letters read strictly; a later `or maybe 0` that is no letter of the answer is another candidate
        others = [c for c in nearby if not choice_letters([c]) and c not in found.text]
        return ("differ" if len(choice_letters(candidates)) > 1 or others else "none"), candidates
    if len(candidates) == 1:
        return "none", candidates
    return _compare_candidates(kind, candidates), candidates


def _zero(gold: str, reason: str, info: dict[str, Any]) -> RewardResult | _Pending:
    """0 with `reason`, decided here; a gold that is not a plain number is still checked (a bad gold is None)."""
    if simple_value(gold) is not None or _simple_structure(gold) is not None or _gold_kind(gold) == "choice":
        return RewardResult(0.0, reason, info)
    return _Pending((gold, None, reason), info)


# what `train grpo --template auto` appends: the phrasing the embedded model follows (it boxed 15 % of its first samples
# under it against 3 % under "Put the final answer in \\boxed{}.", docs/online_rl.md)
BOXED_INSTRUCTION = "Reply with the final answer as \\boxed{ANSWER}."
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def asks_for_boxed(prompt: Any) -> bool:
    """Whether a prompt (text or chat messages) asks for the answer in `\\boxed{}`."""
    text = _prompt_text(prompt)
    return bool(text and _BOXED.search(text))


def _prepare_row(completion: Any, gold: Any, last_number_fallback: bool, extraction: str = "mathverify",
                 prompt: Any = None, boxed_asked: bool = False) -> RewardResult | _Pending:
    """Decide a row in the parent when no sympy is needed; otherwise the check a worker has to run."""
    if gold is None or (isinstance(gold, float) and gold != gold) or not str(gold).strip():
        return RewardResult(None, "bad_gold", {"gold": "" if gold is None else str(gold)})
    try:
        text = completion_text(completion)
    except TypeError as e:
        return RewardResult(None, "bad_completion", {"error": str(e)})
    g = normalize_answer(gold_text(str(gold)))
    if is_number_words(g):
        return RewardResult(None, "bad_gold", {"gold": g[:200], "detail": "number_words"})
    kind = _gold_kind(g)
    prompt_text = _prompt_text(prompt)
    if boxed_asked and not _BOXED.search(text):  # asked for \boxed{}: an answer given any other way is not taken
        return _zero(g, "format_not_followed", {"detail": "the prompt asks for \\boxed{}"})
    text = without_code(text)  # `answer = 4` in a code block is not an answer line
    found = extract_answer(text, last_number=False)  # markers: the last one wins
    if found is None:  # no marker: the fallbacks read the prose, without code, questions or the prompt's text
        prose = prose_for_fallback(text, prompt_text)
        rest = after_refusal(prose) if kind != "text" else None  # `I don't know` (+ the question's numbers)
        if rest is not None and numbers(rest) <= numbers(prompt_text or ""):
            return _zero(g, "no_answer", {"detail": "refusal"})
        if extraction == "mathverify" and prose == text:  # a whole answer, unless it restates the question
            found = whole_answer(text)
        if found is None and last_number_fallback:
            found = last_number_answer(prose)
        if found is None:
            return _read_prose(g, kind, prose) if extraction == "mathverify" else _zero(g, "no_answer", {})
        text = prose
    info = {"extracted": found.text[:200], "method": found.method}
    if len(found.text) > MAX_ANSWER_CHARS:
        return _Pending((g, None), info, too_large=len(found.text))
    if kind != "text" and not re.search(r"\d", found.text) and is_refusal(found.text):
        return _zero(g, "no_answer", {**info, "detail": "refusal"})  # `The answer is: I don't know`
    hedge, candidates = _hedge(text, found, kind, g, prompt_text)
    if hedge == "differ":
        return _zero(g, "hedged", {**info, "candidates": list(dict.fromkeys(candidates))[:10]})
    if hedge == "check":
        return _check_all(g, candidates, info)
    if hedge == "approx":
        return _Pending((g, normalize_answer(candidates[0]), "approx", candidates[1]), info)
    a = normalize_answer(candidates[0] if hedge == "same" else found.text)
    for rule, compare in (("number", simple_compare), ("choice", choice_compare)):
        verdict = compare(g, a)
        if verdict is not None:  # exact numbers, choice letters: decided here, no worker needed
            return RewardResult(1.0 if verdict else 0.0, "correct" if verdict else "wrong", {**info, "rule": rule})
    return _Pending((g, a), info)


def _check_all(gold: str, candidates: list[str], info: dict[str, Any]) -> _Pending:
    """A worker checks every candidate against the gold: 1 only when all of them equal it."""
    norm = list(dict.fromkeys(normalize_answer(c) for c in candidates))
    return _Pending((gold, norm[0], "all", *norm[1:]), info)


def _read_prose(gold: str, kind: str, prose: str) -> RewardResult | _Pending:
    """A completion without a marker: hedged when its last sentence joins two values with a disjunction,
    else math-verify's own extraction reads the prose (its last 2,000 characters)."""
    raw = prose[-RAW_TAIL_CHARS:].replace("\\$", " ")  # `costs \$32.`: a currency sign, not math mode
    candidates = prose_candidates(raw, kind == "choice") if kind != "several" else []
    if kind == "choice":
        hedge = "differ" if len(choice_letters(candidates)) > 1 else "none"
    else:
        hedge = _compare_candidates(kind, candidates) if len(candidates) > 1 else "none"
    info = {"candidates": list(dict.fromkeys(candidates))[:10], "method": "mathverify"}
    if hedge == "differ":
        return _zero(gold, "hedged", info)
    if not _MAY_HOLD_MATH.search(raw):  # plain prose: math-verify finds nothing
        return _zero(gold, "no_answer", {})
    if hedge == "check":
        return _check_all(gold, candidates, {"method": "mathverify"})
    return _Pending((gold, raw, "mathverify"), {"method": "mathverify"})


_VERIFIERS: dict[tuple[float, int], MathVerifier] = {}
_VERIFIERS_LOCK = threading.Lock()


def get_verifier(timeout: float = DEFAULT_TIMEOUT_S, workers: int | None = None) -> MathVerifier:
    """The process-wide verifier for these settings (pool started on first use, closed at exit)."""
    key = (float(timeout), workers or default_workers())
    with _VERIFIERS_LOCK:
        if key not in _VERIFIERS:
            _VERIFIERS[key] = MathVerifier(timeout=key[0], workers=key[1])
        return _VERIFIERS[key]


def math_results(prompts: Sequence[Any] | None, completions: Sequence[Any], answer: Sequence[Any] | None = None,
                 *, last_number_fallback: bool = False, extraction: str = "mathverify",
                 null_on_timeout: bool = False, timeout: float = DEFAULT_TIMEOUT_S,
                 workers: int | None = None, as_asked: bool = True, **columns: Any) -> list[RewardResult]:
    """Score each completion against its gold `answer`: 1 correct, 0 wrong / no answer, None unscorable.

    Gold comes from the `answer` column (a bare answer, or a solution with `\\boxed{}` / `####`); datasets in
    the open-r1 layout may carry it as `solution` instead. `timeout` is the hard per-check limit in seconds.
    `extraction`: "mathverify" (default) reads a completion without an answer marker the way math-verify does;
    "markers" scores it `no_answer`. `null_on_timeout`: None instead of 0 for timeout / too_large / crashed.
    `prompts` (optional): a marker-less completion that only restates its prompt is `no_answer`.
    `as_asked` (default): a prompt that asks for `\\boxed{}` (its `sampled_prompt` column when the rows carry
    one: the text the model saw, template included) is answered only in `\\boxed{}`; else
    `format_not_followed` (0).

    >>> [r.score for r in math_results(None, ["So $\\boxed{\\frac{1}{2}}$."], answer=["0.5"])]
    [1.0]
    """
    if answer is None:
        answer = columns.get("solution")
    if answer is None:
        raise ValueError("math reward needs gold answers: add an `answer` column to the prompts "
                         f"(columns given: {sorted(columns)})")
    seen = columns.get("sampled_prompt")
    seen = seen if seen is not None and len(seen) == len(completions) else prompts
    asked = [asks_for_boxed(p) for p in seen] if as_asked and seen is not None else None
    return get_verifier(timeout, workers).score(completions, answer, last_number_fallback=last_number_fallback,
                                                extraction=extraction, null_on_timeout=null_on_timeout,
                                                prompts=prompts, boxed_asked=asked)


def math_last_number_results(prompts: Sequence[Any] | None, completions: Sequence[Any],
                             answer: Sequence[Any] | None = None, **columns: Any) -> list[RewardResult]:
    """`math_results` with the last-number fallback on (the CLI's `--reward math:last_number`)."""
    columns.pop("last_number_fallback", None)
    return math_results(prompts, completions, answer, last_number_fallback=True, **columns)


math_reward = trl_reward(math_results)
math_last_number_reward = trl_reward(math_last_number_results)
# trl_reward builds its wrapper inside rewards.result; point pickle at this module, where the name resolves.
math_reward.__module__ = __name__
math_last_number_reward.__module__ = __name__


# ---------------------------------------------------------------------------------------------------------
# check-gold


@dataclass(frozen=True)
class GoldProblem:
    row: int
    gold: str
    reason: str


def check_gold(golds: Sequence[Any], timeout: float = DEFAULT_TIMEOUT_S,
               workers: int | None = None) -> list[GoldProblem]:
    """Gold answers the math reward could not score (every row using them would get None), with the reason."""
    verifier = get_verifier(timeout, workers)
    results = verifier.score([""] * len(golds), golds)
    return [GoldProblem(i, "" if g is None else str(g), r.reason)
            for i, (g, r) in enumerate(zip(golds, results)) if r.score is None]
