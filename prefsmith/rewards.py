"""Rewards on rows in memory, no files: `score(rows, reward=[...])` and `get(spec)` in TRL's signature.

    import prefsmith

    rows = [{"prompt": "2+3?", "completion": "\\\\boxed{5}", "answer": "5"}]
    prefsmith.score(rows, reward=["math", "format:boxed"], weight={"format": 0.2})[0]["reward"]   # 1.2
    math = prefsmith.rewards.get("math")       # fn(prompts, completions, **columns) -> [float | None]
    math(["2+3?"], ["\\\\boxed{5}"], answer=["5"])  # [1.0]; GRPOTrainer(reward_funcs=[math]) takes it as it is

Specs are `prefsmith label`'s (docs/rewards.md); scoring is the label stage's own row function (`label_rows`), so
a row gets the same `rewards`, `reward` and `reward_info` here as in a labeled dataset.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

from pipelines.errors import UsageError, UserError
from prefsmith.api import as_rows, is_rows


class TrlReward:
    """One reward as TRL's reward function: `fn(prompts, completions, **columns) -> list[float | None]`.
    `results(...)` gives the `RewardResult`s (score and reason); `close()` stops its worker processes, if any.
    Picklable (a reward function is shipped to worker processes)."""

    def __init__(self, reward):
        self.reward = reward  # rewards.plugins.RewardFn
        self.__name__ = reward.name  # TRL logs a reward function under its __name__

    def results(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list:
        return self.reward.score(list(prompts), list(completions), {k: list(v) if isinstance(v, (list, tuple))
                                                                     else v for k, v in columns.items()})

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        return [r.score for r in self.results(prompts, completions, **columns)]

    def close(self) -> None:
        self.reward.close()

    def __repr__(self) -> str:
        return f"TrlReward({self.reward.spec!r})"


def _config(specs: list[str], weight: Any, workers: int | None, batch_size: int, device: str | None,
            null_on_timeout: bool):
    from pipelines.stages.label import LabelConfig

    weights = [f"{k}={v}" for k, v in weight.items()] if isinstance(weight, dict) else list(weight or [])
    return LabelConfig(rewards=specs, weights=weights, workers=workers, batch_size=batch_size, device=device,
                       null_on_timeout=null_on_timeout)


def get(spec: str, *, workers: int | None = None, batch_size: int = 64, device: str | None = None,
        null_on_timeout: bool = False) -> TrlReward:
    """The reward `spec` (as `prefsmith label --reward` takes it) as a function in TRL's signature; options as
    `prefsmith label`'s flags of the same names."""
    from pipelines.stages.label import load_rewards

    fns, _, _ = load_rewards(_config([spec], None, workers, batch_size, device, null_on_timeout))
    return TrlReward(fns[0])


def _reward_fn(reward: str | Callable, cfg) -> Any:
    """A spec -> the label stage's RewardFn; a function (TRL's signature) -> one in this process, named after it."""
    from pipelines.stages.label import load_rewards
    from rewards.plugins import RewardFn

    if isinstance(reward, str):
        return load_rewards(replace(cfg, rewards=[reward], weights=[]))[0][0]
    if callable(reward):
        name = getattr(reward, "__name__", type(reward).__name__)
        return RewardFn(name, f"<function {name}>", reward)
    raise UsageError(f"prefsmith.score: reward {reward!r} is neither a spec (str) nor a function")


def score(rows: Any, reward: str | Callable | Sequence[str | Callable], weight: Any = None, *,
          workers: int | None = None, batch_size: int = 64, device: str | None = None,
          null_on_timeout: bool = False) -> Any:
    """`rows` (dicts with `prompt`, `completion` and the rewards' gold columns; or a `datasets.Dataset`) scored
    by `reward` (specs as `prefsmith label --reward` takes them, or functions with TRL's signature), returned
    with the label stage's `rewards`, `reward` and `reward_info` columns (a Dataset for a Dataset). `weight`:
    `{"format": 0.2}` or `["format=0.2"]`, as `--weight`. Nothing is written."""
    from pipelines.stages.label import LabelStage, label_rows

    if not is_rows(rows):
        raise UsageError("prefsmith.score: rows must be a non-empty list of dicts or a datasets.Dataset")
    data = as_rows(rows)
    given = [reward] if isinstance(reward, str) or callable(reward) else list(reward)
    if not given:
        raise UsageError("prefsmith.score: give at least one reward (e.g. reward=\"math\")")
    cfg = _config([r for r in given if isinstance(r, str)], weight, workers, batch_size, device, null_on_timeout)
    fns: list = []
    try:
        fns += [_reward_fn(r, cfg) for r in given]
        stage = LabelStage(replace(cfg, rewards=[f.spec for f in fns]), fns=fns)
        for column in (*stage.required(), *stage.present()):
            missing = next((i for i, row in enumerate(data) if column not in row), None)
            if missing is not None:
                raise UserError(f"prefsmith.score: row {missing} has no {column!r} column"
                                + ("" if column in ("prompt", "completion") else " (a reward's gold column)"))
        out = label_rows(data, fns, stage.names, stage.weights, batch_size)
    finally:
        for f in fns:
            f.close()
    if type(rows).__module__.split(".")[0] == "datasets":
        import datasets

        return datasets.Dataset.from_list(out)
    return out
