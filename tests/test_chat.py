"""rewards/chat.py: the one message-list rule and the one prompt rendering, which the generation engines and
the trainers' data path share (online RL trains on the engine's prompt ids plus its sampled ids)."""
from __future__ import annotations

import pytest

from pipelines.engines import load_engine
from rewards.chat import MessageError, completion_text, conversation_text, is_messages, prompt_ids, render_chat
from trainers.core.data import encode_prompt_completion

CHAT = [{"role": "user", "content": "What is 2 + 3?"}]
SYSTEM_CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 2 + 3?"}]
CONVERSATION = [{"role": "user", "content": "a"}, {"role": "assistant", "content": None},
                {"role": "assistant", "content": "b"}]


def test_what_counts_as_a_chat():
    assert is_messages(CHAT) and is_messages(SYSTEM_CHAT)
    assert not is_messages("What is 2 + 3?")
    assert not is_messages([])  # nothing to render: not a chat
    assert not is_messages([{"content": "no role"}])
    assert not is_messages([CHAT[0], "a string"])


def test_completion_is_the_last_message_and_a_conversation_is_all_of_them():
    assert completion_text("4") == "4"
    assert completion_text([{"role": "assistant", "content": "4"}]) == "4"
    assert completion_text({"role": "assistant", "content": "4"}) == "4"
    assert completion_text(CONVERSATION) == "b"
    assert conversation_text(CONVERSATION) == "a\n\nb"  # a None content counts as ""
    assert conversation_text("plain") == "plain" and conversation_text(None) is None
    assert completion_text([{"role": "assistant"}]) == ""


def test_anything_else_is_a_message_error_that_both_kinds_of_caller_catch():
    for bad in (42, [], ["not a message"], [{"role": "assistant", "content": 3}]):
        with pytest.raises(MessageError):
            completion_text(bad)
    for bad in (42, ["not a message"], [{"role": "user", "content": ["parts"]}]):
        with pytest.raises(MessageError):
            conversation_text(bad)
    # rewards turn a TypeError into `bad_completion`; hygiene stages turn a ValueError into a row-naming UserError
    assert issubclass(MessageError, TypeError) and issubclass(MessageError, ValueError)


@pytest.fixture(scope="module")
def hf(tiny_model):
    engine = load_engine("hf", str(tiny_model), device="cpu")
    yield engine
    engine.close()


@pytest.mark.parametrize("prompt", [CHAT, SYSTEM_CHAT, "The answer is"], ids=["chat", "multi-turn", "string"])
def test_engine_prompt_ids_equal_the_trainer_data_path(hf, prompt):
    """What the hf engine continues from is exactly the prompt part the trainer builds around a completion:
    for a chat (the template's open assistant turn) and for a plain string (the tokenizer's own tokens)."""
    engine_ids = hf.prompt_ids(prompt)
    # the prompt part is the engine's ids whatever the completion (a token merging across the boundary is
    # tested in tests/test_sampled_context.py)
    for completion in (" 5", "5.", "5, step by step"):
        enc = encode_prompt_completion(hf.tokenizer, prompt, completion)
        n_prompt = enc["loss_mask"].index(1)
        assert enc["input_ids"][:n_prompt] == engine_ids
        assert all(enc["loss_mask"][n_prompt:])
    assert engine_ids == prompt_ids(hf.tokenizer, prompt)


def test_a_chat_is_rendered_once_with_an_open_assistant_turn(hf):
    ids = hf.prompt_ids(CHAT)
    assert hf.tokenizer.decode(ids) == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    assert ids == hf.tokenizer(render_chat(hf.tokenizer, CHAT, add_generation_prompt=True),
                               add_special_tokens=False)["input_ids"]
    continued = CHAT + [{"role": "assistant", "content": "The answer"}]  # continued, not closed
    assert hf.tokenizer.decode(hf.prompt_ids(continued)).endswith("<|im_start|>assistant\nThe answer")
