"""pipelines/engines/chat.py: a prefsmith engine as the judges' ChatModel, on the real tiny hf model."""
from __future__ import annotations

import pytest

from judges.protocol import ChatModel
from pipelines.engines import SamplingConfig, load_engine
from pipelines.engines.chat import EngineChat

ASK = [{"role": "user", "content": "Is 2 + 3 = 5? Answer yes or no."}]
OTHER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 4 + 4?"}]


@pytest.fixture(scope="module")
def model(tiny_model):
    chat = EngineChat(load_engine("hf", str(tiny_model), device="cpu"))
    yield chat
    chat.close()


def test_an_engine_is_a_chat_model(model, tiny_model):
    assert isinstance(model, ChatModel)
    assert model.name == f"hf:{tiny_model}"


def test_greedy_replies_are_the_engines_own_texts(model):
    replies = model.chat([ASK, OTHER], n=2, max_new_tokens=12)
    assert [len(r) for r in replies] == [2, 2]
    assert all(isinstance(t, str) for r in replies for t in r)
    assert replies[0][0] == replies[0][1]  # greedy: the n replies are the same
    direct = model.engine.generate([ASK, OTHER], SamplingConfig(n=1, temperature=0.0, max_new_tokens=12), [0, 0])
    assert [r[0] for r in replies] == [samples[0].text for samples in direct]


def test_sampled_replies_depend_only_on_the_conversation_and_the_seed(model):
    kw = dict(n=3, temperature=1.0, max_new_tokens=10)
    alone = model.chat([ASK], seed=4, **kw)[0]
    among = model.chat([OTHER, ASK], seed=4, **kw)[1]
    assert alone == among == model.chat([ASK], seed=4, **kw)[0]
    assert len(set(alone)) > 1  # the n replies are n draws
    assert model.chat([ASK], seed=5, **kw)[0] != alone
