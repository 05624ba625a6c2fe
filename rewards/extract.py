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

# Patterns avoid nested or adjacent `\s*` runs, so a completion made of whitespace cannot make them backtrack
# quadratically (this runs in the parent, outside any time limit).
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?:[ \t]*(\{)|[ \t]+(?=[^\s{]))")
_ANSWER_IS_RE = re.compile(
    r"(?:final[ \t]+answer|the[ \t]+answer|answer)[ \t]*(?:is\b|:|=)[ \t]*:?(?P<ans>[^\n]+)",
    re.IGNORECASE,
)
_HASH_RE = re.compile(r"^[ \t]*####(?P<ans>[^\n]+)", re.MULTILINE)
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


@dataclass(frozen=True)
class Extracted:
    text: str
    method: str  # boxed | answer_is | hashes | last_number


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


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` that closes; `\\boxed 5` gives `5`.

    Linear in the text, so a completion full of unclosed boxes costs one pass, not one pass per box.
    """
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    closing = _closing_braces(text) if any(m.group(1) == "{" for m in matches) else {}
    for m in reversed(matches):
        if m.group(1) == "{":
            end = closing.get(m.end() - 1)
            if end is not None:
                return text[m.end() : end]
        else:
            tail = _BARE_TOKEN.match(text, m.end())
            if tail:
                return tail.group(0)
    return None


def _clean_phrase(ans: str) -> str:
    ans = ans[:1000].strip().lstrip(":").strip()  # an answer phrase is short; bounds work on a hostile line
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
