"""How different two completions are: bit-parallel Levenshtein distance, raw and normalized (the `pairs`
builder's near-duplicate filter, `--min-distance`)."""
from __future__ import annotations


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert/delete/substitute, each cost 1), bit-parallel (Myers 1999, Hyyrö's form).

    The shorter string's columns live in the bits of one Python int, so a comparison costs len(longer)
    big-int operations instead of len(a)*len(b) cell updates: two 2,000-character completions take
    a few milliseconds.
    """
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, ch in enumerate(b):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    mask = (1 << m) - 1
    top = 1 << (m - 1)
    pv, mv, dist = mask, 0, m
    for ch in a:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | ~(xh | pv)
        mh = pv & xh
        if ph & top:
            dist += 1
        elif mh & top:
            dist -= 1
        ph = (ph << 1) | 1  # row 0 of the DP grows by one per character of `a`
        mh = mh << 1
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv & mask
    return dist


def edit_distance(a: str, b: str) -> float:
    """Normalized Levenshtein distance in [0, 1]: levenshtein / length of the longer string."""
    longest = max(len(a), len(b))
    return levenshtein(a, b) / longest if longest else 0.0
