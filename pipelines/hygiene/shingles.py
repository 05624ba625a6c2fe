"""Text helpers shared by dedup and decontamination: normalization, words, word n-gram shingles and their hashes.

Everything works on Arrow arrays so a batch of thousands of documents is normalized, split and hashed in
C++/numpy without a Python loop per word.

Normalization (`normalize_array`), in this order:
  1. Unicode NFKC (full-width letters, ligatures, superscripts fold to their plain forms);
  2. lowercase (Unicode-aware);
  3. every punctuation character (Unicode category P*: `.,;:!?'"()[]{}-_/` and their Unicode cousins) becomes
     a space. Symbols (category S*: `+ = < > $ ^`) and digits are kept: they carry meaning in math and code;
  4. runs of whitespace collapse to one space; leading/trailing whitespace is removed.
Words are the normalized text split on spaces. A shingle (n-gram) is n consecutive words.

Hashes are stable across runs and machines (a persisted dedup index depends on it): a word's hash is
pandas' SipHash-based `hash_array` with its fixed key; an n-gram's hash is a polynomial of its word hashes
(mod 2^64) passed through the splitmix64 finalizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import UserError
from rewards.chat import conversation_text

_POLY = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the n-gram polynomial
HASH_SCHEME = "siphash-words/poly-splitmix64/v1"  # recorded in persisted indexes


# --------------------------------------------------------------------------------------- field -> text


def column_text(column: pa.Array | pa.ChunkedArray, name: str, where: str) -> pa.Array:
    """A string column, or a chat-message list column turned into one string per row: `conversation_text`
    (rewards/chat.py) on a whole Arrow column. `where` names the file for error messages."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return column.cast(pa.large_string())
    if pa.types.is_null(t):
        return pa.nulls(len(column), pa.large_string())
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_struct(t.value_type):
        if t.value_type.get_field_index("content") < 0:
            raise UserError(f"{where}: column {name!r} holds message lists without a 'content' field")
        flat = column.flatten()
        contents = flat.field("content")
        if not (pa.types.is_string(contents.type) or pa.types.is_large_string(contents.type)):
            raise UserError(f"{where}: column {name!r}: message 'content' must be text, got {contents.type}")
        offsets = pc.subtract(column.offsets, column.offsets[0])
        lists = pa.LargeListArray.from_arrays(offsets.cast(pa.int64()), pc.fill_null(contents, "").cast(pa.large_string()),
                                              mask=column.is_null())
        return pc.binary_join(lists, pa.scalar("\n", pa.large_string()))
    raise UserError(f"{where}: column {name!r} has type {t}; expected text or a list of {{role, content}} messages")


def texts_array(texts: Sequence[str | None]) -> pa.Array:
    return pa.array(list(texts), type=pa.large_string())


# --------------------------------------------------------------------------------------- normalization
def normalize_array(texts: pa.Array) -> pa.Array:
    """Normalize a string array (see module docstring). Nulls stay null."""
    t = pc.utf8_normalize(texts, "NFKC")
    t = pc.utf8_lower(t)
    t = pc.replace_substring_regex(t, r"\pP", " ")
    t = pc.replace_substring_regex(t, r"\s+", " ")
    return pc.utf8_trim_whitespace(t)


def normalize(text: str) -> str:
    """Normalize one string. `normalize("Hello,  WORLD!") == "hello world"`."""
    return normalize_array(texts_array([text]))[0].as_py()


def words_array(normalized: pa.Array) -> pa.Array:
    """List of words per normalized text (null or empty text -> empty list)."""
    lists = pc.utf8_split_whitespace(pc.fill_null(normalized, ""))
    flat = lists.flatten()
    # a normalized text has no leading, trailing or double spaces, so the only empty "word" is an empty text's
    nonempty = pc.not_equal(flat, "")
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    lengths -= pc.equal(pc.fill_null(normalized, ""), "").to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return pa.LargeListArray.from_arrays(pa.array(offsets), flat.filter(nonempty).cast(pa.large_string()))


# --------------------------------------------------------------------------------------- hashing
def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer, in place on a uint64 array."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def string_hashes(strings: pa.Array) -> np.ndarray:
    """Stable 64-bit hashes of a string array (unique values are hashed once)."""
    from pandas.util import hash_array

    enc = pc.dictionary_encode(pc.fill_null(strings, ""))
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    uniq = hash_array(enc.dictionary.to_numpy(zero_copy_only=False))
    return uniq[enc.indices.to_numpy(zero_copy_only=False)] if len(enc) else np.zeros(0, np.uint64)


@dataclass
class Shingles:
    """The word n-grams of a batch of documents, flattened."""

    hashes: np.ndarray  # uint64, one per shingle
    doc: np.ndarray  # int64, document index (0..num_docs-1) of each shingle, ascending
    start: np.ndarray  # int64, position of the shingle's first word within its document
    length: np.ndarray  # int64, words in the shingle (n, or the whole text when shorter than n)
    num_docs: int


def shingles(words: pa.Array, n: int) -> Shingles:
    """Word n-grams of each document. A document with fewer than n words (but at least one) gives one
    shingle: its whole text. An empty document gives none."""
    if n < 1:
        raise ValueError("n-gram size must be >= 1")
    num_docs = len(words)
    offsets = words.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    flat = words.flatten()
    w = string_hashes(flat) if len(flat) else np.zeros(0, np.uint64)
    doc_of_word = np.repeat(np.arange(num_docs, dtype=np.int64), lengths)

    # full n-grams: positions i with i + n <= end of the document
    total = len(w)
    parts_h, parts_doc, parts_start, parts_len = [], [], [], []
    if total >= n:
        L = total - n + 1
        with np.errstate(over="ignore"):
            g = w[:L].copy()
            for k in range(1, n):
                g *= _POLY
                g += w[k:k + L]
        ends = offsets[1:][doc_of_word[:L]]
        ok = np.arange(L, dtype=np.int64) + n <= ends
        idx = np.nonzero(ok)[0]
        parts_h.append(g[idx])
        parts_doc.append(doc_of_word[idx])
        parts_start.append(idx - offsets[doc_of_word[idx]])
        parts_len.append(np.full(len(idx), n, np.int64))
    # short documents: one shingle, the whole text
    short = np.nonzero((lengths > 0) & (lengths < n))[0]
    if len(short):
        hs = np.empty(len(short), np.uint64)
        with np.errstate(over="ignore"):
            for j, d in enumerate(short):
                acc = np.uint64(0)
                for v in w[offsets[d]:offsets[d + 1]]:
                    acc = acc * _POLY + v
                hs[j] = acc
        parts_h.append(hs)
        parts_doc.append(short.astype(np.int64))
        parts_start.append(np.zeros(len(short), np.int64))
        parts_len.append(lengths[short])
    if not parts_h:
        z = np.zeros(0, np.int64)
        return Shingles(np.zeros(0, np.uint64), z, z, z, num_docs)
    h = np.concatenate(parts_h)
    doc = np.concatenate(parts_doc)
    start = np.concatenate(parts_start)
    length = np.concatenate(parts_len)
    order = np.argsort(doc, kind="stable")
    with np.errstate(over="ignore"):
        h = _mix64(h[order])
    return Shingles(h, doc[order], start[order], length[order], num_docs)


def text_hashes(normalized: pa.Array) -> np.ndarray:
    """64-bit hash of each whole normalized text (exact-duplicate keys)."""
    with np.errstate(over="ignore"):
        return _mix64(string_hashes(normalized).copy())
