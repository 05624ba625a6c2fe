"""Progress a user can watch: `generate` advances per prompt as each prompt's samples end, not per batch.

The boxing model (tests/tiny_model.py) ends its turn after a few tokens, at different steps for different samples,
so prompts of one batch finish at different steps. The held-out evaluation bars of `train grpo`, the reference
log-prob bar of `train dpo` and the "skipped (already complete)" line of a rerun are checked on the README's own
commands (tests/test_readme.py)."""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.core.stage import Shard
from pipelines.engines import load_engine
from pipelines.engines.base import SamplingConfig
from pipelines.stages.generate import GenerateConfig, GenerateStage
from tiny_model import BOXING_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]


def _problems(n: int) -> list[dict]:
    return [json.loads(x) for x in (ROOT / "data/math/train.jsonl").read_text().splitlines()[:n]]


def test_engine_reports_each_prompt_when_its_last_sample_ends(boxing_model):
    engine = load_engine("hf", str(boxing_model), threads=1)
    prompts = [[{"role": "user", "content": BOXING_TEMPLATE.format(prompt=p["prompt"])}] for p in _problems(6)]
    done: list[int] = []
    samples = engine.generate(prompts, SamplingConfig(n=3, temperature=1.0, max_new_tokens=24, seed=0),
                              list(range(6)), on_prompt_done=done.append)
    assert sorted(done) == list(range(6))  # each prompt once
    last_step = [max(len(s.token_ids) for s in group) for group in samples]
    assert len(set(last_step)) > 1  # the six prompts of this one batch end at different steps...
    assert [last_step[i] for i in done] == sorted(last_step)  # ...and are reported as they end
    # the callback changes nothing sampled
    again = engine.generate(prompts, SamplingConfig(n=3, temperature=1.0, max_new_tokens=24, seed=0), list(range(6)))
    assert [[s.token_ids for s in g] for g in again] == [[s.token_ids for s in g] for g in samples]
    engine.close()


def test_generate_stage_ticks_per_prompt(boxing_model):
    cfg = GenerateConfig(model=str(boxing_model), template=BOXING_TEMPLATE, batch_size=8, threads=1,
                         sampling=SamplingConfig(n=2, temperature=1.0, max_new_tokens=16, seed=0))
    stage = GenerateStage(cfg)
    ticks: list[int] = []
    rows = stage(_problems(5), Shard(index=0, start=0, tick=ticks.append))
    stage.shutdown()
    assert ticks == [1] * 5  # one prompt at a time, though all five share one engine batch
    assert len(rows["rows"]) == 10
