"""Build tiny random Llama models with a locally trained BPE tokenizer (no hub needed).

The tokenizer is trained on text from the Python standard library's docstrings plus digits and
arithmetic, so math prompts tokenize sensibly. head_dim is 64 so the vLLM CPU backend accepts it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    import collections, json as _json, os as _os, string, textwrap  # noqa: E401  (modules with docstrings)

    lines = []
    for mod in (collections, _json, _os, string, textwrap):
        for name in dir(mod):
            doc = getattr(getattr(mod, name), "__doc__", None)
            if isinstance(doc, str):
                lines.extend(doc.splitlines())
    lines += [f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}." for a in range(60) for b in range(0, 60, 7)]
    lines += ["<think> step by step </think> def f(x): return x * 2", "```python\nprint(1)\n```"]
    return lines


def build_tokenizer(path: Path, vocab_size: int = 1024, pad_is_eos: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token=None,
        pad_token="<|im_end|>" if pad_is_eos else "<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def build_tiny_model(path: str | os.PathLike, seed: int = 0, pad_is_eos: bool = False, layers: int = 2) -> Path:
    """Write a tiny random LlamaForCausalLM + tokenizer to `path` (idempotent) and return the path."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(path, pad_is_eos=pad_is_eos)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(path)
    (path / "prefsmith_tiny.json").write_text(json.dumps({"seed": seed, "pad_is_eos": pad_is_eos}))
    return path


BOXING_TEMPLATE = "{prompt} Reply with the final answer as \\boxed{{ANSWER}}."


def build_boxing_model(base: str | os.PathLike, path: str | os.PathLike, prompts: int = 24) -> Path:
    """The tiny model taught (by `prefsmith train sft`, seconds on a CPU) to answer each of the first built-in math
    prompts both ways, "The answer is \\boxed{N}." and "The answer is N.", then end its turn.

    Sampled at temperature 1 it writes either form for the same prompt, so `format:boxed` differs within a prompt's
    samples: `pairs` finds pairs and GRPO finds groups with a signal, where the random tiny model ties everywhere.
    Returns the trained model folder (idempotent)."""
    from pipelines.cli import main

    path = Path(path)
    run = path / "run"
    for model in (run / "model", run):  # a train output keeps its final model in OUTPUT/model
        if (model / "config.json").exists():
            return model
    path.mkdir(parents=True, exist_ok=True)
    problems = Path(__file__).resolve().parents[1] / "data" / "math" / "train.jsonl"
    lines = problems.read_text().splitlines()[:prompts]
    data = path / "sft.jsonl"
    with data.open("w") as f:
        for problem in map(json.loads, lines):
            prompt = [{"role": "user", "content": BOXING_TEMPLATE.format(prompt=problem["prompt"])}]  # as sampled
            for answer in (f"\\boxed{{{problem['answer']}}}", problem["answer"]):
                f.write(json.dumps({"prompt": prompt, "completion": f"The answer is {answer}."}) + "\n")
    status = main(["train", "sft", "--model", str(base), "--data", str(data), "--output", str(run),
                   "--lr", "5e-3", "--epochs", "8", "--batch-size", "8", "--no-plots", "--no-progress"])
    assert status == 0, "training the boxing model failed"
    return run / "model" if (run / "model" / "config.json").exists() else run


def build_coding_model(base: str | os.PathLike, path: str | os.PathLike, prompts: int = 12) -> Path:
    """The tiny model taught (by `prefsmith train sft` on two-turn traces in the `python` environment's format) to
    answer the first built-in math prompts with a ```python block that prints the answer, then, after the
    ```output block, "The answer is \\boxed{N}." Sampled, it writes python blocks the environment runs, so a GRPO
    run with `--env python` has tool calls to train on. Returns the trained model folder (idempotent)."""
    from pipelines.cli import main
    from pipelines.envs.python_env import SYSTEM

    path = Path(path)
    run = path / "run"
    if (run / "model" / "config.json").exists():
        return run / "model"
    path.mkdir(parents=True, exist_ok=True)
    problems = Path(__file__).resolve().parents[1] / "data" / "math" / "train.jsonl"
    data = path / "sft.jsonl"
    with data.open("w") as f:
        for problem in map(json.loads, problems.read_text().splitlines()[:prompts]):
            answer = problem["answer"]
            f.write(json.dumps({"messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": BOXING_TEMPLATE.format(prompt=problem["prompt"])},
                {"role": "assistant", "content": f"```python\nprint({answer})\n```\n"},
                {"role": "user", "content": f"```output\n{answer}\n```"},
                {"role": "assistant", "content": f"The answer is \\boxed{{{answer}}}."}]}) + "\n")
    status = main(["train", "sft", "--model", str(base), "--data", str(data), "--output", str(run),
                   "--lr", "5e-3", "--epochs", "40", "--batch-size", "4", "--no-plots", "--no-progress"])
    assert status == 0, "training the coding model failed"
    return run / "model"
