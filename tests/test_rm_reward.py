"""Reward-model reward: a tiny LlamaForSequenceClassification saved to tmp, scored through the label stage."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.core import dataset as ds
from pipelines.cli import main
from rewards.rm import RewardModel


@pytest.fixture(scope="module")
def tiny_rm(tiny_model, tmp_path_factory) -> Path:
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    path = tmp_path_factory.mktemp("rm") / "tiny_rm"
    config = AutoConfig.from_pretrained(tiny_model)
    config.num_labels = 1
    tok = AutoTokenizer.from_pretrained(tiny_model)
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def direct_score(path: Path, messages: list[dict]) -> float:
    """One conversation, no padding, straight through the model: the reference value."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=ids).logits[0, 0])


def test_rm_scores_through_the_stage_equal_a_direct_model_call(tiny_rm, tmp_path):
    rows = [
        {"id": "a", "prompt": [{"role": "user", "content": "What is 2 + 3?"}], "completion": "The answer is 5."},
        {"id": "b", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 3?"}],
         "completion": "5"},
        {"id": "c", "prompt": [{"role": "user", "content": "Return the sum."}],
         "completion": "Add the numbers one by one and write the total: 5 + 7 = 12. The answer is 12."},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    # batch size 2 -> the first batch pads the shorter row: padding must not change its score
    assert main(["label", "--input", str(src), "--output", str(out), "--no-progress", "--batch-size", "2",
                 "--device", "cpu", "--reward", f"rm:{tiny_rm}", "--reward", "format:think",
                 "--weight", "format=0"]) == 0
    got = ds.load_rows(out)
    for row, src_row in zip(got, rows):
        expected = direct_score(tiny_rm, [*src_row["prompt"], {"role": "assistant", "content": src_row["completion"]}])
        assert row["rewards"]["rm"] == pytest.approx(expected, abs=1e-4)
        assert row["reward_info"]["rm"] == "ok"
        assert row["reward"] == pytest.approx(expected, abs=1e-4)  # format has weight 0
    assert len({round(r["rewards"]["rm"], 6) for r in got}) == 3


def test_string_prompt_is_one_user_message_and_too_long_is_null(tiny_rm):
    rm = RewardModel(str(tiny_rm), device="cpu", batch_size=4, max_length=40)
    short = rm.results(["Hi"], ["Hello."])
    assert short[0].score == pytest.approx(direct_score(tiny_rm, [{"role": "user", "content": "Hi"},
                                                                  {"role": "assistant", "content": "Hello."}]), abs=1e-4)
    [r] = rm.results(["Hi"], ["word " * 200])
    assert (r.score, r.reason, r.info) == (None, "too_long", {"max_length": 40})
    assert rm(["Hi", "Hi"], ["Hello.", "word " * 200]) == [short[0].score, None]
