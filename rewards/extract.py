"""Find the final answer in a math completion (or in a gold solution) as a string.

Order, first hit wins:
1. the last `\\boxed{...}` / `\\fbox{...}` (nested braces handled; `\\boxed 5` too);
2. the last "the answer is ..." / "final answer: ..." phrase (up to the end of its line);
3. the last GSM8K-style `#### ...` line;
4. opt-in only: the last number in the text (`last_number=True`).

Pure string work, no sympy: this runs in the parent process and decides which (gold, answer) pairs the
worker pool has to check.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*(\{|\s+(?=\S))")
_ANSWER_IS_RE = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(?P<ans>[^\n]+)", re.IGNORECASE
)
_HASH_RE = re.compile(r"^\s*####\s*(?P<ans>[^\n]+)", re.MULTILINE)
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


@dataclass(frozen=True)
class Extracted:
    text: str
    method: str  # boxed | answer_is | hashes | last_number


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group whose `{` is at `start`, or None when it never closes."""
    depth, j = 0, start
    while j < len(text):
        c = text[j]
        if c == "\\":  # `\{` and `\}` are literal braces, not groups
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : j]
        j += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` that closes; `\\boxed 5` gives `5`."""
    found = None
    for m in _BOX_RE.finditer(text):
        if m.group(1) == "{":
            inner = _braced(text, m.end() - 1)
        else:
            tail = re.match(r"[^\s$]+", text[m.end() :])
            inner = tail.group(0) if tail else None
        if inner is not None:
            found = inner
    return found


def _clean_phrase(ans: str) -> str:
    ans = re.split(r"(?<!\d)\.\s|\.\s+(?=[A-Z])|,?\s+(?:because|since|so|which)\s", ans.strip())[0]
    # "$\frac{1}{2}$." -> "\frac{1}{2}": drop wrapping dollars / bold and trailing sentence punctuation.
    ans = re.sub(r"^\*+|\*+$", "", ans).strip()
    ans = ans.rstrip(" .;!")
    math_mode = re.match(r"\$((?:[^$\\]|\\.)*)\$", ans)  # `$...$`, skipping escaped `\$`
    if math_mode:
        ans = math_mode.group(1)
    elif ans.startswith("\\(") and "\\)" in ans:
        ans = ans[2 : ans.index("\\)")]
    elif ans.startswith("\\[") and "\\]" in ans:
        ans = ans[2 : ans.index("\\]")]
    return ans.strip().rstrip(".").strip()


def extract_answer(text: str, last_number: bool = False) -> Extracted | None:
    """The final answer of `text` and how it was found, or None when there is none."""
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return Extracted(boxed.strip(), "boxed")
    phrases = list(_ANSWER_IS_RE.finditer(text))
    for m in reversed(phrases):
        ans = _clean_phrase(m.group("ans"))
        if ans:
            return Extracted(ans, "answer_is")
    hashes = list(_HASH_RE.finditer(text))
    if hashes:
        ans = _clean_phrase(hashes[-1].group("ans"))
        if ans:
            return Extracted(ans, "hashes")
    if last_number:
        numbers = _NUMBER_RE.findall(text)
        if numbers:
            return Extracted(numbers[-1].rstrip(","), "last_number")
    return None


def gold_text(gold: str) -> str:
    """The answer part of a gold value: a bare answer stays as is; a full solution gives its boxed / #### part."""
    gold = str(gold).strip()
    found = extract_answer(gold) if ("\\boxed" in gold or "\\fbox" in gold or "####" in gold) else None
    return found.text if found else gold
