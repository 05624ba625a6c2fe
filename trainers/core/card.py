"""The model card: README.md beside a trainer's final weights, with the Hub's model metadata (docs/hub.md).

Every trainer writes it when it writes its final model (`write_model_card`), from what the run recorded: the base
model, the algorithm and its settings, the data it trained on (with the data's own manifest when it is a prefsmith
dataset), the last training metrics and every held-out evaluation of metrics.jsonl. The rendering helpers and the
rule that a user's own README.md is never replaced are `pipelines/core/card.py`'s.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.core.card import card_metadata, cell, render, table, write_card, yaml_block

# the embedded default model (pipelines/engines/models.py) is this Hub model, dequantized from its GGUF release
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# what a saved architecture is for on the Hub, and the class that loads it
_HEADS = (("ForSequenceClassification", "text-classification", "AutoModelForSequenceClassification"),
          ("ForTokenClassification", "token-classification", "AutoModelForTokenClassification"),
          ("ForCausalLM", "text-generation", "AutoModelForCausalLM"))
_MAX_EVAL_ROWS = 20  # held-out table: the first, the last and evenly spaced ones between


@dataclass
class RunInfo:
    """What a model card says about the run that made the model."""

    algorithm: str  # sft, dpo, kto, rm, prm, grpo, rloo, ppo
    base_model: str  # --model as the run got it: a local folder or a Hub id
    config: dict[str, Any]  # the run's settings
    datasets: list[str]  # what it trained on: dataset directories, files or Hub names
    eval_datasets: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # metrics.jsonl
    summary: dict[str, Any] = field(default_factory=dict)  # train_result.json


def write_model_card(model_dir: str | Path, info: RunInfo) -> bool:
    """Write `model_dir/README.md` (not over a README.md prefsmith did not write). True when written."""
    return write_card(model_dir, model_card(model_dir, info))


def hub_model_id(name: str) -> str | None:
    """The Hub id of a model the run started from, when there is one: a name that is not a local folder, or the
    embedded default. A local folder has none (its card names the folder)."""
    from pipelines.engines.models import default_model_dir

    path = Path(name).expanduser()
    if path.exists():
        return DEFAULT_HUB_ID if path.resolve() == default_model_dir().resolve() else None
    return name if _is_repo_id(name) else None


def _is_repo_id(name: str) -> bool:
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def model_card(model_dir: str | Path, info: RunInfo) -> str:
    model_dir = Path(model_dir)
    arch = _architecture(model_dir)
    pipeline_tag, auto_class = next(((tag, cls) for suffix, tag, cls in _HEADS if arch.endswith(suffix)),
                                    ("text-generation", "AutoModelForCausalLM"))
    base_id = hub_model_id(info.base_model)
    hub_data = [d for d in info.datasets if not Path(d).exists() and _is_repo_id(d)]
    tags = ["prefsmith", info.algorithm, *(["lora"] if info.config.get("lora_r") else [])]
    meta: dict[str, Any] = {}
    license_ = card_metadata(info.base_model).get("license") if Path(info.base_model).is_dir() else None
    if license_:
        meta["license"] = license_
    if base_id:
        meta["base_model"] = base_id
    meta.update({"library_name": "transformers", "pipeline_tag": pipeline_tag, "tags": list(dict.fromkeys(tags))})
    if hub_data:
        meta["datasets"] = hub_data

    steps = info.summary.get("steps")
    train = [r for r in info.records if r.get("split", "train") == "train"]
    evals = [r for r in info.records if r.get("split") == "eval"]
    parts = [f"# {model_dir.name if model_dir.name != 'model' else model_dir.parent.name}",
             f"A `{info.algorithm}` model trained with prefsmith from `{info.base_model}`"
             + (f" for {steps} optimizer step{'s' if steps != 1 else ''}" if steps is not None else "") + ".",
             "## Use it\n\n```python\nfrom transformers import AutoTokenizer, " + auto_class + "\n\n"
             f'model = {auto_class}.from_pretrained("{model_dir}")  # or the Hub repo after --push-to-hub\n'
             f'tokenizer = AutoTokenizer.from_pretrained("{model_dir}")\n```']
    rows = [("algorithm", info.algorithm), ("base model", info.base_model), ("base model on the Hub", base_id),
            ("architecture", arch or None), ("steps", steps),
            *(("training data", d) for d in info.datasets), *(("held-out data", d) for d in info.eval_datasets)]
    parts.append("## Training\n\n" + table(["", ""], [r for r in rows if r[1] is not None]))
    data = [_dataset_row(d) for d in [*info.datasets, *info.eval_datasets]]
    data = [r for r in data if r is not None]
    if data:
        parts.append("## Datasets\n\nThe prefsmith datasets the run read, from their manifests (each folder's "
                     "README.md card has the whole lineage):\n\n"
                     + table(["directory", "stage", "rows", "config fingerprint", "input fingerprint"], data))
    if evals:
        parts.append(_evals_section(evals))
    if train:
        last = {k: v for k, v in train[-1].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        parts.append(f"## Final training metrics\n\nThe last logged training step ({last.get('step')}), from "
                     "`metrics.jsonl`:\n\n" + table(["metric", "value"], [(k, v) for k, v in last.items() if k != "step"]))
    parts.append("## Training configuration\n\n" + yaml_block(info.config))
    return render(meta, "\n\n".join(parts))


def _architecture(model_dir: Path) -> str:
    config = model_dir / "config.json"
    if not config.is_file():
        return ""
    return (json.loads(config.read_text()).get("architectures") or [""])[0]


def _dataset_row(source: str) -> tuple | None:
    path = Path(source) / "manifest.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    return (source, m.get("stage"), m.get("rows_out"), m.get("fingerprint"), (m.get("input") or {}).get("fingerprint"))


def _evals_section(evals: list[dict]) -> str:
    if len(evals) > _MAX_EVAL_ROWS:
        picks = sorted({round(i * (len(evals) - 1) / (_MAX_EVAL_ROWS - 1)) for i in range(_MAX_EVAL_ROWS)})
        evals = [evals[i] for i in picks]
    skip = {"step", "split", "time", "minutes", "eval_seconds", "epoch"}
    names = list(dict.fromkeys(k for r in evals for k, v in r.items()
                               if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)))
    rows = [(r.get("step"), *(r.get(n) for n in names)) for r in evals]
    return ("## Held-out results\n\nEvery held-out evaluation of the run (step 0 is the model before training), "
            "from `metrics.jsonl`:\n\n" + table(["step", *(cell(n) for n in names)], rows))


def final_model_dir(output: str | Path) -> Path:
    """Where a `prefsmith train` run's final model is: OUTPUT/model (every trainer), OUTPUT itself (an offline run
    written before that layout), or the last round's model (iterative-dpo, rft: rounds.jsonl)."""
    output = Path(output)
    rounds = output / "rounds.jsonl"
    if rounds.is_file():
        lines = [json.loads(x) for x in rounds.read_text().splitlines() if x.strip()]
        if lines and lines[-1].get("model"):
            return Path(lines[-1]["model"])
    if (output / "model" / "config.json").is_file():
        return output / "model"
    return output
