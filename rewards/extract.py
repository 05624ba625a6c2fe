"""Find the final answer in a math completion (or in a gold solution) as a string.

Markers, decided by position (the last marker in the text wins, whichever kind):
- `\\boxed{...}` / `\\fbox{...}` (nested braces handled; `\\boxed 5` too; a box inside a box is part of the
  outer one). Boxes separated only by commas, "and" / "or" or `$` are one answer set
  (`\\boxed{1}, \\boxed{2}` -> `1, 2`); an empty box is skipped;
- a "the answer is ..." / "final answer: ..." phrase (up to the end of its line; the math in it, so
  `Final Answer: The final answer is $7$. I hope it is correct.` gives `7` and `The largest $n$ is 34.`
  gives `34`). After a box, a phrase of several words with no math or digit (`the answer is an integer`)
  is commentary, not a marker;
- a GSM8K-style `#### ...` line.

Without a marker (`extract_answer` returns None) the caller decides: `whole_answer` reads a completion that
is only an answer (`-5`, `$\\frac13$`, `28 percent`); the math reward then falls back to math-verify's own
extraction, or to the last number when asked (`last_number=True`). Rules: docs/rewards_math.md.

Pure string work, no sympy: this runs in the parent process and decides which (gold, answer) pairs the
worker pool has to check.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Patterns avoid nested or adjacent `\s*` runs, so a completion made of whitespace cannot make them backtrack
# quadratically (this runs in the parent, outside any time limit).
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?:[ \t]*(\{)|[ \t]+(?=[^\s{]))")
_ANSWER_IS_RE = re.compile(
    r"(?:final[ \t]+answer|the[ \t]+answer|answer)[ \t]*(?:is\b|:|=)[ \t]*:?(?P<ans>[^\n]+)",
    re.IGNORECASE,
)
_HASH_RE = re.compile(r"^[ \t]*####(?P<ans>[^\n]+)", re.MULTILINE)
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
# What may stand between two boxes of one answer set: `, `, `and`, `\text{ or }`, `$`, `\quad`, `x =`.
_BOX_GAP = re.compile(r"(?:[\s$,;.]|\\quad|\\qquad|\\text\{\s*(?:and|or|,)\s*\}|\b(?:and|or)\b|\b[a-z]\s?=)*")
_MATH_SPAN = re.compile(r"\$\$?((?:[^$\\]|\\.)+)\$\$?|\\\(((?:[^\\]|\\[^)])+)\\\)|\\\[((?:[^\\]|\\[^\]])+)\\\]")
_COPULA = re.compile(r"\s(?:is|are|was|equals|becomes|is equal to)\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Extracted:
    text: str
    method: str  # boxed | answer_is | hashes | whole | last_number (math-verify's own: mathverify)
    start: int = 0  # where the answer starts in the text: the first box of a set, the phrase after its marker
    end: int = 0  # where it ends: the last box's closing brace, the end of the answer line


_BARE_TOKEN = re.compile(r"[^\s$]+")


def _closing_braces(text: str) -> dict[int, int]:
    """Position of each `{` -> position of its matching `}`, in one pass (`\\{`, `\\}` are literal)."""
    pairs, stack, j, n = {}, [], 0, len(text)
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            stack.append(j)
        elif c == "}" and stack:
            pairs[stack.pop()] = j
        j += 1
    return pairs


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every outermost `\\boxed{...}` / `\\fbox{...}` that closes, and every `\\boxed 5`.

    A box inside a box is part of the outer one's content, its own `\\boxed` removed:
    `\\boxed{5 \\text{ or } \\boxed{4}}` is `5 \\text{ or } 4`, never `4` alone.
    """
    matches = list(_BOX_RE.finditer(text))
    closing = _closing_braces(text) if any(m.group(1) == "{" for m in matches) else {}
    out: list[tuple[int, int, str]] = []
    for m in matches:
        if out and m.start() < out[-1][1]:
            continue  # inside the previous outermost box
        if m.group(1) == "{":
            end = closing.get(m.end() - 1)
            if end is not None:
                out.append((m.start(), end + 1, unwrap(text[m.end() : end], _BOX_COMMANDS)))
        else:
            tail = _BARE_TOKEN.match(text, m.end())
            if tail:
                out.append((m.start(), tail.end(), tail.group(0)))
    return out


_BOX_COMMANDS = ("boxed", "fbox")
_COMMAND_RE = re.compile(r"\\([A-Za-z]+)[ \t]*\{")


def unwrap(s: str, commands: tuple[str, ...]) -> str:
    """`s` with each `\\cmd{X}` of `commands` replaced by `X` (nested too), in one pass; other text unchanged.

    >>> unwrap(r"5 \\text{ or } \\boxed{4}", ("boxed", "text"))
    '5  or  4'
    """
    if not any("\\" + c in s for c in commands):
        return s
    closing = _closing_braces(s)
    cuts = []  # (start, end) of each command head `\cmd{` and of its closing brace
    for m in _COMMAND_RE.finditer(s):
        if m.group(1) in commands and m.end() - 1 in closing:
            cuts += [(m.start(), m.end()), (closing[m.end() - 1], closing[m.end() - 1] + 1)]
    pieces, j = [], 0
    for start, end in sorted(cuts):
        pieces.append(s[j:start])
        j = end
    pieces.append(s[j:])
    return "".join(pieces)


def last_boxed_span(text: str) -> tuple[int, int, str] | None:
    """(start, end, content) of the last non-empty box; boxes just before it that form one list are joined,
    and the span covers them all (`\\boxed{1}, \\boxed{2}` -> `1, 2`)."""
    boxes = [b for b in _boxes(text) if b[2].strip()]
    if not boxes:
        return None
    group = [boxes[-1]]
    for b in reversed(boxes[:-1]):
        if not _BOX_GAP.fullmatch(text, b[1], group[-1][0]):
            break  # prose between them: an earlier, separate answer
        group.append(b)
    return group[-1][0], group[0][1], ", ".join(b[2].strip() for b in reversed(group))


def last_boxed_set(text: str) -> tuple[int, str] | None:
    """(position, content) of the last non-empty box; boxes just before it that form one list are joined.

    >>> last_boxed_set(r"\\boxed{(2,2)} \\text{ and } \\boxed{(6,2)}")
    (0, '(2,2), (6,2)')
    """
    found = last_boxed_span(text)
    return None if found is None else (found[0], found[2])


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty `\\boxed{...}` or `\\fbox{...}` that closes; `\\boxed 5` gives `5`."""
    found = last_boxed_set(text)
    return found[1] if found else None


def _math_of(ans: str) -> str:
    """The math in an answer phrase: `$x=2$` -> `x=2`; `$2$ and $3$` -> `2, 3`; prose keeps its last math."""
    spans = list(_MATH_SPAN.finditer(ans))
    if not spans:
        return ans
    outside = _MATH_SPAN.sub(" ", ans)
    if ans.startswith(spans[0].group(0)) and not re.search(r"\b(?:and|or)\b|,", outside):
        return next(g for g in spans[0].groups() if g)  # `$5$ cm`, `$x=2$.`: the leading math
    inner = [next(g for g in m.groups() if g).strip() for m in spans]
    if re.fullmatch(r"(?:[\s,;.]|\band\b|\bor\b)*", outside):
        return ", ".join(inner)
    return inner[-1]


# Where an answer phrase stops: a sentence break, or a clause that explains or restates it.
_PHRASE_END = re.compile(r",?\s+(?:i\.e\.|e\.g\.|that is|namely)|(?<!\d)\.\s|\.\s+(?=[A-Z])|"
                         r",?\s+(?:because|since|so|which)\s")


def _clean_phrase(ans: str) -> str:
    ans = ans[:1000].strip().lstrip(":").strip()  # an answer phrase is short; bounds work on a hostile line
    for _ in range(3):  # "Final Answer: The final answer is $7$." -> the inner phrase
        inner = list(_ANSWER_IS_RE.finditer(ans))
        if not inner:
            break
        ans = inner[-1].group("ans").strip().lstrip(":").strip()
    ans = _PHRASE_END.split(ans.strip())[0]
    ans = re.sub(r"^\*+|\*+$", "", ans).strip().rstrip(" .;!")
    if re.match(r"[A-Za-z]{2,}", ans):  # a sentence: "The largest $n$ is 34" -> "34"
        parts = _COPULA.split(_MATH_SPAN.sub(lambda m: m.group(0).replace(" ", "\0"), ans))
        if len(parts) > 1:
            ans = parts[-1].replace("\0", " ")
    ans = _math_of(ans).strip().rstrip(".").strip()
    # `4 (four)` -> `4`; `(B) 4`, `(1, 2)` and `4 (or 5)` (a hedge, rewards.hedge reads it) stay
    ans = re.sub(r"(?<=\S)\s+\((?![^()]*\b(?:or|maybe|possibly|perhaps|else|otherwise)\b)[A-Za-z '-]*\)$", "", ans)
    while ans.endswith((")", "]")) and ans.count(")") + ans.count("]") > ans.count("(") + ans.count("["):
        ans = ans[:-1].rstrip(" .")  # `(either way, the answer is 4)` -> `4`
    return ans


def _answer_like(phrase: str) -> bool:
    """Math, a digit, or one word: a phrase that can override an earlier box (`the answer is an integer` can't)."""
    return bool(re.search(r"[\d$\\=^_+*/<>()\[\]{}-]", phrase)) or len(phrase.split()) == 1


def extract_answer(text: str, last_number: bool = False) -> Extracted | None:
    """The final answer of `text` and how it was found (the last marker wins), or None when there is none."""
    found: list[tuple[int, Extracted]] = []
    boxed = last_boxed_span(text)
    if boxed is not None:
        found.append((boxed[0], Extracted(boxed[2], "boxed", boxed[0], boxed[1])))
    for m in reversed(list(_ANSWER_IS_RE.finditer(text))):
        ans = _clean_phrase(m.group("ans"))
        if ans and (boxed is None or _answer_like(ans)):
            found.append((m.start(), Extracted(ans, "answer_is", m.start("ans"), m.end("ans"))))
            break
    hashes = list(_HASH_RE.finditer(text))
    if hashes:
        ans = _clean_phrase(hashes[-1].group("ans"))
        if ans:
            found.append((hashes[-1].start(), Extracted(ans, "hashes", hashes[-1].start("ans"), hashes[-1].end())))
    if found:
        return max(found, key=lambda f: f[0])[1]
    return last_number_answer(text) if last_number else None


def last_number_answer(text: str) -> Extracted | None:
    """The last number in `text` (`math:last_number`), or None."""
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    return None if last is None else Extracted(last.group(0).rstrip(","), "last_number", last.start(), last.end())


def whole_answer(text: str) -> Extracted | None:
    """A completion that is only an answer (`-5`, `$\\frac13$`, `$[0,1)$`, `28 percent`, `5 cm`), else None.

    Short, one line, and either one math span (`$...$`) or no span and at most one word outside LaTeX
    commands (so prose such as `I think 5` or `We find that $x<3$.` is not an answer by itself).
    """
    s = text.strip().rstrip(".").strip()
    if not s or len(s) > 60 or "\n" in s:
        return None
    span = _MATH_SPAN.fullmatch(s)
    if span:
        return Extracted(next(g for g in span.groups() if g).strip(), "whole", 0, len(text))
    if "$" in s or "\\(" in s or "\\[" in s or len(re.findall(r"(?<![\\A-Za-z])[A-Za-z]+", s)) > 1:
        return None
    return Extracted(s, "whole", 0, len(text))


def gold_text(gold: str) -> str:
    """The answer part of a gold value: a bare answer stays as is; a full solution gives its marked part
    (box, answer phrase, `####`), or, when it is prose without a marker, its math as math-verify would read
    it (`We get $x=5$.` -> `x=5`; `$9$ and $10$` -> `9, 10`)."""
    gold = str(gold).strip()
    found = extract_answer(gold) if ("\\boxed" in gold or "\\fbox" in gold or "####" in gold
                                     or _ANSWER_IS_RE.search(gold)) else None
    if found:
        return found.text
    spans = list(_MATH_SPAN.finditer(gold)) if len(gold) > 2 else []
    if spans and whole_answer(gold) is None and re.search(r"[A-Za-z]{2,}", _MATH_SPAN.sub("", gold)):
        return _math_of(gold).strip()
    return gold
