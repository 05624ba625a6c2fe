"""Format rewards: R1 think template, user regex, DAPO soft overlong penalty (values users rely on)."""
from __future__ import annotations

import pickle

import pytest

from rewards import overlong_reward, regex_format_reward, think_format_reward
from rewards.format import soft_overlong_penalty, think_format_results


@pytest.mark.parametrize("text, score, reason", [
    ("<think>2+2 is 4</think>The answer is 4.", 1.0, "ok"),
    ("  \n<think>\nreasoning\n</think>\n\n4", 1.0, "ok"),
    ("<think></think>4", 1.0, "ok"),
    ("The answer is 4.", 0.0, "no_think_start"),
    ("4 <think>late</think> 4", 0.0, "no_think_start"),
    ("<think>never closed 4", 0.0, "unclosed_think"),
    ("<think>a<think>b</think>c</think> 4", 0.0, "nested_think"),
    ("<think>a</think><think>b</think> 4", 0.0, "multiple_think"),
    ("<think>a</think> 4 </think>", 0.0, "stray_close_think"),
    ("<think>a</think>   \n", 0.0, "empty_answer"),
])
def test_think_format(text, score, reason):
    [r] = think_format_results(None, [text])
    assert (r.score, r.reason) == (score, reason)
    assert think_format_reward(None, [text]) == [score]


def test_think_format_chat_completions_and_bad_input():
    conversational = [[{"role": "assistant", "content": "<think>x</think> y"}]]
    assert think_format_reward([[{"role": "user", "content": "q"}]], conversational) == [1.0]
    [r] = think_format_results(None, [42])
    assert (r.score, r.reason) == (None, "bad_completion")


def test_regex_format_is_full_match_with_dotall():
    fn = regex_format_reward(r"<answer>.*</answer>")
    assert fn(None, ["<answer>\nline1\nline2\n</answer>", "x <answer>1</answer>", "<answer>1</answer> tail"]) == [1.0, 0.0, 0.0]
    assert [r.reason for r in fn.results(None, ["<answer>1</answer>", "no"])] == ["ok", "no_match"]
    assert pickle.loads(pickle.dumps(fn))(None, ["<answer>a</answer>"]) == [1.0]
    with pytest.raises(ValueError, match="invalid regular expression"):
        regex_format_reward("(unclosed")


def test_soft_overlong_penalty_matches_dapo_eq13():
    # DAPO defaults: L_max 20480, L_cache 4096 -> free up to 16384 tokens
    assert soft_overlong_penalty(16384, 20480, 4096) == 0.0
    assert soft_overlong_penalty(16384 + 2048, 20480, 4096) == -0.5
    assert soft_overlong_penalty(20480, 20480, 4096) == -1.0
    assert soft_overlong_penalty(20481, 20480, 4096) == -1.0
    assert soft_overlong_penalty(10, 100, 20) == 0.0
    assert soft_overlong_penalty(90, 100, 20) == -0.5


def test_overlong_reward_uses_completion_ids_then_tokenizer(tiny_model):
    fn = overlong_reward(100, 20)
    assert fn(None, ["a", "b", "c"], completion_ids=[[0] * 80, [0] * 90, [0] * 101]) == [0.0, -0.5, -1.0]
    res = fn.results(None, ["a", "b"], completion_ids=[[0] * 95, None])
    assert [(r.score, r.reason) for r in res] == [(-0.75, "soft_penalty"), (None, "no_completion_ids")]
    assert res[0].info == {"length": 95}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = "The answer is 4. " * 10
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    with_tok = overlong_reward(n + 10, 20, tokenizer=str(tiny_model))  # free up to n - 10 tokens
    [r] = with_tok.results(None, [text])
    assert (r.score, r.reason, r.info["length"]) == (-0.5, "soft_penalty", n)
    assert pickle.loads(pickle.dumps(with_tok))(None, [text]) == [-0.5]
    with pytest.raises(ValueError, match="0 < cache < max_len"):
        overlong_reward(10, 20)


@pytest.mark.parametrize("text,score,reason", [
    ("The total is \\boxed{69}.", 1.0, "ok"),
    ("\\boxed{\\frac{1}{2}}", 1.0, "ok"),  # nested braces balance
    ("The total is 69.", 0.0, "no_boxed"),
    ("\\boxed{ }", 0.0, "empty_boxed"),
    ("\\boxed{69", 0.0, "unclosed_boxed"),
    ("\\boxed{6} or \\boxed{9}", 0.0, "multiple_boxed"),
])
def test_boxed_format(text, score, reason):
    from rewards.format import boxed_format_results
    from rewards.plugins import build

    [r] = boxed_format_results(None, [text])
    assert (r.score, r.reason) == (score, reason)
    [via_spec] = build("format:boxed").score(["q"], [[{"role": "assistant", "content": text}]], {})
    assert via_spec.score == score


def test_overlong_counts_only_the_policy_tokens_of_a_trajectory():
    """A multi-turn trajectory's completion_ids hold tool outputs too (mask 0): the length the penalty sees is the
    policy's own tokens, so a long tool output does not punish the policy."""
    from rewards.format import Overlong

    fn = Overlong(max_len=20, cache=5)
    ids = [[1] * 30, [1] * 30]
    masks = [[1] * 10 + [0] * 20, [1] * 30]
    got = fn.results(None, ["a", "b"], completion_ids=ids, completion_mask=masks)
    assert got[0].score == 0.0 and got[0].info["length"] == 10
    assert got[1].score == -1.0 and got[1].info["length"] == 30
    assert fn.results(None, ["a"], completion_ids=[[1] * 30])[0].score == -1.0  # no mask: every token counts
