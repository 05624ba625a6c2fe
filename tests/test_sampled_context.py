"""Training sets train in the exact context the policy was sampled in (issue 24).

`generate` with `--template` and `--system` on the tiny model (ChatML template), `label`, then `pairs`, `kto`
and `select`: the prompt token ids our DPO, KTO and SFT trainers build, and the ones TRL's DPOTrainer,
KTOTrainer and SFTTrainer build from the same Parquet, equal the ids the engine continued from (the rollout's
`prompt_token_ids`), byte for byte. Through the chat template and without it (`--chat never`: the text the
engine continued, template applied).
"""
from __future__ import annotations

import json

import pytest
import torch

from pipelines.cli import main as cli
from pipelines.core import dataset as ds

SYSTEM = "You solve math problems."
TEMPLATE = "{prompt}\nPut the final answer in \\boxed{{}}."
REWARD = "format:.*in.*"  # about a third of the tiny model's samples contain "in": mixed outcomes per prompt
# a ChatML variant whose assistant turn opens with a partial word, so the turn's first token merges with it
PREFILL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|im_start|>assistant\nThe answ{{ message['content'] }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\nThe answ{% endif %}"
)


@pytest.fixture(scope="module", params=["chat", "text"])
def built(request, tiny_model, tmp_path_factory):
    """Rollouts and the three sets built from them, through the CLI; `chat`: the model's chat template (auto),
    `text`: `--chat never`."""
    d = tmp_path_factory.mktemp(f"context-{request.param}")
    src = d / "prompts.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Kofi has {i} cards and gets {2 * i} more. "
                                       "How many cards does Kofi have now?", "answer": str(3 * i)}) + "\n"
                           for i in range(8)))
    chat = ["--chat", "never"] if request.param == "text" else []
    assert cli(["generate", "--model", str(tiny_model), "--input", str(src), "--output", str(d / "rollouts"),
                "--n", "4", "--max-new-tokens", "8", "--template", TEMPLATE, "--system", SYSTEM, *chat]) == 0
    assert cli(["label", "--input", str(d / "rollouts"), "--output", str(d / "labeled"), "--reward", REWARD]) == 0
    assert cli(["pairs", "--input", str(d / "labeled"), "--output", str(d / "pairs")]) == 0
    assert cli(["kto", "--input", str(d / "labeled"), "--output", str(d / "kto")]) == 0
    assert cli(["select", "--input", str(d / "labeled"), "--output", str(d / "select")]) == 0
    rollouts = {r["id"]: r for r in ds.load_rows(d / "rollouts")}
    return request.param, d, rollouts


def _expected_context(kind: str, question: str):
    user = TEMPLATE.format(prompt=question)
    if kind == "text":  # --chat never: the system message is for chat prompts only
        return user
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def test_rollouts_keep_the_context_and_the_ids_the_engine_continued(built, tiny_model):
    """`sampled_prompt` is the prompt with template and system applied, `prompt_token_ids` its rendering; the
    sampling log-probs are the model's at exactly those ids followed by the completion's (temperature 1)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind, _, rollouts = built
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = list(rollouts.values())
    for r in rows:
        assert r["sampled_prompt"] == _expected_context(kind, r["prompt"])
        assert r["prompt"].startswith("Kofi has")  # the raw prompt stays: rewards, dedup and judges read it
    text = tok.decode(rows[0]["prompt_token_ids"])
    user = TEMPLATE.format(prompt=rows[0]["prompt"])
    assert text == (user if kind == "text" else
                    f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                    "<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    for r in rows[:4]:
        ids = torch.tensor([r["prompt_token_ids"] + r["completion_ids"]])
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].log_softmax(-1)
        n = len(r["prompt_token_ids"])
        got = logp[n - 1:].gather(-1, torch.tensor(r["completion_ids"])[:, None])[:, 0]
        assert got.tolist() == pytest.approx(r["logprobs"], abs=1e-4)


def _prompt_part(feature: dict) -> list[int]:
    return feature["input_ids"][:feature["loss_mask"].index(1)]


def _encode(algorithm: str, data, tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from trainers.offline.algorithms import make_algorithm
    from trainers.offline.config import TrainConfig

    cfg = TrainConfig(algorithm=algorithm, model=str(tiny_model), data=str(data), output=str(tmp_path / algorithm))
    rows = ds.load_rows(data)
    return rows, make_algorithm(cfg).encode(rows, AutoTokenizer.from_pretrained(tiny_model), cfg, str(data))


def test_sets_carry_the_context_in_trl_columns(built):
    kind, d, rollouts = built
    pairs, kto, select = (ds.load_rows(d / name) for name in ("pairs", "kto", "select"))
    assert pairs and kto and select
    assert {r["label"] for r in kto} == {True, False}
    for row in pairs:
        source = rollouts[row["chosen_id"]]
        assert row["prompt"] == source["sampled_prompt"] == rollouts[row["rejected_id"]]["sampled_prompt"]
        assert row["prompt_token_ids"] == source["prompt_token_ids"]
        if kind == "chat":  # TRL's conversational preference format
            assert row["chosen"] == [{"role": "assistant", "content": source["completion"]}]
            assert row["rejected"] == [{"role": "assistant", "content": rollouts[row["rejected_id"]]["completion"]}]
        else:
            assert row["chosen"] == source["completion"]
    for row in kto + select:
        source = rollouts[row["id"]]
        assert row["prompt"] == source["sampled_prompt"]
        assert row["completion"] == ([{"role": "assistant", "content": source["completion"]}] if kind == "chat"
                                     else source["completion"])


def test_our_trainers_build_the_engine_prompt_ids(built, tiny_model, tmp_path):
    _, d, rollouts = built
    rows, examples = _encode("dpo", d / "pairs", tiny_model, tmp_path)
    for row, ex in zip(rows, examples, strict=True):
        want = rollouts[row["chosen_id"]]["prompt_token_ids"]
        assert _prompt_part(ex["chosen"]) == want and _prompt_part(ex["rejected"]) == want
    rows, examples = _encode("kto", d / "kto", tiny_model, tmp_path)
    for row, ex in zip(rows, examples, strict=True):
        assert _prompt_part(ex["completion"]) == rollouts[row["id"]]["prompt_token_ids"]
    rows, examples = _encode("sft", d / "select", tiny_model, tmp_path)
    for row, ex in zip(rows, examples, strict=True):
        assert _prompt_part(ex["seq"]) == rollouts[row["id"]]["prompt_token_ids"]


def test_training_with_another_chat_template_than_the_samplers_warns(built, tiny_model, tmp_path):
    """The round trip (STYLE 12): rows whose prompt renders to other ids than their `prompt_token_ids` are
    counted and named in one warning; with the sampler's own template there is none."""
    from transformers import AutoTokenizer

    from trainers.offline.algorithms import make_algorithm
    from trainers.offline.config import TrainConfig
    from trainers.offline.loop import _prepare_examples

    kind, d, _ = built
    if kind == "text":
        pytest.skip("a plain-text prompt goes through no template")
    cfg = TrainConfig(algorithm="dpo", model=str(tiny_model), data=str(d / "pairs"), output=str(tmp_path / "o"))
    tok = AutoTokenizer.from_pretrained(tiny_model)
    for template, warned in ((tok.chat_template, False), (PREFILL_TEMPLATE, True)):
        tok.chat_template = template
        logged: list[str] = []
        examples, _ = _prepare_examples(cfg, make_algorithm(cfg), tok, logged.append)
        n = len(ds.load_rows(d / "pairs"))
        assert logged == ([f"warning: {n} of {n} training examples tokenize their prompt to other ids than the "
                           "prompt_token_ids they were sampled from (a tokenizer or chat template other than the "
                           "sampler's): they train in a context the policy did not sample in"] if warned else [])


def test_trl_trainers_build_the_engine_prompt_ids(built, tiny_model, tmp_path):
    """The same Parquet through TRL's own dataset preparation (DPOTrainer, KTOTrainer, SFTTrainer)."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, d, rollouts = built
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    common = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, max_length=None)

    def load(name):
        return datasets.load_dataset("parquet", data_dir=str(d / name / "data"), split="train")

    dpo = trl.DPOTrainer(model=model, args=trl.DPOConfig(**common), train_dataset=load("pairs"), processing_class=tok)
    for row in dpo.train_dataset:
        assert row["prompt_ids"] == rollouts[row["chosen_id"]]["prompt_token_ids"]
    kto = trl.KTOTrainer(model=model, args=trl.KTOConfig(**common), train_dataset=load("kto"), processing_class=tok)
    for row in kto.train_dataset:
        assert row["prompt_ids"] == rollouts[row["id"]]["prompt_token_ids"]
    sft = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common), train_dataset=load("select"), processing_class=tok)
    for row in sft.train_dataset:
        trained = [label != -100 for label in row["labels"]]  # the prompt's labels are -100
        assert row["input_ids"][:trained.index(True)] == rollouts[row["id"]]["prompt_token_ids"]


def test_a_token_merging_across_the_boundary_keeps_the_engine_prompt_ids(tiny_model):
    """Where the prompt's last token and the completion's first merge when tokenized together, the trainer keeps
    the engine's prompt ids and tokenizes the completion on its own (TRL warns and trains the merged token)."""
    from transformers import AutoTokenizer

    from rewards.chat import chat_ids, prompt_ids, render_chat
    from trainers.core.data import encode_messages, encode_prompt_completion

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt, completion = "The answ", "er is 5"
    context = prompt_ids(tok, prompt)
    assert tok(prompt + completion)["input_ids"][:len(context)] != context  # "answ" + "er": one token "answer"
    enc = encode_prompt_completion(tok, prompt, completion)
    assert _prompt_part(enc) == context
    assert enc["input_ids"][len(context):] == tok(completion + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert all(enc["loss_mask"][len(context):])

    tok.chat_template = PREFILL_TEMPLATE
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2 + 3?"}]
    context = prompt_ids(tok, chat)
    assert tok.decode(context).endswith("<|im_start|>assistant\nThe answ")
    enc = encode_prompt_completion(tok, chat, completion)
    assert _prompt_part(enc) == context
    assert tok.decode(enc["input_ids"][len(context):]) == "er is 5<|im_end|>\n" and all(enc["loss_mask"][len(context):])
    # a conversation: the first turn follows exactly the ids its context renders to, later turns follow the
    # earlier ids as they were (not re-tokenized: the merge stays split), and only the turns train
    talk = chat + [{"role": "assistant", "content": "er is 5"}, {"role": "user", "content": "And 2 + 4?"},
                   {"role": "assistant", "content": "er is 6"}]
    enc = encode_messages(tok, talk)
    starts = [i for i in range(1, len(enc["loss_mask"])) if enc["loss_mask"][i] and not enc["loss_mask"][i - 1]]
    assert enc["input_ids"][:starts[0]] == chat_ids(tok, talk[:2], add_generation_prompt=True)
    assert tok.decode(enc["input_ids"][:starts[1]]) == render_chat(tok, talk[:4], add_generation_prompt=True)
    trained = [t for t, m in zip(enc["input_ids"], enc["loss_mask"]) if m]
    assert tok.decode(trained) == "er is 5<|im_end|>\ner is 6<|im_end|>\n"
