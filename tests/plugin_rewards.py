"""Small user reward functions for the label-stage tests, named as `plugin_rewards:NAME` on the command line."""
from __future__ import annotations

import asyncio
import os

from rewards.result import RewardResult


def length_reward(prompts, completions, **columns):
    """Completion length in characters (a float per row)."""
    return [float(len(c)) for c in completions]


async def async_length_reward(prompts, completions, **columns):
    """Same as length_reward, computed concurrently the way an API-backed reward would be."""

    async def one(c):
        await asyncio.sleep(0)
        return float(len(c))

    return list(await asyncio.gather(*(one(c) for c in completions)))


def answer_in_completion(prompts, completions, answer, **columns):
    """1.0 if the gold answer's text appears in the completion; None (with a reason) when there is no gold."""
    return [RewardResult(None, "no_gold") if a is None else RewardResult(float(str(a) in c), "found" if str(a) in c else "missing")
            for c, a in zip(completions, answer)]


def fails_on_bad(prompts, completions, id, **columns):
    """Raises ValueError for any batch that holds a row whose id contains the env var FAIL_MARK (default 'bad')."""
    mark = os.environ.get("FAIL_MARK", "bad")
    if mark and any(mark in str(i) for i in id):
        raise ValueError(f"cannot score row {next(i for i in id if mark in str(i))}")
    return [1.0] * len(completions)


def wrong_length(prompts, completions, **columns):
    return [1.0] * (len(completions) + 1)


def ids_length(prompts, completions, completion_ids, **columns):
    return [None if ids is None else float(len(ids)) for ids in completion_ids]


def worker_pid(prompts, completions, **columns):
    """The id of the process that scored each row (to see where a function ran)."""
    return [float(os.getpid())] * len(completions)


def slow_reward(prompts, completions, **columns):
    """1.0 per row after sleeping SLOW_S seconds per batch; records the scoring process's pid in PID_DIR (for
    tests that kill the process scoring a shard)."""
    import time

    if os.environ.get("PID_DIR"):
        with open(os.path.join(os.environ["PID_DIR"], f"{os.getpid()}.pid"), "w") as f:
            f.write(str(os.getpid()))
    time.sleep(float(os.environ.get("SLOW_S", "0.2")))
    return [1.0] * len(completions)


def first_char_reward(prompts, completions, id, **columns):
    """For online-RL tests: varies within a group (1.0 when the completion starts with a letter from a-m);
    rows of prompts whose id ends in '0' all get 1.0 (zero variance); rows whose id ends in '-3' are null."""
    out = []
    for c, i in zip(completions, id):
        if str(i).endswith("-3"):
            out.append(None)
        elif str(i).split("-")[0].endswith("0"):
            out.append(1.0)
        else:
            out.append(1.0 if c[:1].lower() in "abcdefghijklm" else 0.0)
    return out


def parity_reward(prompts, completions, **columns):
    """1.0 when the completion has an even number of characters: about half of any model's samples, so groups
    vary and selections and pairs exist (recipe tests)."""
    return [float(len(c) % 2 == 0) for c in completions]
