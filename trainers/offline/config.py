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
    model: str = field(metadata={"help": "local model directory (policy; for rm the reward model's base)"})
    data: str = field(metadata={"help": "dataset directory (Parquet shards + manifest), .parquet or .jsonl"})
    output: str = field(metadata={"help": "run directory: final model (OUTPUT/model), checkpoints/, metrics.jsonl, "
                                          "plots/"})
    # optimisation
    lr: float = 5e-6  # peak learning rate
    epochs: float = 1.0  # passes over the training data (fractions allowed)
    max_steps: int | None = None  # stop after N optimizer steps (overrides --epochs)
    batch_size: int = 8  # global examples per optimizer step, summed over processes and accumulation micro-steps
    grad_accum: int = 1  # split each step into N micro-batches (saves memory)
    warmup_ratio: float = 0.1  # fraction of the steps spent warming the learning rate up from 0
    warmup_steps: int | None = None  # steps of warm-up from 0; overrides --warmup-ratio when given (TRL's rule)
    scheduler: str = field(default="cosine", metadata={"choices": ("cosine", "linear", "constant"),
                                                       "help": "learning-rate schedule after warm-up"})
    weight_decay: float = 0.0  # AdamW weight decay
    adam_beta1: float = 0.9  # AdamW β1
    adam_beta2: float = 0.999  # AdamW β2
    max_grad_norm: float = 1.0  # clip the global gradient norm (0: off)
    device: str = "auto"  # auto (this process's GPU under torchrun, else GPU 0, else the CPU) | cpu | cuda | cuda:N
    dtype: str = field(default="auto", metadata={
        "choices": ("auto", "fp32", "bf16"),
        "help": "auto: bf16 on CUDA, fp32 on CPU; bf16 is autocast compute over fp32 master weights and AdamW state"})
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward (less memory, ~30% more compute)
    seed: int = 42  # random seed: the same seed and data give the same run
    max_length: int | None = 1024  # truncate prompt+completion to N tokens
    # data
    eval_data: str | None = None  # held-out dataset for eval metrics
    eval_split: float = 0.0  # hold out this fraction of --data for eval
    eval_every: int = 0  # evaluate every N steps (always at the end)
    shuffle: bool = True  # seeded shuffling of the training data (--no-shuffle: length-sorted order)
    group_by_length: bool = True  # batches of similar length (--no-group-by-length: seeded random batches)
    # checkpoints
    save_every: int = 0  # checkpoint every N steps
    save_total_limit: int = 2  # keep the newest N checkpoints
    resume: bool = False  # continue from the newest checkpoint in --output
    # reference model and its cached log-probs
    no_reference: bool = False  # no reference pass (only for --loss simpo/orpo)
    ref_model: str | None = None  # reference model directory (default: --model)
    ref_cache_dir: str | None = None  # where cached reference log-probs live (default $PREFSMITH_CACHE or ~/.cache/prefsmith)
    # preference objectives
    loss: str = "sigmoid"  # DPO variant
    beta: float | None = None  # β (default 0.1; SimPO 2.0; for ORPO this is λ, default 0.1; for IPO it is τ)
    label_smoothing: float = 0.0  # cDPO / robust DPO label-flip rate
    simpo_gamma: float = 1.0  # SimPO target margin γ
    dpop_lambda: float = 50.0  # DPOP penalty weight λ
    # KTO
    desirable_weight: float | None = None  # KTO λ_D (default: the dataset manifest's recommendation, else 1.0)
    undesirable_weight: float | None = None  # KTO λ_U (default as --desirable-weight)
    # reward model
    rm_center_coef: float = 0.0  # reward model: penalty on (r_w + r_l)^2
    # process reward model (train prm)
    prm_soft: bool = field(default=False, metadata={
        "flag": "--soft", "help": "prm: BCE on soft_labels (default: cross-entropy on labels)"})
    step_separator: str | None = field(default=None, metadata={
        "flag": "--step-sep", "help": "prm: separator after each step (default: the prm-label dataset's, else TRL's "
                                      "\\n); escapes like \\n are read"})
    # sharding: FSDP2 under torchrun (trainers/core/fsdp.py); off = plain data parallel
    fsdp: bool = False  # shard weights, gradients and optimizer state over the processes (FSDP2) instead of replicating them (docs/training.md)
    # LoRA (needs peft)
    lora_r: int = 0  # LoRA rank; 0 trains all weights
    lora_alpha: int = 16  # LoRA scaling α (the update is scaled by α / r)
    lora_dropout: float = 0.0  # dropout on the LoRA adapters' input
    # misc
    threads: int | None = None  # torch CPU threads; None: auto (docs/engines.md, Threads); not a resume invariant
    chat_template: str | None = field(default=None, metadata={
        "metavar": "FILE.jinja", "help": "Jinja chat template file used instead of the model's to render chat rows "
                                         "(saved with the trained model)"})
    logging_every: int = 1  # write train metrics every N steps
    progress: bool = True  # a progress bar (--no-progress: none)
    plots: bool = True  # PNG plots at the end (--no-plots: none)
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
