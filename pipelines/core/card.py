"""Cards: the README.md of a dataset or model folder, with the Hugging Face Hub's YAML metadata on top, written
from what the run recorded (docs/hub.md).

A card we write carries `MARKER` (an HTML comment, invisible on the Hub). A README.md without it is the user's:
it is never replaced, and `write_card` says so by returning False.

This module renders; it reads no dataset layout of its own. `pipelines/core/dataset.py` calls `dataset_card` with
the manifest, the shard files and the upstream manifests whenever it writes a finished dataset's manifest, so every
stage (sharded, dedup's global one, `write_dataset`) gets its card at the same moment. The model card is
`trainers/core/card.py`, built on `render` and `write_card` here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipelines.core.files import atomic_write_text

README = "README.md"
MARKER = ("<!-- prefsmith:card — written by prefsmith from this folder's run record and rewritten when the run "
          "writes it again; delete this line to keep your own edits -->")
_MARKER_KEY = "<!-- prefsmith:card"

# Tags from the columns a dataset has: what a user can train on it, whatever stage wrote it last.
TAGS_BY_COLUMNS: tuple[tuple[frozenset[str], tuple[str, ...]], ...] = (
    (frozenset({"chosen", "rejected"}), ("dpo", "preference")),
    (frozenset({"completion", "label"}), ("kto",)),
    (frozenset({"completions", "labels"}), ("prm", "process-supervision")),
    (frozenset({"reward"}), ("rl", "rewards")),
    (frozenset({"messages"}), ("sft",)),
)
# Tags from the stage that wrote it.
TAGS_BY_STAGE: dict[str, tuple[str, ...]] = {
    "generate": ("rollouts", "synthetic"),
    "label": ("rewards",),
    "prm-label": ("prm",),
    "judge": ("ai-feedback",),
    "critique-revise": ("constitutional-ai", "ai-feedback"),
    "dedup": ("deduplicated",),
    "decontaminate": ("decontaminated",),
    "pairs": ("dpo",),
    "kto": ("kto",),
    "select": ("sft", "rft"),
    "eval": ("evaluation",),
    "train-grpo-rollouts": ("rl", "rollouts"),
}
HYGIENE = ("dedup", "decontaminate")
# manifest keys a stage adds when it finishes (update_manifest): shown under "Results"
RESULT_KEYS = ("summary", "generation", "counts", "decontamination", "prm", "lsh", "clustering", "stats")
# The Hub's size_categories buckets: (upper bound, label)
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


# ----------------------------------------------------------------------------------------------- shared
def render(metadata: dict[str, Any], body: str) -> str:
    """A card: YAML front matter (the Hub reads it), the marker, then the markdown body."""
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)
    return f"---\n{front}---\n{MARKER}\n\n{body.rstrip()}\n"


def is_ours(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() and _MARKER_KEY in path.read_text(encoding="utf-8", errors="replace")


def write_card(folder: str | Path, text: str) -> bool:
    """Write `folder/README.md` unless a README.md that prefsmith did not write is there. True when written."""
    path = Path(folder) / README
    if path.exists() and not is_ours(path):
        return False
    atomic_write_text(path, text)
    return True


def card_metadata(folder: str | Path) -> dict[str, Any]:
    """The YAML front matter of `folder/README.md` (ours or the user's); {} when there is none or it is not YAML."""
    path = Path(folder) / README
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    head, sep, _ = text[3:].partition("\n---")
    try:
        meta = yaml.safe_load(head) if sep else None
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def size_category(rows: int) -> str:
    return next((label for bound, label in _SIZES if rows < bound), "n>1B")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; cells are written with `cell`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, default=str)
    return str(value).replace("|", "\\|").replace("\n", " ")


def yaml_block(value: Any) -> str:
    """A YAML code block of a config, less any secret (SECRET_KEYS, at any depth)."""
    return ("```yaml\n" + yaml.safe_dump(_public(value), sort_keys=False, allow_unicode=True, width=1000).rstrip()
            + "\n```")


SECRET_KEYS = frozenset({"api_key", "token", "hf_token", "password", "authorization"})


def _public(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if str(k).lower() not in SECRET_KEYS}
    if isinstance(value, (list, tuple)):
        return [_public(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------- datasets
def dataset_card(directory: str | Path, manifest: dict, files: Sequence[Path], side: dict[str, Sequence[Path]],
                 upstream: Sequence[tuple[str, dict]]) -> str:
    """The card of a finished dataset directory.

    `files`: its Parquet shards (`DIR/data/`); `side`: side datasets by name (`removed` → `DIR/removed/data/`);
    `upstream`: (source, manifest) of the inputs it was made from, nearest first, as far as they are on disk."""
    directory = Path(directory)
    stage = manifest.get("stage") or "unknown"
    schema, rows = _footers(files)
    chain = [(str(directory), manifest), *upstream]
    columns = set(schema.names) if schema is not None else set()
    tags = ["prefsmith", *TAGS_BY_STAGE.get(stage, ())]
    tags += [t for cols, ts in TAGS_BY_COLUMNS if cols <= columns for t in ts]
    tags += [t for _, m in upstream if m.get("stage") in HYGIENE for t in TAGS_BY_STAGE[m["stage"]]]
    meta: dict[str, Any] = {}
    license_ = next((lic for lic in (card_metadata(src).get("license") for src, _ in upstream) if lic), None)
    if license_:
        meta["license"] = license_
    meta.update({"pretty_name": directory.name or stage, "tags": list(dict.fromkeys(tags)),
                 "task_categories": ["text-generation"], "size_categories": [size_category(rows)]})
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}] if files else []
    configs += [{"config_name": name, "data_files": [{"split": "train", "path": f"{name}/data/*.parquet"}]}
                for name, side_files in side.items() if side_files]
    if configs:
        meta["configs"] = configs

    removed = {name: _footers(side_files, schema=False)[1] for name, side_files in side.items()}
    parts = [f"# {directory.name or stage}",
             f"A prefsmith dataset written by the `{stage}` stage: **{rows} rows**"
             + (f" from {manifest['rows_in']} input rows" if manifest.get("rows_in") is not None else "")
             + (f", finished {manifest['finished_at']}" if manifest.get("finished_at") else "") + ".",
             _load_section(directory, files, side),
             "## Columns\n\n" + (table(["column", "type"], [(f.name, str(f.type)) for f in schema])
                                if schema is not None else "No rows.")]
    counts = [("input", manifest.get("rows_in")), ("output (`data/`)", rows),
              *((f"{name} (`{name}/data/`)", n) for name, n in removed.items()),
              ("shards", manifest.get("num_shards"))]
    parts.append("## Row counts\n\n" + table(["", "rows"], counts))
    policy = _find(chain, lambda m: isinstance(m.get("config"), dict) and "sampling" in m["config"])
    if policy:
        parts.append(_policy_section(*policy))
    rewards = _find(chain, lambda m: isinstance(m.get("config"), dict) and "rewards" in m["config"]
                    and "weights" in m["config"])
    if rewards:
        parts.append(_rewards_section(*rewards))
    hygiene = [(src, m) for src, m in chain if m.get("stage") in HYGIENE]
    if hygiene:
        parts.append(_hygiene_section(hygiene))
    if upstream:
        parts.append(_lineage_section(chain))
    parts.append("## Configuration\n\nThe settings that decide this stage's output (its fingerprint covers them):"
                 "\n\n" + yaml_block(manifest.get("config") or {}))
    results = {k: manifest[k] for k in RESULT_KEYS if manifest.get(k)}
    if results:
        parts.append("## Results\n\nWhat the stage recorded when it finished:\n\n" + yaml_block(results))
    parts.append(_fingerprints_section(manifest))
    return render(meta, "\n\n".join(parts))


def _footers(files: Sequence[Path], schema: bool = True) -> tuple[pa.Schema | None, int]:
    """(the union schema, the row count) of Parquet files, from their footers."""
    metas = [pq.read_metadata(f) for f in files]
    schemas = [s for s in (m.schema.to_arrow_schema() for m in metas) if len(s)] if schema else []
    return (pa.unify_schemas(schemas, promote_options="permissive") if schemas else None,
            sum(m.num_rows for m in metas))


def _find(chain: Sequence[tuple[str, dict]], test) -> tuple[str, dict] | None:
    """The nearest (source, manifest) of the chain for which `test(manifest)` holds."""
    return next(((src, m) for src, m in chain if test(m)), None)


def _load_section(directory: Path, files: Sequence[Path], side: dict[str, Sequence[Path]]) -> str:
    if not files:
        return "## Loading\n\nThis dataset has no rows."
    lines = ["from datasets import load_dataset", "",
             f'rows = load_dataset("parquet", data_dir="{directory / "data"}", split="train")  # this folder',
             'rows = load_dataset("REPO", split="train")  # after `--push-to-hub REPO`: the card\'s configs name the shards']
    lines += [f'{name} = load_dataset("REPO", "{name}", split="train")' for name, f in side.items() if f]
    return "## Loading\n\n```python\n" + "\n".join(lines) + "\n```"


def _policy_section(source: str, m: dict) -> str:
    config = m["config"]
    rows = [("model", config.get("model")), ("engine", config.get("engine")),
            *((k, v) for k, v in (config.get("sampling") or {}).items()),
            *((k, config.get(k)) for k in ("template", "system", "chat") if config.get(k) is not None)]
    return (f"## Policy and sampling\n\nThe completions were sampled by `{m.get('stage')}` (`{source}`) with:\n\n"
            + table(["setting", "value"], rows))


def _rewards_section(source: str, m: dict) -> str:
    config = m["config"]
    names = config.get("names") or []
    specs = config.get("rewards") or []
    weights = config.get("weights") or {}
    rows = [(n, specs[i] if i < len(specs) else None, weights.get(n)) for i, n in enumerate(names)]
    rewards = (m.get("summary") or {}).get("rewards") or {}
    if rewards:
        rows = [(*r, rewards.get(r[0], {}).get("mean"), rewards.get(r[0], {}).get("null")) for r in rows]
    header = ["reward", "spec", "weight", *(["mean", "null rows"] if rewards else [])]
    text = (f"## Rewards\n\nScored by `{m.get('stage')}` at `{source}`; `reward` is the weighted sum, null when a "
            "reward could not score the row (its reason is in `reward_info`):\n\n" + table(header, rows))
    if config.get("null_on_timeout"):
        text += "\n\nA checker that timed out scored null (`--null-on-timeout`)."
    return text


def _hygiene_section(steps: Sequence[tuple[str, dict]]) -> str:
    rows = []
    for src, m in steps:
        config = m.get("config") or {}
        settings = ({k: config.get(k) for k in ("field", "threshold", "ngram", "keep") if k in config}
                    if m["stage"] == "dedup" else
                    {"ngram": config.get("ngram"), "against": [a.get("name") for a in config.get("against") or []]})
        rows.append((m["stage"], src, m.get("rows_in"), m.get("rows_out"),
                     None if m.get("rows_in") is None or m.get("rows_out") is None else m["rows_in"] - m["rows_out"],
                     settings))
    return "## Hygiene\n\n" + table(["step", "directory", "rows in", "rows out", "removed", "settings"], rows)


def _lineage_section(chain: Sequence[tuple[str, dict]]) -> str:
    rows = [(i, m.get("stage"), src, m.get("rows_in"), m.get("rows_out"), m.get("fingerprint"),
             (m.get("input") or {}).get("fingerprint")) for i, (src, m) in enumerate(chain)]
    first = chain[-1][1].get("input") or {}
    text = ("## Lineage\n\nThis dataset (0) and the datasets it was made from, as their manifests were on disk when "
            "this card was written. Each stage records the content fingerprint of its input:\n\n"
            + table(["", "stage", "directory", "rows in", "rows out", "config fingerprint", "input fingerprint"], rows))
    if first.get("source"):
        text += f"\n\nThe first input: `{first['source']}` (fingerprint `{first.get('fingerprint')}`)."
    return text


def _fingerprints_section(manifest: dict) -> str:
    inp = manifest.get("input") or {}
    rows = [("config fingerprint", manifest.get("fingerprint")), ("input", inp.get("source")),
            ("input fingerprint", inp.get("fingerprint")), ("executor", manifest.get("executor")),
            ("started", manifest.get("started_at")), ("finished", manifest.get("finished_at")),
            ("seconds", manifest.get("seconds"))]
    rows = [r for r in rows if r[1] is not None]
    versions = manifest.get("versions") or {}
    text = "## Fingerprints and versions\n\n" + table(["", ""], rows) if rows else "## Fingerprints and versions"
    if versions:
        text += "\n\n" + table(["package", "version"], sorted(versions.items()))
    return text + "\n\nThe full record is `manifest.json` in this folder."
