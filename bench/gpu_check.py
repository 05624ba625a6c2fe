"""A prepared GPU check: every objective's loss and gradient on the device against the CPU, GRPO / PPO / SFT / DPO
steps with their step time, generated tokens/s and peak GPU memory, LoRA and gradient-checkpointing memory, and
FSDP2 in one process. One command, no downloads, a table at the end, exit 1 if any check failed.

    python bench/gpu_check.py                       # on the GPU machine, from the repo root (<= 8 minutes)
    python bench/gpu_check.py --cpu                 # the same on the CPU with small shapes (a dry run, minutes)
    python bench/gpu_check.py --cpu --shapes tiny   # the smallest settings (tests/test_gpu_check.py)

Models are random Llamas built from a config on the CPU with a seed, so the CPU reference and the device start
from the same weights; the tokenizer is the embedded SmolLM2-135M-Instruct's, shipped in
bench/assets/smollm2-tokenizer/ (tokenizer files only). What each part does:

  objectives  each loss through a small random Llama (token_logps / reward_model_scores / the PRM and value
              heads), on the CPU in fp32 (the reference), then on the device in fp32 (within 1e-4) and under bf16
              autocast (within BF16_LOSS / BF16_GRAD); the error is |Δ| / max(|ref|, 1) for a loss and
              ‖Δg‖ / ‖g‖ for the gradient over every parameter.
  offline     trainers.offline.loop.train (sft, dpo) for a few steps on the 135M-shaped model: step time, peak memory.
  fsdp        trainers.core.fsdp.shard_model in a process group of one (trainers' --fsdp refuses one process), loss,
              gradients and the weights after one AdamW step against the unsharded model.
  online      train_grpo with GRPORun and PPORun (hf engine) on the 135M- and the ~0.5B-shaped model: step time,
              generated tokens/s, peak memory.
  memory      peak memory of one GRPO step: full fine-tuning, LoRA, gradient checkpointing.
  async       `--max-staleness 1`: the rollout process on its device (the last GPU with 2+, else shared), the bound
              held at every step, the step time against the synchronous loop's.

A part that raises is one FAIL row with the error's first line; the others still run. A part that would start
past `--budget-s` seconds is SKIPPED (the largest come last). Results also go to `--json`. docs/gpu.md says how
to read the table.
"""
from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the repo's packages, not bench/'s scripts of the same names (bench/rewards.py would shadow rewards/)
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, ROOT / "bench")]
TOKENIZER_DIR = ROOT / "bench" / "assets" / "smollm2-tokenizer"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the tokenizer is in the repo, weights random
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch._dynamo  # noqa: E402  (reset between runs)

FP32_TOL = 1e-4  # device fp32 against CPU fp32: loss and gradient
BF16_LOSS = 2e-2  # bf16 autocast against CPU fp32: |Δloss| / max(|loss|, 1)
BF16_GRAD = 1e-1  # bf16 autocast against CPU fp32: ‖Δg‖ / ‖g‖ (bf16 keeps 8 mantissa bits: ~4e-3 per rounding)

# Llama shapes (vocab 49152 = the shipped tokenizer's). 135m: SmolLM2-135M's config; 0.5b: Qwen2.5-0.5B's dims.
SHAPES: dict[str, dict[str, int]] = {
    "135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536),
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=512),
    "mini": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                 intermediate_size=256),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1,
                 intermediate_size=128),
}


@dataclass(frozen=True)
class Plan:
    """Sizes of one run. `slots` maps the table's model names (135m, 0.5b) to the shape that fills them."""

    objective_shape: str
    pairs: int  # preference pairs in the objective batch (RL rows: 2 × pairs)
    seq_len: int
    slots: dict[str, str]
    generations: int  # G
    prompts_per_step: int
    ppo_prompts: int
    max_new_tokens: int
    rl_steps: int
    offline_shape: str
    offline_steps: int
    offline_batch: int
    offline_words: int  # words per completion in the offline rows
    memory_shape: str


PLANS = {
    "gpu": Plan("small", 4, 64, {"135m": "135m", "0.5b": "0.5b"}, 8, 4, 16, 128, 2, "135m", 5, 8, 120, "135m"),
    "cpu": Plan("mini", 4, 48, {"135m": "mini", "0.5b": "small"}, 4, 2, 4, 24, 2, "mini", 3, 4, 40, "mini"),
    "tiny": Plan("tiny", 2, 24, {"135m": "tiny", "0.5b": "tiny"}, 2, 2, 2, 8, 1, "tiny", 2, 2, 12, "tiny"),
}


# ------------------------------------------------------------------------------------------------ results
@dataclass
class Row:
    section: str
    name: str
    status: str = "FAIL"  # PASS | FAIL | SKIPPED
    values: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    seconds: float = 0.0


COLUMNS: dict[str, list[tuple[str, str]]] = {  # (key in Row.values, header)
    "objectives": [("fp32_loss", "fp32 Δloss"), ("fp32_grad", "fp32 Δgrad"), ("bf16_loss", "bf16 Δloss"),
                   ("bf16_grad", "bf16 Δgrad"), ("loss", "loss"), ("grad_norm", "|g|")],
    "offline": [("shape", "shape"), ("device", "device"), ("steps", "steps"), ("first_step_s", "step1 s"),
                ("step_s", "step s"), ("tokens_per_s", "tok/s"), ("peak_gib", "peak GiB"), ("loss", "loss")],
    "fsdp": [("backend", "backend"), ("loss", "Δloss"), ("grad", "Δgrad"), ("weights", "Δweights"),
             ("generate", "generate")],
    "online": [("shape", "shape"), ("device", "device"), ("steps", "steps"), ("first_step_s", "step1 s"),
               ("step_s", "step s"), ("gen_tokens_per_s", "gen tok/s"), ("train_s", "train s"),
               ("peak_gib", "peak GiB"), ("reward", "reward"), ("grad_norm", "|g|")],
    "memory": [("shape", "shape"), ("peak_gib", "peak GiB"), ("vs_full", "vs full"), ("trainable", "trainable"),
               ("step_s", "step s")],
    "async": [("shape", "shape"), ("device", "device"), ("gpus", "GPUs"), ("steps", "steps"), ("step_s", "step s"),
              ("sync_step_s", "sync step s"), ("sync_s", "weights s"), ("waiting_s", "wait s"),
              ("peak_gib", "peak GiB")],
}
SECTION_TITLES = {
    "objectives": f"1. objectives: device vs CPU fp32 (fp32 within {FP32_TOL:g}; bf16 autocast within "
                  f"{BF16_LOSS:g} loss, {BF16_GRAD:g} grad)",
    "offline": "2. offline loop (trainers.offline.loop.train)",
    "fsdp": f"3. FSDP2, one process (within {FP32_TOL:g})",
    "online": "4. online RL (train_grpo, hf engine)",
    "memory": "5. memory of one GRPO step: full vs LoRA vs gradient checkpointing",
    "async": "6. asynchronous rollouts (--max-staleness 1) against the synchronous loop",
}


class CheckError(Exception):
    """A check's own verdict (a missing config field, a value out of tolerance), reported as one line."""


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.1e}"
        return f"{v:.4g}"
    return str(v)


def _one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}" if not isinstance(err, CheckError) else str(err)
    line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return line[:240]


def print_table(rows: list[Row], header: str = "", out=sys.stdout) -> None:
    if header:
        print(header, file=out)
    for section in SECTION_TITLES:
        part = [r for r in rows if r.section == section]
        if not part:
            continue
        cols = COLUMNS[section]
        header = ["check", "status"] + [h for _, h in cols] + ["s", "note"]
        body = [[r.name, r.status] + [_fmt(r.values.get(k)) for k, _ in cols] + [f"{r.seconds:.1f}", r.note]
                for r in part]
        widths = [max(len(x[i]) for x in [header] + body) for i in range(len(header) - 1)]
        print(f"\n{SECTION_TITLES[section]}", file=out)
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1]  # noqa: E731
        print(line(header).rstrip(), file=out)
        for cells in body:
            print(line(cells).rstrip(), file=out)
    n = {s: sum(r.status == s for r in rows) for s in ("PASS", "FAIL", "SKIPPED")}
    print(f"\n{n['PASS']} passed, {n['FAIL']} failed, {n['SKIPPED']} skipped "
          f"({time.perf_counter() - T_START:.0f} s)", file=out)


# ------------------------------------------------------------------------------------------------ models
def load_tokenizer(path: Path = TOKENIZER_DIR):
    """The shipped tokenizer. transformers 5 reads the folder as it is; an older one that does not know its
    tokenizer class gets the same tokenizer.json, special tokens and chat template through PreTrainedTokenizerFast."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (ValueError, OSError, AttributeError):
        special = json.loads((path / "special_tokens_map.json").read_text())
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), **special)
        tok.chat_template = (path / "chat_template.jinja").read_text()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def llama_config(shape: str, tokenizer):
    from transformers import LlamaConfig

    dims = SHAPES[shape]
    return LlamaConfig(vocab_size=len(tokenizer), head_dim=dims["hidden_size"] // dims["num_attention_heads"],
                       max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **dims)


def build_model_dir(shape: str, folder: Path, tokenizer, seed: int = 0) -> Path:
    """A random Llama of `shape`, initialised on the CPU with `seed`, saved with the tokenizer (save_pretrained)."""
    from transformers import GenerationConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(shape, tokenizer))
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=tokenizer.bos_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder


def n_params(shape: str, vocab: int = 49152) -> int:
    d = SHAPES[shape]
    h, i, layers = d["hidden_size"], d["intermediate_size"], d["num_hidden_layers"]
    head = h // d["num_attention_heads"]
    attn = h * head * (d["num_attention_heads"] * 2 + d["num_key_value_heads"] * 2)
    return vocab * h + layers * (attn + 3 * h * i + 2 * h) + h


def shape_label(shape: str) -> str:
    d = SHAPES[shape]
    return f"{shape} ({n_params(shape) / 1e6:.0f}M, {d['num_hidden_layers']}L×{d['hidden_size']})"


def make_config(cls, **kwargs):
    """`cls(**kwargs)`, or one line naming the first field this version of the config does not have."""
    names = {f.name for f in dataclasses.fields(cls)}
    for key in kwargs:
        if key not in names:
            raise CheckError(f"config has no field {key} ({cls.__name__})")
    return cls(**kwargs)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> float | None:
    """Start a peak-memory window; returns what is still allocated (GiB) from before it, which the peak includes."""
    free_memory()
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device) / 2**30


def baseline_note(base: float | None) -> str:
    return f"; {base:.2f} GiB held before the run is in the peak" if base and base > 0.05 else ""


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None  # CPU: no allocator peak to read (the --cpu dry run reports none)
    return torch.cuda.max_memory_allocated(device) / 2**30


# ------------------------------------------------------------------------------------------------ 1. objectives
def _random_rows(gen: torch.Generator, n: int, seq_len: int, vocab: int, prompt: list[int] | None = None):
    """n sequences of random ids: a prompt (3..8 tokens, or the given one) and a completion (4..), loss on the
    completion. Lengths differ so the batch is padded."""
    rows = []
    for _ in range(n):
        p = prompt if prompt is not None else torch.randint(3, vocab, (int(torch.randint(3, 9, (1,), generator=gen)),),
                                                            generator=gen).tolist()
        c_len = int(torch.randint(4, max(5, seq_len - len(p)), (1,), generator=gen))
        c = torch.randint(3, vocab, (c_len,), generator=gen).tolist()
        rows.append({"input_ids": p + c, "loss_mask": [0] * len(p) + [1] * len(c)})
    return rows


@dataclass(frozen=True)
class Case:
    """One objective: `fn(models, inputs)` is a scalar loss whose gradient over `model`'s parameters is compared
    too, or (not `differentiate`) the outputs compared (GAE). `bf16_scale` widens the bf16 loss tolerance for a
    loss that multiplies the log-prob error by a known factor."""

    name: str
    model: str  # policy | rm | prm | value
    fn: Callable[[dict, dict], torch.Tensor]
    differentiate: bool = True
    bf16_scale: float = 1.0


class Objectives:
    """The models (policy LM, reward model, PRM, value model) and the fixed inputs every objective reads."""

    def __init__(self, plan: Plan, tokenizer, workdir: Path):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

        from trainers.core.data import collate
        from trainers.core.logprobs import sequence_logps, token_logps
        from trainers.online.ppo import ValueModel

        folder = build_model_dir(plan.objective_shape, workdir / "objective_model", tokenizer, seed=1)
        from transformers import AutoModelForCausalLM

        pad = tokenizer.pad_token_id
        torch.manual_seed(2)
        self.models: dict[str, torch.nn.Module] = {"policy": AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)}
        torch.manual_seed(3)
        self.models["rm"] = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)
        self.models["rm"].config.pad_token_id = pad
        torch.manual_seed(4)
        prm_config = AutoConfig.from_pretrained(folder, num_labels=2)
        prm_config.classifier_dropout = 0.0
        self.models["prm"] = AutoModelForTokenClassification.from_pretrained(folder, config=prm_config,
                                                                            dtype=torch.float32)
        torch.manual_seed(5)
        self.models["value"] = ValueModel(str(folder), pad)
        for m in self.models.values():
            m.eval()  # no dropout anywhere: the CPU and the device see the same function

        vocab = len(tokenizer)
        gen = torch.Generator().manual_seed(6)
        B, T = plan.pairs, plan.seq_len
        chosen, rejected = [], []
        for _ in range(B):
            prompt = torch.randint(3, vocab, (int(torch.randint(3, 9, (1,), generator=gen)),), generator=gen).tolist()
            chosen += _random_rows(gen, 1, T, vocab, prompt)
            rejected += _random_rows(gen, 1, T, vocab, prompt)
        rl = _random_rows(gen, 2 * B, T, vocab)
        x: dict[str, torch.Tensor] = {}
        for key, value in collate(chosen + rejected, pad).items():
            x[f"pair_{key}"] = value
        for key, value in collate(rl, pad).items():
            x[f"rl_{key}"] = value
        x["kto_labels"] = torch.tensor([i % 2 == 0 for i in range(B)])
        # PRM: three labelled step positions per RL row (the last token of each "step"), hard and soft targets
        pos = [sorted(torch.randperm(len(r["input_ids"]) - 1, generator=gen)[:3].add(1).tolist()) for r in rl]
        x["prm_rows"] = torch.tensor([i for i, p in enumerate(pos) for _ in p])
        x["prm_cols"] = torch.tensor([c for p in pos for c in p])
        x["prm_hard"] = torch.randint(0, 2, (len(x["prm_cols"]),), generator=gen).float()
        x["prm_soft"] = torch.rand(len(x["prm_cols"]), generator=gen)
        # reference and old values from the CPU policy itself, perturbed so ratios move and margins are non-zero
        pair = self.batch(x, "pair")
        rl_b = self.batch(x, "rl")
        mask = rl_b["loss_mask"].float()
        with torch.no_grad():
            seq, _ = sequence_logps(self.models["policy"], pair)
            tok = token_logps(self.models["policy"], rl_b)
            values = self.models["value"](rl_b)
        # Every kink stays clear of the bf16 rounding (~0.05 in a log-prob): a reference 0.5-1.5 from the policy
        # (DPOP's clamp), and log π − log π_old within ±0.1 of a row's shift 0, ±0.7 or 1.8, so no token and no
        # sequence sits near the clip range [log 0.8, log 1.28] (±0.7: clipped, 1.8: over CISPO's cap 5).
        sign = torch.where(torch.rand(seq.shape, generator=gen) < 0.5, -1.0, 1.0)
        x["ref_seq"] = seq + sign * (0.5 + torch.rand(seq.shape, generator=gen))
        shift = torch.tensor([(0.0, 0.7, -0.7, 1.8)[i % 4] for i in range(tok.size(0))]).unsqueeze(-1)
        wiggle = 0.2 * torch.rand(tok.shape, generator=gen) - 0.1
        x["old_logps"] = (tok - shift - wiggle) * mask
        x["ref_logps"] = tok + 0.2 * torch.randn(tok.shape, generator=gen) * mask
        x["advantages"] = torch.randn(2 * B, generator=gen)
        x["scores"] = torch.randn(2 * B, generator=gen)
        x["old_values"] = (values + 0.3 * torch.randn(values.shape, generator=gen)) * mask
        x["returns"] = torch.randn(values.shape, generator=gen) * mask
        x["rm_margin"] = torch.rand(B, generator=gen)
        self.inputs = x
        self.B = B
        self.T = int(x["rl_input_ids"].shape[1])

    @staticmethod
    def batch(x: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        return {k: x[f"{prefix}_{k}"] for k in ("input_ids", "attention_mask", "loss_mask")}

    def cases(self) -> list[Case]:
        """Every objective as a `Case`, the registries' variants included."""
        from trainers.offline import objectives
        from trainers.offline.algorithms import DPO_LOSSES, Pairs, prm_step_loss
        from trainers.offline.config import TrainConfig
        from trainers.core.logprobs import reward_model_scores, sequence_logps, token_logps
        from trainers.online.rl_objectives import (AGGREGATIONS, PolicyLossConfig, SURROGATES, clipped_value_loss, gae,
                                            kl_penalized_rewards, masked_whiten, policy_loss)

        B, T = self.B, self.T
        out: list[Case] = []

        def sft(m, x):
            logps, n = sequence_logps(m["policy"], self.batch(x, "pair"))
            return objectives.sft_loss(logps, n)

        out.append(Case("sft", "policy", sft))

        for name, kind in DPO_LOSSES.items():
            cfg = TrainConfig(algorithm="dpo", model=".", data=".", output=".", loss=name,
                              label_smoothing=0.1 if name in ("sigmoid", "robust") else 0.0)

            def dpo(m, x, kind=kind, cfg=cfg):
                logps, n = sequence_logps(m["policy"], self.batch(x, "pair"))
                ref = x["ref_seq"] if kind.reference else None
                pairs = Pairs(logps[:B], logps[B:], n[:B], n[B:], None if ref is None else ref[:B],
                              None if ref is None else ref[B:])
                return kind.fn(pairs, kind.default_beta, cfg)[0].mean()

            # DPOP adds λ·β = 5 times the chosen log-prob's shortfall inside the sigmoid: 5x bf16's error there
            scale = cfg.dpop_lambda * kind.default_beta if name == "dpop" else 1.0
            out.append(Case(f"dpo/{name}", "policy", dpo, bf16_scale=scale))

        def kto(m, x):
            pair = self.batch(x, "pair")
            logps, _ = sequence_logps(m["policy"], pair)  # chosen half: the rows; rejected half: mismatched pairs
            return objectives.kto_loss(logps[:B], x["ref_seq"][:B], x["kto_labels"], logps[B:].detach(),
                                       x["ref_seq"][B:], beta=0.1, desirable_weight=1.0,
                                       undesirable_weight=1.33)[0].mean()

        out.append(Case("kto", "policy", kto))

        def rm(m, x):
            scores = reward_model_scores(m["rm"], self.batch(x, "pair"))
            return objectives.bradley_terry_loss(scores[:B], scores[B:], x["rm_margin"]).mean()

        out.append(Case("rm", "rm", rm))

        for soft in (False, True):
            def prm(m, x, soft=soft):
                b = self.batch(x, "rl")
                logits = m["prm"](input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                picked = logits[x["prm_rows"], x["prm_cols"]]
                return prm_step_loss(picked, x["prm_soft" if soft else "prm_hard"], soft) / len(x["prm_cols"])

            out.append(Case(f"prm/{'soft' if soft else 'hard'}", "prm", prm))

        variants = [(loss, sur, level, "k3") for loss in AGGREGATIONS for sur in SURROGATES
                    for level in ("token", "sequence")]
        variants += [("dapo", "clip", "token", "k1"), ("dapo", "clip", "token", "k2")]
        for loss, sur, level, kl in variants:
            cfg = PolicyLossConfig(loss=loss, surrogate=sur, importance_level=level, beta=0.04, kl=kl,
                                   epsilon=0.2, epsilon_high=5.0 if sur == "cispo" else 0.28,
                                   max_completion_length=T)

            def grpo(m, x, cfg=cfg):
                b = self.batch(x, "rl")
                logps = token_logps(m["policy"], b)
                mask = b["loss_mask"].float()
                return policy_loss(logps, x["old_logps"], x["advantages"], b["loss_mask"], cfg,
                                   ref_logps=x["ref_logps"], num_items=float(mask.sum()))[0]

            suffix = "" if kl == "k3" else f"/{kl}"
            out.append(Case(f"grpo/{loss}/{sur}/{level}{suffix}", "policy", grpo))

        def value_loss(m, x):
            b = self.batch(x, "rl")
            return clipped_value_loss(m["value"](b), x["old_values"], x["returns"], b["loss_mask"], 0.2)[0]

        out.append(Case("ppo/value_loss", "value", value_loss))

        def ppo_gae(m, x):
            b = self.batch(x, "rl")
            mask = b["loss_mask"].float()
            values = m["value"](b)
            rewards, _ = kl_penalized_rewards(x["scores"], x["old_logps"], x["ref_logps"], mask, 0.05)
            adv, ret = gae(rewards, values, mask, 1.0, 0.95)
            return torch.cat([adv.flatten(), ret.flatten(), masked_whiten(adv, mask).flatten()])

        out.append(Case("ppo/gae", "value", ppo_gae, differentiate=False))
        return out


def _grad_vector(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().cpu().flatten()
                      for p in model.parameters()])


def _evaluate(fn, models: dict, model_key: str, inputs: dict, differentiate: bool, device: torch.device,
              bf16: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    model = models[model_key]
    model.zero_grad(set_to_none=True)
    x = {k: v.to(device) for k, v in inputs.items()}
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        out = fn(models, x)
    if not differentiate:
        return out.detach().double().cpu(), None
    out.backward()
    grad = _grad_vector(model)
    model.zero_grad(set_to_none=True)
    return out.detach().double().cpu(), grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a − b| relative to the reference b, over the whole tensor: max-abs for outputs (floored at 1)."""
    return float((a - b).abs().max() / max(float(b.abs().max()), 1.0))


def _grad_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    ref = float(b.norm())
    return float((a - b).norm()) / ref if ref > 0 else float((a - b).norm())


def check_objectives(plan: Plan, device: torch.device, tokenizer, workdir: Path) -> list[Row]:
    t0 = time.perf_counter()
    try:
        obj = Objectives(plan, tokenizer, workdir)
        cases = obj.cases()
        on_device = {k: copy.deepcopy(m).to(device) for k, m in obj.models.items()}
    except Exception as e:  # noqa: BLE001 — one FAIL row, the other parts go on
        traceback.print_exc()
        return [Row("objectives", "setup", "FAIL", note=_one_line(e), seconds=time.perf_counter() - t0)]
    rows = []
    setup_s = time.perf_counter() - t0
    for case in cases:
        name, key, fn, differentiate = case.name, case.model, case.fn, case.differentiate
        t1 = time.perf_counter()
        row = Row("objectives", name)
        try:
            ref, ref_grad = _evaluate(fn, obj.models, key, obj.inputs, differentiate, torch.device("cpu"), False)
            row.values["loss"] = float(ref) if ref.numel() == 1 else None
            if ref_grad is not None:
                row.values["grad_norm"] = float(ref_grad.norm())
            bad = []
            for mode, bf16, loss_tol, grad_tol in (("fp32", False, FP32_TOL, FP32_TOL),
                                                   ("bf16", True, BF16_LOSS * case.bf16_scale, BF16_GRAD)):
                try:
                    got, grad = _evaluate(fn, on_device, key, obj.inputs, differentiate, device, bf16)
                except Exception as e:  # noqa: BLE001
                    bad.append(f"{mode}: {_one_line(e)}")
                    continue
                if not torch.isfinite(got).all():
                    bad.append(f"{mode}: non-finite result")
                    continue
                row.values[f"{mode}_loss"] = err = _rel(got, ref)
                if err > loss_tol:
                    bad.append(f"{mode} Δ{'loss' if differentiate else 'out'} {err:.1e} > {loss_tol:g}")
                if grad is not None:
                    row.values[f"{mode}_grad"] = gerr = _grad_rel(grad, ref_grad)
                    if gerr > grad_tol:
                        bad.append(f"{mode} Δgrad {gerr:.1e} > {grad_tol:g}")
            if ref_grad is not None and float(ref_grad.norm()) == 0:
                bad.append("zero gradient: the case checks nothing")
            row.status = "FAIL" if bad else "PASS"
            if bad:
                row.note = "; ".join(bad)
            elif not differentiate:
                row.note = "outputs: advantages, returns, whitened"
            elif case.bf16_scale != 1:
                row.note = f"bf16 loss within {BF16_LOSS * case.bf16_scale:g} (λ·β = {case.bf16_scale:g})"
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            row.note = _one_line(e)
        row.seconds = time.perf_counter() - t1
        rows.append(row)
    if rows:
        rows[0].seconds += setup_s
    del on_device, obj
    free_memory()
    return rows


# ------------------------------------------------------------------------------------------------ data files
WORDS = ("the a model learns from its own samples and every reward says why one number two three four five "
         "check loss gradient step token policy value answer question because therefore so then next").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def offline_rows(kind: str, n: int, words: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = _text(rng, rng.randint(5, 15)) + "?"
        if kind == "sft":
            rows.append({"prompt": prompt, "completion": _text(rng, rng.randint(words // 2, words))})
        else:
            rows.append({"prompt": prompt, "chosen": _text(rng, rng.randint(words // 2, words)),
                         "rejected": _text(rng, rng.randint(words // 2, words))})
    return rows


def prompt_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"p{i}", "prompt": f"What is {rng.randint(2, 99)} plus {rng.randint(2, 99)}?"} for i in range(n)]


# ------------------------------------------------------------------------------------------------ 5. offline loop
def _metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())
            if r.get("split") == "train"]


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def device_fields(device: torch.device, dtype: str) -> dict:
    """The Learner's fields every trainer config takes (docs/gpu.md)."""
    return {"device": str(device), "dtype": dtype}


def check_offline(algo: str, plan: Plan, device: torch.device, dtype: str, model_dir: Path, workdir: Path) -> Row:
    from trainers.offline.config import TrainConfig
    from trainers.offline.loop import train

    row = Row("offline", f"loop/{algo}")

    def body() -> None:
        row.values.update(shape=plan.offline_shape, device=str(device))
        n = plan.offline_batch * plan.offline_steps
        data = write_jsonl(workdir / f"{algo}.jsonl", offline_rows(algo, n, plan.offline_words))
        out = workdir / f"out_{algo}"
        cfg = make_config(TrainConfig, algorithm=algo, model=str(model_dir), data=str(data), output=str(out),
                          max_steps=plan.offline_steps, batch_size=plan.offline_batch, lr=1e-5, progress=False,
                          plots=False, ref_cache_dir=str(workdir / "ref_cache"), max_length=512,
                          **device_fields(device, dtype))
        base = reset_peak(device)
        result = train(cfg)
        row.values["peak_gib"] = peak_gib(device)
        steps = _metrics(out)
        info = json.loads((out / "run_info.json").read_text())
        row.values.update(steps=len(steps), first_step_s=steps[0]["step_time_s"] if steps else None,
                          step_s=_median([s["step_time_s"] for s in steps[1:]]),
                          tokens_per_s=_median([s["tokens_per_s"] for s in steps[1:]]),
                          loss=result.train_metrics.get("loss"), device=info.get("device"))
        problems = []
        if len(steps) != plan.offline_steps:
            problems.append(f"{len(steps)} steps logged, want {plan.offline_steps}")
        if not all(math.isfinite(s.get("loss", float("nan"))) for s in steps):
            problems.append("non-finite loss")
        if not str(info.get("device", "")).startswith(device.type):
            problems.append(f"ran on {info.get('device')}, want {device}")
        if problems:
            raise CheckError("; ".join(problems))
        row.status = "PASS"
        row.note = f"dtype {dtype}" + baseline_note(base)

    return _checked(row, body)


# ------------------------------------------------------------------------------------------------ 4. FSDP2
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fsdp_worker(args) -> int:
    """Child process: a process group of one, trainers.core.fsdp.shard_model on a copy of a random Llama; loss,
    gradients and the weights after one AdamW step against the unsharded model; then a greedy generate with
    the weights gathered (fsdp.full_weights). Prints one JSON line."""
    import torch.distributed as dist

    from trainers.core import fsdp
    from trainers.core.data import collate
    from trainers.core.distributed import Dist
    from trainers.core.logprobs import sequence_logps
    from trainers.offline.objectives import sft_loss
    from trainers.core.optim import adamw
    from transformers import LlamaForCausalLM

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=0, world_size=1)
    try:
        tokenizer = load_tokenizer()
        torch.manual_seed(0)
        plain = LlamaForCausalLM(llama_config(args.fsdp_shape, tokenizer)).to(device)
        sharded = copy.deepcopy(plain)
        fsdp.shard_model(sharded, Dist(rank=0, world=1, device=device))
        gen = torch.Generator().manual_seed(1)
        batch = {k: v.to(device) for k, v in collate(_random_rows(gen, 4, 32, len(tokenizer)),
                                                      tokenizer.pad_token_id).items()}
        res: dict[str, Any] = {"backend": backend}
        losses, grads, weights = [], [], []
        for model in (plain, sharded):
            opt = adamw(model, 1e-3)
            logps, n = sequence_logps(model, batch)
            loss = sft_loss(logps, n)
            loss.backward()
            losses.append(float(loss))
            grads.append(torch.cat([(p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad)
                                    .detach().double().cpu().flatten() for p in model.parameters()]))
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
            opt.step()
            state = fsdp.full_state(model)[0] if fsdp.is_sharded(model) else model.state_dict()
            weights.append(torch.cat([state[k].detach().double().cpu().flatten() for k in sorted(state)]))
        res["loss"] = abs(losses[1] - losses[0]) / max(abs(losses[0]), 1.0)
        res["grad"] = _grad_rel(grads[1], grads[0])
        res["weights"] = float((weights[1] - weights[0]).abs().max())
        prompt = batch["input_ids"][:2, :6]
        with torch.no_grad():
            want = plain.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            with fsdp.full_weights(sharded):
                got = sharded.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        res["generate"] = "same" if torch.equal(want, got) else "differs"
        print(json.dumps(res), flush=True)
    finally:
        dist.destroy_process_group()
    return 0


def check_fsdp(plan: Plan, device: torch.device, timeout: float) -> Row:
    row = Row("fsdp", "fsdp2/1proc")
    t0 = time.perf_counter()
    try:
        env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(_free_port()), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        shape = plan.objective_shape
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--fsdp-worker", "--device", str(device),
                               "--fsdp-shape", shape], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CheckError(f"worker exited {proc.returncode}: {tail}")
        res = json.loads(lines[-1])
        row.values.update(res)
        bad = [f"Δ{k} {res[k]:.1e} > {FP32_TOL:g}" for k in ("loss", "grad", "weights") if res[k] > FP32_TOL]
        if res["generate"] != "same":
            bad.append("greedy tokens differ under full_weights")
        row.status = "FAIL" if bad else "PASS"
        row.note = "; ".join(bad) or f"shape {shape}; process group of 1 started by this script (trainers' --fsdp needs >= 2)"
    except Exception as e:  # noqa: BLE001
        row.note = _one_line(e)
    row.seconds = time.perf_counter() - t0
    return row


# ------------------------------------------------------------------------------------------------ 2. and 3. online
PROBE: dict[str, Any] = {}


def _describe(model) -> dict:
    params = list(model.parameters())
    return {"device": str(params[0].device), "param_dtype": str(params[0].dtype).replace("torch.", ""),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "total": sum(p.numel() for p in params),
            "grad_ckpt": bool(getattr(model, "is_gradient_checkpointing", False))}


from trainers.online.grpo import GRPORun  # noqa: E402
from trainers.online.ppo import PPORun  # noqa: E402


class ProbedGRPORun(GRPORun):
    """GRPORun that records where its policy lives after set-up (a `run_class` for train_grpo). At module level:
    the asynchronous rollout process is spawned and unpickles the run's class."""

    def setup(self) -> None:
        super().setup()
        PROBE.clear()
        PROBE.update(_describe(self.model))


class ProbedPPORun(PPORun):
    def setup(self) -> None:
        super().setup()
        PROBE.clear()
        PROBE.update(_describe(self.model))


# What a random policy can earn: its completion starts (after spaces) with a letter a-m, about two in five do, so a
# group's rewards vary and the loss has a gradient. The point is the machinery, not learning.
REWARD = "format:\\s*[a-mA-M].*"


def run_online(algo: str, plan: Plan, device: torch.device, dtype: str, model_dir: Path, workdir: Path, steps: int,
               **extra) -> dict:
    from trainers.online.grpo import GRPOConfig, train_grpo
    from trainers.online.ppo import PPOConfig

    prompts = write_jsonl(workdir / "prompts.jsonl", prompt_rows(64))
    out = workdir / f"out_{algo}_{len(list(workdir.glob('out_*')))}"
    common = dict(model=str(model_dir), prompts=str(prompts), output=str(out), rewards=[REWARD], seed=0,
                  max_new_tokens=plan.max_new_tokens, max_steps=steps, save_every=0, temperature=1.0,
                  **device_fields(device, dtype), **extra)
    if algo == "grpo":
        cfg = make_config(GRPOConfig, num_generations=plan.generations, prompts_per_step=plan.prompts_per_step,
                          dynamic_sampling=False, **common)
        run_class = ProbedGRPORun
    else:
        cfg = make_config(PPOConfig, prompts_per_step=plan.ppo_prompts, **common)
        run_class = ProbedPPORun
    torch._dynamo.reset()  # each run compiles its own generate, as a fresh process would (no stale graphs)
    base = reset_peak(device)
    PROBE.clear()
    train_grpo(cfg, run_class=run_class)
    steps_logged = _metrics(out)
    return {"steps": steps_logged, "peak": peak_gib(device), "base": base, "probe": dict(PROBE), "out": out}


def _online_checks(res: dict, device: torch.device, steps: int) -> list[str]:
    problems = []
    logged = res["steps"]
    if len(logged) != steps:
        problems.append(f"{len(logged)} steps logged, want {steps}")
    if any(not math.isfinite(float(s.get("loss", float("nan")))) for s in logged):
        problems.append("non-finite loss")
    if any(s.get("sequences", 1) == 0 for s in logged):
        problems.append("a step trained no sequence")
    where = res["probe"].get("device", "?")
    if not where.startswith(device.type):
        problems.append(f"policy on {where}, want {device}")
    if res["probe"].get("param_dtype") != "float32":
        problems.append(f"policy weights {res['probe'].get('param_dtype')}, want float32 master weights")
    return problems


def _checked(row: Row, body: Callable[[], None]) -> Row:
    """Run one check's `body` (it fills `row`, PASS on success): an exception is the row's note, the row is timed,
    and device memory is freed after it."""
    t0 = time.perf_counter()
    try:
        body()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        row.note = _one_line(e)
    row.seconds = time.perf_counter() - t0
    free_memory()
    return row


def check_online(algo: str, slot: str, plan: Plan, device: torch.device, dtype: str, model_dir: Path,
                 workdir: Path) -> Row:
    row = Row("online", f"{algo}/{slot}")

    def body() -> None:
        shape = plan.slots[slot]
        row.values.update(shape=shape_label(shape), device=str(device))
        res = run_online(algo, plan, device, dtype, model_dir, workdir, plan.rl_steps)
        logged = res["steps"]
        row.values.update(steps=len(logged), peak_gib=res["peak"], device=res["probe"].get("device"),
                          first_step_s=logged[0]["step_seconds"] if logged else None,
                          step_s=logged[-1]["step_seconds"] if logged else None,
                          gen_tokens_per_s=logged[-1]["tokens_per_s"] if logged else None,
                          train_s=logged[-1]["seconds_training"] if logged else None,
                          reward=logged[-1].get("reward") if logged else None,
                          grad_norm=max((s.get("grad_norm") or 0.0 for s in logged), default=None))
        problems = _online_checks(res, device, plan.rl_steps)
        if problems:
            raise CheckError("; ".join(problems))
        row.status = "PASS"
        seqs = logged[-1].get("sequences")
        row.note = f"dtype {dtype}; {seqs} sequences/step, ≤{plan.max_new_tokens} new tokens" + baseline_note(res["base"])
        shutil.rmtree(res["out"], ignore_errors=True)

    return _checked(row, body)


def check_async(plan: Plan, device: torch.device, dtype: str, model_dir: Path, workdir: Path) -> Row:
    """`--max-staleness 1` on the device: the rollout process on `--generation-device` (with 2+ GPUs the last one,
    else the trainer's GPU, shared), weights through the host mailbox after each update; every step within the
    bound, and the step time against the synchronous loop's."""
    row = Row("async", "grpo-async/135m")

    def body() -> None:
        row.values.update(shape=shape_label(plan.slots["135m"]), device=str(device),
                          gpus=torch.cuda.device_count() if device.type == "cuda" else 0)
        sync = run_online("grpo", plan, device, dtype, model_dir, workdir, plan.rl_steps)
        res = run_online("grpo", plan, device, dtype, model_dir, workdir, plan.rl_steps, max_staleness=1)
        logged = res["steps"]
        problems = _online_checks(res, device, plan.rl_steps)
        if any(s.get("staleness_max", 0) > 1 for s in logged):
            problems.append("a step trained on rollouts more than 1 update old")
        if any("staleness_max" not in s for s in logged):
            problems.append("no staleness metrics: the rollout process did not run")
        def step_s(steps: list[dict]) -> float:  # after the first (the worker's start-up), when there are more
            later = steps[1:] or steps
            return sum(s["step_seconds"] for s in later) / max(1, len(later))

        row.values.update(steps=len(logged), step_s=step_s(logged), sync_step_s=step_s(sync["steps"]),
                          peak_gib=res["peak"], sync_s=logged[-1].get("seconds_sync") if logged else None,
                          waiting_s=logged[-1].get("seconds_waiting_for_rollouts") if logged else None)
        if problems:
            raise CheckError("; ".join(problems))
        row.note = f"dtype {dtype}; step time async / sync = {row.values['step_s'] / row.values['sync_step_s']:.2f}"
        row.status = "PASS"
        for r in (sync, res):
            shutil.rmtree(r["out"], ignore_errors=True)

    return _checked(row, body)


def check_memory(plan: Plan, device: torch.device, dtype: str, model_dir: Path, workdir: Path) -> list[Row]:
    """One GRPO step three ways; every step's sequences in one micro-batch, so activations count."""
    variants = [("full", {}), ("lora", {"lora_r": 16, "lora_alpha": 32}), ("grad_ckpt", {"gradient_checkpointing": True})]
    rows, full_peak = [], None
    for name, extra in variants:
        row = Row("memory", f"memory/{name}")
        t0 = time.perf_counter()
        try:
            row.values["shape"] = shape_label(plan.memory_shape)
            res = run_online("grpo", plan, device, dtype, model_dir, workdir, 1,
                             micro_batch_size=plan.generations * plan.prompts_per_step, **extra)
            logged, probe = res["steps"], res["probe"]
            row.values.update(peak_gib=res["peak"], step_s=logged[-1]["step_seconds"] if logged else None,
                              trainable=f"{probe.get('trainable', 0) / max(probe.get('total', 1), 1):.1%}")
            problems = _online_checks(res, device, 1)
            if name == "lora" and not probe.get("trainable", 0) < probe.get("total", 0):
                problems.append("every weight trains: LoRA was not applied")
            if name == "grad_ckpt" and not probe.get("grad_ckpt"):
                problems.append("gradient checkpointing is off on the policy")
            if name == "full":
                full_peak = res["peak"]
            elif res["peak"] is not None and full_peak:
                row.values["vs_full"] = f"{res['peak'] / full_peak:.2f}x"
                if res["peak"] >= full_peak:
                    problems.append(f"peak {res['peak']:.2f} GiB is not below full fine-tuning's {full_peak:.2f}")
            if problems:
                raise CheckError("; ".join(problems))
            row.status = "PASS"
            row.note = (baseline_note(res["base"]).lstrip("; ") if res["peak"] is not None
                        else "no GPU: the flag's effect is checked, memory is not measured")
            shutil.rmtree(res["out"], ignore_errors=True)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            row.note = _one_line(e)
        row.seconds = time.perf_counter() - t0
        rows.append(row)
        free_memory()
    return rows


# ------------------------------------------------------------------------------------------------ driver
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="run on the CPU (a dry run; --shapes defaults to cpu)")
    p.add_argument("--shapes", choices=list(PLANS), default=None, help="sizes: gpu (default), cpu (--cpu's), tiny")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="the trainers' --dtype for the training parts (auto: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="a part that would start past this many seconds, counting an estimate from the part like "
                        "it that ran before, is SKIPPED (default 420, for 8 minutes with slack)")
    p.add_argument("--only", action="append", default=[],
                   choices=["objectives", "offline", "fsdp", "online", "memory", "async"],
                   help="run only these parts (repeatable)")
    p.add_argument("--eager", action="store_true",
                   help="turn torch.compile off (transformers compiles the decode step of a static-cache generate "
                        "on CUDA; the first step of each run then pays the compilation)")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--workdir", default=None, help="keep models and runs here (default: a temporary folder, removed)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (--cpu: 1 by default; on a busy 2-core box more threads spin and wait)")
    p.add_argument("--fsdp-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--device", default=None, help=argparse.SUPPRESS)
    p.add_argument("--fsdp-shape", default="tiny", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fsdp_worker:
        return fsdp_worker(args)
    if args.eager:
        torch._dynamo.config.disable = True
    threads = args.threads or (1 if args.cpu else None)
    if threads:
        from pipelines.core.threads import apply_threads

        apply_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the FSDP worker's too

    if args.cpu:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda:0")
        torch.cuda.set_device(device)
    else:
        print("gpu_check: no CUDA device; run with --cpu for the dry run", file=sys.stderr)
        return 2
    # fp32 means fp32 for the comparisons: no TF32 matmuls on the device
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    plan = PLANS[args.shapes or ("cpu" if args.cpu else "gpu")]
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    parts = args.only or ["objectives", "offline", "fsdp", "online", "memory", "async"]

    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the random heads' load reports are expected
    hf_logging.disable_progress_bar()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = (f"gpu_check: device {device} ({name}), torch {torch.__version__}, transformers "
              f"{transformers.__version__}, shapes {args.shapes or ('cpu' if args.cpu else 'gpu')}, dtype {dtype}, "
              f"budget {args.budget_s:.0f} s" + (", torch.compile off" if args.eager else ""))
    print(header, file=sys.stderr, flush=True)

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    tokenizer = load_tokenizer()
    models: dict[str, Path] = {}

    def model_dir(shape: str) -> Path:
        if shape not in models:
            models[shape] = build_model_dir(shape, workdir / f"model_{shape}", tokenizer)
        return models[shape]

    took: dict[str, float] = {}  # seconds each part took, for the next part's estimate

    def stage(section: str, names: list[str], fn: Callable[[], Row | list[Row]], like: str | None = None,
              factor: float = 1.0) -> None:
        """Run one part, or SKIP it when the elapsed time, plus what the part `like` it took × `factor`, passes
        the budget (so the last part started does not run far past it)."""
        if section not in parts:
            return
        elapsed = time.perf_counter() - T_START
        estimate = took.get(like, 0.0) * factor
        if elapsed + estimate > args.budget_s:
            note = (f"budget: {elapsed:.0f} s elapsed" + (f" + ~{estimate:.0f} s for this part" if estimate else "")
                    + f" > --budget-s {args.budget_s:.0f}")
            rows.extend(Row(section, n, "SKIPPED", note=note) for n in names)
            return
        print(f"gpu_check: {section}: {', '.join(names)} ({time.perf_counter() - T_START:.0f} s)", file=sys.stderr,
              flush=True)
        t0 = time.perf_counter()
        try:
            got = fn()
        except Exception as e:  # noqa: BLE001 — a part that failed before its own rows (a model that did not build)
            traceback.print_exc()
            got = [Row(section, n, "FAIL", note=_one_line(e)) for n in names]
        took[names[0]] = time.perf_counter() - t0
        rows.extend(got if isinstance(got, list) else [got])

    try:
        if "objectives" in parts:  # first and never skipped: the cheapest and the most telling
            rows.extend(check_objectives(plan, device, tokenizer, workdir))
        for algo in ("sft", "dpo"):
            stage("offline", [f"loop/{algo}"], lambda algo=algo: check_offline(
                algo, plan, device, dtype, model_dir(plan.offline_shape), workdir))
        stage("fsdp", ["fsdp2/1proc"], lambda: check_fsdp(plan, device, timeout=max(60.0, args.budget_s / 2)))
        for algo in ("grpo", "ppo"):
            stage("online", [f"{algo}/135m"], lambda algo=algo: check_online(
                algo, "135m", plan, device, dtype, model_dir(plan.slots["135m"]), workdir))
        stage("memory", ["memory/full", "memory/lora", "memory/grad_ckpt"],
              lambda: check_memory(plan, device, dtype, model_dir(plan.memory_shape), workdir),
              like="grpo/135m", factor=2.5)
        stage("async", ["grpo-async/135m"],
              lambda: check_async(plan, device, dtype, model_dir(plan.slots["135m"]), workdir),
              like="grpo/135m", factor=2.5)
        for algo in ("grpo", "ppo"):  # the largest last: what the budget cuts first
            stage("online", [f"{algo}/0.5b"], lambda algo=algo: check_online(
                algo, "0.5b", plan, device, dtype, model_dir(plan.slots["0.5b"]), workdir),
                like=f"{algo}/135m", factor=1.5)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    print_table(rows, header)
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1, default=str))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
