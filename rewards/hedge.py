"""Find every candidate a math answer names, so that an answer naming several is not graded by one of them.

Under RL a policy learns to write `\\boxed{4 \\text{ or } 5}` when any one candidate can match. The math reward
therefore scores an answer by *all* the values it names (the rule and its examples: docs/rewards_math.md,
"Hedged answers"). This module only finds them, as strings; `rewards.math` decides whether they differ.

- `answer_candidates`: the extracted answer split at disjunctions (`or`, `alternatively`, `maybe`, other
  languages' "or", `\\lor`), after `\\text{}` and inner boxes are unwrapped, and at relations whose sides are
  both values (`4 \\approx 5`, `4 \\bmod 5`, `2+2=4`; not `x \\le 5`, an inequality about a variable);
  `approximation` finds `A \\approx d`, one value when d is A rounded (`rounds_to`).
- `nearby_candidates`: values that a disjunction word introduces right before the answer (`5 or \\boxed{4}`)
  or anywhere after it (`\\boxed{4}, or 5`; `Final answer: 4. Alternatively, 5.`; `5 is also possible`);
  `opens_with_alternative`: the answer itself opens with one (`Alternatively: \\boxed{5}`).
- `choice_letters`: the distinct multiple-choice letters an answer names (`C \\text{ or } D`, `(B) or (C)`).
- `prose_candidates`: the same for the last sentence of a completion without a marker (`It is 4 or 5.`).
- `prose_for_fallback`: the text math-verify's extraction and the last-number rule may read when there is no
  marker: code blocks, questions, and runs of three or more words copied from the prompt removed;
  `after_refusal`: what follows `I don't know`; `without_code`: closed code fences blanked, for the markers.

Words are matched after look-alike folding (`fold`): NFKC, accents dropped, invisible format characters
removed and Cyrillic / Greek / small-capital letters that look Latin mapped to Latin, so `оr` (Cyrillic о)
and `ｏｒ` read as `or`. Candidates are cut from the original text, so the math in them is unchanged.

Pure string work in linear time: it runs in the parent process, outside any time limit.
"""
from __future__ import annotations

import re
import unicodedata

from rewards.extract import unwrap

# Latin look-alikes that NFKC keeps apart: Cyrillic, Greek capitals and omicron, Armenian, small capitals.
_CONFUSABLES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "г": "r", "і": "i", "ї": "i", "ј": "j", "к": "k", "м": "m",
    "н": "h", "о": "o", "п": "n", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "һ": "h",
    "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "ь": "b",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
    "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԛ": "Q", "Ԝ": "W",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "ο": "o",
    "օ": "o", "ո": "n", "ս": "u", "ᴏ": "o", "ʀ": "r", "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e",
    "⁄": "/", "∕": "/", "−": "-",
})


def fold(text: str) -> tuple[str, list[int]]:
    """(`text` with look-alikes folded, the index in `text` of each folded character).

    >>> fold("4 \\u043er ５")[0]
    '4 or 5'
    """
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        if ch.isascii():
            out.append(ch)
            index.append(i)
            continue
        for c in unicodedata.normalize("NFKC", ch):
            d = unicodedata.normalize("NFD", c)
            if len(d) > 1 and d[0].isalpha() and all(unicodedata.category(x) == "Mn" for x in d[1:]):
                c = d[0]  # `ó` -> `o`, `ặ` -> `a`; Hangul syllables stay whole
            if unicodedata.category(c) in ("Mn", "Me", "Cf"):
                continue  # combining marks, zero-width and other invisible characters
            out.append(c.translate(_CONFUSABLES))
            index.append(i)
    return "".join(out), index


def _span(index: list[int], start: int, end: int, limit: int) -> tuple[int, int]:
    """A folded span [start, end) in original coordinates."""
    a = index[start] if start < len(index) else limit
    b = index[end - 1] + 1 if end > start else a
    return a, b


# "or" and its neighbours: a disjunction between two candidates (folded text, any case).
_OR_WORDS = (r"or|alternatively|alternately|otherwise|maybe|possibly|perhaps|else|unless|vs|versus|"
             r"oder|ou|ili|или|либо|або|lub|albo|eller|veya|nebo|alebo|oppure|ovvero|sau|vagy|atau|hoac")
_OR_WORDS += "|" + "|".join(w for w in (fold(w)[0] for w in _OR_WORDS.split("|")) if w not in _OR_WORDS.split("|"))
_OR = re.compile(rf"\b(?:{_OR_WORDS})\b|\b(?:might|could|may)\s+(?:also\s+)?be\b|"
                 r"(?<![^\s{(])(?-i:[ouη])(?![^\s})])|"  # Spanish / Italian `o`, `u`; Greek `ή`: alone
                 r"或者|或|还是|還是|または|あるいは|もしくは|또는|혹은|أو|یا|या|או|หรือ|"
                 r"\\lor(?![A-Za-z])|\\vee(?![A-Za-z])|∨", re.IGNORECASE)
# What else separates choice letters: `C, D`, `C and D`, `C/D`, `C & D`.
_CHOICE_SEP = re.compile(r",|;|/|&|\band\b|\\land(?![A-Za-z])|\\wedge(?![A-Za-z])", re.IGNORECASE)
# Relations and operators math-verify grades by one side. `=` splits only pure numbers (`2+2=4`, `4=5`).
_RELATION = re.compile(
    r"\\(?:approx|approxeq|thickapprox|simeq|sim|cong|equiv|neq|ne|not\s*=|leqslant|geqslant|leqq|geqq|leq|geq|"
    r"le|ge|lt|gt|ll|gg|lesssim|gtrsim|doteq|propto|land|wedge|bmod|pmod|mod)(?![A-Za-z])|"
    r"<=?|>=?|≈|≠|≤|≥|∧|∼|≃|≅|≡|⩽|⩾")
_EQUALS = re.compile(r"(?<![<>!\\])=")
# A side that is a variable (`x`, `a_1`, `f(x)`, `\\theta`; not the constants e, i, pi): `x \\le 5` is one answer.
_BARE_VARIABLE = re.compile(r"(?![ei]\b)[A-Za-z](?:_\{?\w+\}?)?'*(?:\([A-Za-z, ]*\))?"
                            r"|\\(?!pi\b|infty\b)[A-Za-z]+(?:_\{?\w+\}?)?")
_TEXT_COMMANDS = ("boxed", "fbox", "text", "textbf", "textit", "textrm", "mbox", "mathrm", "mathbf")
_LEADING_FILLER = re.compile(
    r"(?:\s|[,:;$]|\\[,;!: ]|\b(?:either|maybe|possibly|perhaps|probably|also|else|even|just|equivalently|simply|"
    r"rather|it|its|is|was|be|could|might|may|would|will|the|answer|result|value|final|written|as|in|decimal|"
    r"form|other|words|i\.e\.|ie|that)\b)*", re.IGNORECASE)


def _trim(part: str) -> str:
    """A candidate without leading filler words, `$`, outer punctuation or unbalanced brackets."""
    part = part.strip()
    for _ in range(4):
        before = part
        part = part[_LEADING_FILLER.match(part).end() :]
        part = part.strip().strip("$").strip().rstrip(",.;:!?").strip()
        for opens, closes in ((("(", "["), (")", "]")), (("{",), ("}",))):  # `(0, 2]` is balanced
            n_open, n_close = sum(map(part.count, opens)), sum(map(part.count, closes))
            if part.endswith(opens) or (part.endswith(closes) and n_close > n_open):
                part = part[:-1].strip()
            elif part.startswith(closes) or (part.startswith(opens) and n_open > n_close):
                part = part[1:].strip()
        if part.startswith("{") and part.endswith("}") and "}" not in part[1:-1]:
            part = part[1:-1].strip()
        if part == before:
            break
    return part


def _split(s: str, pattern: re.Pattern) -> list[str]:
    """`s` cut at the matches of `pattern` found in its folded form (the pieces are the original text)."""
    folded, index = fold(s)
    pieces, j = [], 0
    for m in pattern.finditer(folded):
        a, b = _span(index, m.start(), m.end(), len(s))
        pieces.append(s[j:a])
        j = b
    pieces.append(s[j:])
    return pieces


def _relation_sides(part: str) -> list[str]:
    """A part's sides when it is a relation between values (`4 \\approx 5` -> `4`, `5`), else the part."""
    sides = [_trim(x) for x in _split(part, _RELATION)]
    if len(sides) == 1:
        sides = [_trim(x) for x in _EQUALS.split(part)]
        if len(sides) == 1 or any(re.search(r"[A-Za-z]", x) for x in sides):
            return [part]  # `x = 3`, `a+b = 7`: an assignment or a statement, one answer
    sides = [x for x in sides if x]
    if len(sides) < 2 or any(_BARE_VARIABLE.fullmatch(x) for x in sides):
        return [part]  # `x \le 5`, `0 < x < 1`, `\sim 4`: about a variable, or one value
    return sides


def is_relation(gold: str) -> bool:
    """A gold that is itself a relation (`x \\le 5`, `a \\equiv 2 \\pmod 7`): its answers are not split there."""
    return bool(_RELATION.search(fold(gold)[0]))


_APPROX = re.compile(r"\\(?:approx|approxeq|thickapprox|simeq)(?![A-Za-z])|≈|≃")
_DECIMAL = re.compile(r"-?\d+(?:\.\d+)?")


def approximation(answer: str) -> tuple[str, str] | None:
    """(exact, decimal) for an answer `A \\approx d` whose right side is a plain decimal (`\\sqrt{2} \\approx
    1.414`), else None. It names one value when d is A rounded to d's decimals; `rewards.math` checks that."""
    plain = unwrap(answer, _TEXT_COMMANDS)
    sides = [_trim(x) for x in _split(plain, _APPROX)]
    if len(sides) != 2 or not sides[0] or not _DECIMAL.fullmatch(sides[1]):
        return None
    return sides[0], sides[1]


def rounds_to(value: float, decimal: str) -> bool:
    """Whether `decimal` is `value` rounded to its own number of decimals (`1.414` for sqrt 2; not `5` for 4)."""
    places = len(decimal.partition(".")[2])
    return abs(value - float(decimal)) <= 0.5 * 10 ** -places * (1 + 1e-9)


def answer_candidates(answer: str, *, relations: bool = True, choice: bool = False) -> list[str]:
    """The candidates an extracted answer names; one element (the answer itself) when it names one.

    `relations=False` when the gold itself is a relation; `choice=True` when it is a multiple-choice letter
    (then `,`, `and`, `/`, `&` separate letters too).

    >>> answer_candidates(r"4 \\text{ or } 5"), answer_candidates(r"4 \\approx 5"), answer_candidates("x \\le 5")
    (['4', '5'], ['4', '5'], ['x \\\\le 5'])
    """
    plain = unwrap(answer, _TEXT_COMMANDS)
    parts = [_trim(p) for p in _split(plain, _OR)]
    if choice:
        parts = [_trim(x) for p in parts for x in _split(p, _CHOICE_SEP)]
    if relations:
        parts = [x for p in parts for x in _relation_sides(p)]
    parts = [p for p in parts if p]
    return parts if len(parts) > 1 else [answer]


# A value a disjunction may introduce in the text around an answer: `$...$`, a box, a number, a fraction,
# a number word, or (for a choice gold) a letter.
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero _ two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())} | {"thirty": "30", "forty": "40", "fifty": "50",
                                                      "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90"}
_TOKEN = re.compile(r"\\[A-Za-z]+|\d|\w+|\S")
# Words that may stand between a disjunction and the value it introduces (`or maybe it is 5`); any other word
# ends the search (`or, in the worst case, 5` names no candidate).
_FILLER_WORDS = {"it", "its", "s", "the", "answer", "result", "value", "final", "could", "might", "may", "would",
                 "will", "should", "be", "is", "was", "also", "just", "even", "else", "maybe", "possibly", "perhaps",
                 "probably", "either", "we", "i", "get", "got", "one", "instead", "rather", "approximately", "about",
                 "around", "roughly", "simply", "actually", "alternatively", "alternately", "otherwise", "or",
                 "another", "option", "possibility", "candidate", "choice", "other", "equal", "equals", "to",
                 "some", "say", "think", "guess", "go", "with", "pick", "choose", "try", "consider", "correct",
                 "equivalently", "written", "as", "decimal", "form", "fraction", "in", "words"}
_FILLER_PUNCT = set(",:;$()[]{}'\"*-—–")
_FILLER_COMMANDS = {"\\boxed", "\\fbox", "\\text", "\\mathrm", "\\mbox", "\\textbf", "\\(", "\\[", "\\quad"}
_VALUE_RUN = re.compile(r"(?:[^\s,;!?$]|,(?=\d{3}(?!\d)))+")
_MAX_FILLER = 8
_BRACKETED = re.compile(r"[(\[][^()\[\]]{1,80},[^()\[\]]{1,80}[)\]]")  # `(4, 3)`, `[1, 2)`: a tuple or interval


def _values_after(text: str, folded: str, index: list[int], m: re.Match, choice: bool) -> str | None:
    """The value a cue at `m` introduces (`or maybe 5`), skipping at most _MAX_FILLER filler tokens; None if
    the cue leads to a word that is not filler (`or in words...`) or to nothing."""
    skipped, bracket, brace = 0, None, None
    for t in _TOKEN.finditer(folded, m.end()):
        tok = t.group(0)
        low = tok.lower()
        if tok[0].isdigit() or low in ("\\frac", "\\dfrac", "\\tfrac", "\\sqrt", "\\pi") or (
                tok == "-" and folded[t.end():t.end() + 1].isdigit()):
            a, _ = _span(index, t.start(), t.end(), len(text))
            if bracket is not None:  # `or (4, 3)`: the whole tuple or interval
                group = _BRACKETED.match(text, _span(index, bracket, bracket + 1, len(text))[0])
                if group:
                    return group.group(0)
            if brace is not None:  # `or {8/3}+1`: the group opens the value
                a = _span(index, brace, brace + 1, len(text))[0]
            run = _VALUE_RUN.match(text, a)
            return _trim(run.group(0)) if run else None
        if low in _NUMBER_WORDS:
            return _NUMBER_WORDS[low]
        if choice and re.fullmatch(r"[A-J]", tok):
            return tok
        if low in _FILLER_WORDS or tok in _FILLER_PUNCT or tok in _FILLER_COMMANDS or low == "\\":
            bracket = t.start() if tok in "([" else None
            brace = t.start() if tok == "{" else None
            skipped += 1
            if skipped > _MAX_FILLER:
                return None
            continue
        return None
    return None


# A value, then a disjunction, right before the answer: `5 or \boxed{4}`, `either 5 or the answer is 4`.
_GLUE = r"(?:[\s,:;{}$()—–]|\\[,;:! ]|\\\(|\\\[|\\(?:text|mathrm|mbox|textbf|textrm|quad|qquad)\b)"
_BEFORE = re.compile(rf"(-?\d[\d,./]*|\$[^$]{{1,80}}\$|\([A-J]\)|\b[A-J]\b){_GLUE}*(?:(?:{_OR_WORDS})\b|/)"
                     rf"(?:{_GLUE}|\b(?:maybe|possibly|perhaps|even|rather|just|it|is|the|answer|final)\b)*$",
                     re.IGNORECASE)
# An answer that opens with a disjunction (`Alternatively: \\boxed{5}`) is a second answer to an earlier one.
_OPENS_WITH_OR = re.compile(rf"(?:^|[\s.,;:!])(?:{_OR_WORDS})\b(?:{_GLUE}|\b(?:maybe|possibly|perhaps|even|rather|"
                            r"just|it|is|the|answer|final|could|might|may|be|also|would)\b)*$", re.IGNORECASE)
# The value just before a disjunction (`$4$ — or 5`, `(3,4) or`), read back from it within _BEFORE_WINDOW.
_VALUE_BEFORE = re.compile(rf"(?<![\w.])([(\[][^()\[\]]{{1,80}}[)\]]|-?\d[\d,./]*|\$[^$]{{1,80}}\$|\([A-J]\)|"
                           rf"\b[A-J]\b){_GLUE}*$")
_BEFORE_WINDOW = 100
# `5 is also possible`, `5 would equally be correct`, `5 works too`: a second candidate without "or".
_ALSO = re.compile(
    r"(?<![\w.])(-?\d[\d,./]*\d|-?\d|\([A-J]\))[\s)$]*(?:(?:is|are|would|could|might|may|seems?|be)\s+){0,3}"
    r"(?:(?:also|equally)\s+(?:be\s+)?(?:possible|valid|correct|right|plausible|acceptable|accepted|allowed|fine|ok|"
    r"okay|true|works?|an?\s+(?:option|answer|possibility|candidate|solution))\b|"
    r"(?:another|a\s+second|an\s+alternative|the\s+other)\s+(?:valid\s+|possible\s+|correct\s+)?"
    r"(?:option|answer|possibility|candidate|solution)\b|"
    r"(?:works|is\s+(?:possible|valid|correct|fine|ok|okay))\s+(?:too|as\s+well)\b)",
    re.IGNORECASE)
# A disjunction that rules values out (`3 or 5 do not work`, `not 3 or 5`) names no candidate.
_NEGATION = re.compile(
    r"\b(?:not(?!\s+(?:sure|certain|100))|never|neither|nor|no|wrong|incorrect|false|fail\w*|invalid|impossible|"
    r"exclud\w*|rul(?:e|es|ed)\s+out|eliminat\w*|reject\w*|discard\w*|cannot|can't|won't|doesn't|don't|isn't|"
    r"aren't|too\s+(?:small|large|big|high|low|many|few|much|little))\b", re.IGNORECASE)
_NEGATION_WINDOW = 60


def opens_with_alternative(text: str, start: int) -> bool:
    """Whether the answer at `start` is introduced by a disjunction (`Or: \\boxed{5}`, `OR` on the line above)."""
    return bool(_OPENS_WITH_OR.search(fold(text[max(0, start - 100) : start])[0]))


def nearby_candidates(text: str, start: int, end: int, prompt: str | None = None, choice: bool = False) -> list[str]:
    """Values that a disjunction word introduces around the answer at text[start:end]: in the same line just
    before it, or anywhere after `start` (the rest of the answer line and what follows), skipping code blocks
    and text copied from the prompt."""
    found = []
    line_start = text.rfind("\n", 0, start) + 1
    before, _ = fold(text[max(line_start, start - 300) : start])
    m = _BEFORE.search(before)
    if m and (choice or not re.fullmatch(r"\(?[A-J]\)?", m.group(1))):
        found.append(_trim(m.group(1)))
    after = _blank_code(text[start:])
    if prompt:
        after = _blank_copied(after, prompt)
    folded, index = fold(after)
    for cue in _OR.finditer(folded):
        value = _values_after(after, folded, index, cue, choice)
        if value and not _negated(folded, cue.start()):
            found.append(value)
            before = _VALUE_BEFORE.search(folded, max(0, cue.start() - _BEFORE_WINDOW), cue.start())
            if before and (choice or not re.fullmatch(r"\(?[A-J]\)?", before.group(1))):
                a, b = _span(index, before.start(1), before.end(1), len(after))
                found.append(_trim(after[a:b]))  # `$4$ — or was it $5$`: the 4 too
    for m in _ALSO.finditer(folded):
        if choice or not m.group(1).startswith("("):
            a, b = _span(index, m.start(1), m.end(1), len(after))
            found.append(_trim(after[a:b]))
    return found


def _negated(folded: str, at: int) -> bool:
    """Whether the clause around a cue at `at` (within _NEGATION_WINDOW characters) rules values out."""
    lo = max(0, at - _NEGATION_WINDOW)
    hi = at + _NEGATION_WINDOW
    for stop in ".;!?\n":
        k = folded.rfind(stop, lo, at)
        if k >= 0 and not (stop == "." and folded[k + 1 : k + 2].isdigit()):
            lo = max(lo, k + 1)
        k = folded.find(stop, at, hi)
        if k >= 0 and not (stop == "." and folded[k + 1 : k + 2].isdigit()):
            hi = min(hi, k)
    return bool(_NEGATION.search(folded, lo, hi))


_LETTER = re.compile(r"^(?:\\text\{)?\(?([A-J])\)?(?:\}|[\s.:)]|$)")


def choice_letters(candidates: list[str]) -> set[str]:
    """The distinct multiple-choice letters named: each candidate's leading letter, and every `(X)`."""
    letters = set()
    for c in candidates:
        folded = fold(unwrap(c, _TEXT_COMMANDS))[0].strip()
        m = _LETTER.match(folded)
        if m:
            letters.add(m.group(1))
        elif re.search(r"\b[A-J]\b", folded) and len(folded) <= 40:  # `option C`
            letters.add(re.findall(r"\b([A-J])\b", folded)[-1])
        letters.update(re.findall(r"\(([A-J])\)", folded))
        if re.fullmatch(r"[A-E]{2,5}", folded):
            letters.update(folded)  # `BC`: two letters
    return letters


# ---------------------------------------------------------------------------------------------------------
# The text the no-marker fallbacks may read

# Fenced blocks, inline code, and indented lines (four spaces or a tab: Markdown's code blocks).
_CODE = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]+`|^(?:    |\t)[^\n]*", re.DOTALL | re.MULTILINE)
_SENTENCE = re.compile(r"[^.!?\n]*[.!?\n]?")  # no backtracking: one pass over any text
_WORD = re.compile(r"\w+")
_COPIED_WORDS = 3  # a run of this many words that the prompt also contains is the question, restated
# Giving up: `I don't know`, `I cannot determine it`, `not enough information`, `I give up`.
_REFUSAL = re.compile(
    r"\b(?:i\s+(?:cannot|can'?t|can\s+not|am\s+unable|give\s+up)|(?:do\s*not|don'?t)\s+know|dunno|no\s+clue|"
    r"not\s+sure|unsure|no\s+idea|unknown|undetermined|cannot\s+be\s+determined|can'?t\s+be\s+determined|"
    r"impossible\s+to\s+(?:say|tell|determine|know)|not\s+enough\s+information|insufficient\s+information|"
    r"unable\s+to\s+(?:determine|solve|answer))", re.IGNORECASE)


_CLOSED_FENCE = re.compile(r"```.*?```|~~~.*?~~~", re.DOTALL)


def without_code(text: str) -> str:
    """`text` with its closed code fences blanked (same length): `answer = 4` in code is not an answer line."""
    if "```" not in text and "~~~" not in text:
        return text
    return _CLOSED_FENCE.sub(lambda m: " " * len(m.group(0)), text)


def _blank_code(text: str) -> str:
    """`text` with code (fenced, unclosed fences to the end, inline, indented lines) blanked, same length."""
    if "`" not in text and "~~~" not in text and "    " not in text and "\t" not in text:
        return text
    return _CODE.sub(lambda m: " " * len(m.group(0)), text)


def _blank_copied(text: str, prompt: str) -> str:
    """`text` with every run of _COPIED_WORDS or more words that also occurs in the prompt blanked out."""
    prompt_words = [w.lower() for w in _WORD.findall(fold(prompt)[0])]
    grams = {tuple(prompt_words[i : i + _COPIED_WORDS]) for i in range(len(prompt_words) - _COPIED_WORDS + 1)}
    if not grams:
        return text
    folded, index = fold(text)
    words = list(_WORD.finditer(folded))
    lows = [w.group(0).lower() for w in words]
    covered = [False] * len(words)
    for i in range(len(words) - _COPIED_WORDS + 1):
        if tuple(lows[i : i + _COPIED_WORDS]) in grams:
            for k in range(i, i + _COPIED_WORDS):
                covered[k] = True
    out, j, i = [], 0, 0
    while i < len(words):
        if not covered[i]:
            i += 1
            continue
        k = i
        while k + 1 < len(words) and covered[k + 1]:
            k += 1
        a, b = _span(index, words[i].start(), words[k].end(), len(text))
        out += [text[j:a], " " * (b - a)]
        j, i = b, k + 1
    out.append(text[j:])
    return "".join(out)


def prose_for_fallback(text: str, prompt: str | None) -> str:
    """What a marker-less fallback may read: `text` without code blocks, without runs of words copied from the
    prompt, and without questions (`Which is larger, 7 or 9?` names the options, not an answer)."""
    text = _blank_code(text)
    if prompt:
        text = _blank_copied(text, prompt)
    if "?" not in text:
        return text
    return _SENTENCE.sub(lambda m: " " * len(m.group(0)) if m.group(0).endswith("?") else m.group(0), text)


def is_refusal(text: str) -> bool:
    """`I don't know`, `cannot be determined`, `not enough information`...: the completion gives up."""
    return bool(_REFUSAL.search(fold(text)[0]))


def after_refusal(text: str) -> str | None:
    """What follows the last refusal in `text` (`I don't know, maybe 4` -> `, maybe 4`); None if none."""
    folded, index = fold(text)
    last = None
    for last in _REFUSAL.finditer(folded):
        pass
    return None if last is None else text[_span(index, last.start(), last.end(), len(text))[1] :]


def numbers(text: str) -> set[str]:
    """The plain numbers written in `text` (`7`, `1.5`): are a completion's numbers only the question's?"""
    return set(re.findall(r"\d+(?:\.\d+)?", fold(text)[0]))


_VALUE = re.compile(r"-?\d[\d,./]*|\$[^$]{1,80}\$|\([A-J]\)|\b[A-J]\b")


def prose_candidates(text: str, choice: bool = False) -> list[str]:
    """Values joined by a disjunction in the last sentence of a marker-less completion that holds a value:
    `So it is 4 or 5.` -> ['4', '5']; [] when that sentence names one value."""
    last = None
    for m in _SENTENCE.finditer(text):
        if re.search(r"\d|\$|\\\(" + (r"|\b[A-J]\b" if choice else ""), m.group(0)):
            last = m.group(0)
    if last is None:
        return []
    folded, index = fold(last)
    found = []
    for cue in _OR.finditer(folded):
        after = _values_after(last, folded, index, cue, choice)
        if not after:
            continue
        lo = max(0, cue.start() - _BEFORE_WINDOW)
        before = [v.group(0) for v in _VALUE.finditer(folded, lo, cue.start())
                  if choice or not re.fullmatch(r"\(?[A-J]\)?", v.group(0))]
        if before:
            found += [_trim(before[-1]), after]
    return found
