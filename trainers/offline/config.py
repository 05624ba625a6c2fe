"""Typed configuration for `prefsmith train sft|dpo|kto|rm` (and any algorithm in trainers/offline/algorithms.py).

One dataclass holds everything the shared loop needs; algorithm-specific knobs (beta, loss type, KTO weights)
live next to the generic ones so a run's full config can be written to one JSON file and read back. Which
algorithms and DPO loss types exist, and what each accepts, is theirs to say: `check_config(cfg)` in
trainers/offline/algorithms.py checks a config against `ALGORITHMS` and `DPO_LOSSES`, and `make_algorithm` and the CLI
call it before any work. This module checks only what needs no registry, so the algorithms can import it and
it imports none of them.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core.files import atomic_write_text


@dataclass
class TrainConfig:
    """Everything one training run needs. Batch sizes are *global*: the same numbers give the same run on one
    process or many (each process takes batch_size / world_size examples per optimizer step)."""

    algorithm: str
    model: str
    data: str
    output: str
    # optimisation
    lr: float = 5e-6
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None  # overrides warmup_ratio when given (TRL's rule)
    scheduler: str = "cosine"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (trainers/core/distributed.py pick_device)
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32: autocast compute, fp32 master weights
    gradient_checkpointing: bool = False
    seed: int = 42
    max_length: int | None = 1024
    # data
    eval_data: str | None = None
    eval_split: float = 0.0
    eval_every: int = 0
    shuffle: bool = True
    group_by_length: bool = True
    # checkpoints
    save_every: int = 0
    save_total_limit: int = 2
    resume: bool = False
    # reference model and its cached log-probs
    no_reference: bool = False
    ref_model: str | None = None
    ref_cache_dir: str | None = None
    # preference objectives
    loss: str = "sigmoid"  # a DPO loss type
    beta: float | None = None  # None: the algorithm's (loss type's) default
    label_smoothing: float = 0.0
    simpo_gamma: float = 1.0
    dpop_lambda: float = 50.0
    # KTO
    desirable_weight: float | None = None
    undesirable_weight: float | None = None
    # reward model
    rm_center_coef: float = 0.0
    # process reward model (train prm)
    prm_soft: bool = False  # BCE on soft_labels instead of cross-entropy on labels
    step_separator: str | None = None  # None: the prm-label dataset's separator, else TRL's "\n"
    # sharding: FSDP2 under torchrun (trainers/core/fsdp.py); off = plain data parallel
    fsdp: bool = False
    # LoRA (needs peft)
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    # misc
    threads: int | None = None  # torch CPU threads; None: auto (docs/engines.md, Threads); not a resume invariant
    chat_template: str | None = None  # a Jinja chat template file used instead of the model's (and saved with it)
    logging_every: int = 1
    progress: bool = True
    plots: bool = True
    report_to: list[str] = field(default_factory=list)  # trackers besides metrics.jsonl (pipelines/core/tracking.py)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """The checks that need no algorithm registry (the algorithm and its settings: algorithms.check_config)."""
        if self.scheduler not in ("cosine", "linear", "constant"):
            raise ValueError(f"--scheduler must be cosine, linear or constant, not {self.scheduler!r}")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ValueError(f"--dtype must be auto, fp32 or bf16, not {self.dtype!r}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("--batch-size and --grad-accum must be at least 1")
        if not 0.0 <= self.eval_split < 1.0:
            raise ValueError(f"--eval-split must be a fraction in [0, 1), got {self.eval_split}")
        from pipelines.core.tracking import check_installed, parse_report_to
        from pipelines.errors import UserError

        try:
            self.report_to = parse_report_to(self.report_to)
            check_installed(self.report_to)
        except UserError as e:
            raise ValueError(str(e)) from None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
