"""Rewards and training on multi-turn trajectories (issue 28, parts 3–5): the label stage's fault rules and the
trajectory rewards, the builders and offline trainers on policy tokens only, `stats` on tool use, and online RL
with `--env` (env tokens never trained, killed and resumed to the uninterrupted result).

The offline parts read real Parquet files of trajectory rows written here with the tiny model's tokenizer, laid
out as pipelines/envs/base.py says: the prompt's ids, then each policy turn's ids (mask 1) and each observation's
ids appended once (mask 0)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import main as cli
from pipelines.core import dataset as ds

ROOT = Path(__file__).resolve().parents[1]
TOOL_PROMPT = [{"role": "system", "content": "Use python."}, {"role": "user", "content": "What is 2 + 3?"}]


def trajectory(tok, prompt: list[dict], turns: list[str], observations: list[str], **extra) -> dict:
    """One trajectory row: `turns` are the policy's turns, `observations[k]` the tool output after turn k (one
    fewer than the turns when the trajectory ends on an answer). Ids as a rollout appends them: each policy
    turn's own tokens and end-of-turn token, each observation's rendered tool message and the next assistant
    header, never the whole conversation re-tokenized."""
    from rewards.chat import chat_ids

    prompt_ids = chat_ids(tok, prompt, add_generation_prompt=True)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ids, mask, messages = [], [], [dict(m) for m in prompt]
    for k, turn in enumerate(turns):
        piece = tok(turn, add_special_tokens=False)["input_ids"] + [end]
        ids += piece
        mask += [1] * len(piece)
        messages.append({"role": "assistant", "content": turn})
        if k < len(observations):
            obs = tok(f"\n<|im_start|>tool\n{observations[k]}<|im_end|>\n<|im_start|>assistant\n",
                      add_special_tokens=False)["input_ids"]
            ids += obs
            mask += [0] * len(obs)
            messages.append({"role": "tool", "content": observations[k]})
    row = {"prompt": prompt[-1]["content"], "sampled_prompt": prompt, "prompt_token_ids": prompt_ids,
           "messages": messages, "completion": turns[-1], "completion_ids": ids, "completion_mask": mask,
           "logprobs": [-1.0 if m else 0.0 for m in mask], "turns": len(turns),
           "tool_calls": len(observations), "tool_errors": 0, "finish_reason": "stop", "env_fault": None,
           "turn_reward": None, "round_trip": None, "answer": "5"}
    return {**row, **extra}


def trajectory_rows(tok) -> list[dict]:
    """Four samples of one prompt and two of another: an answer after a tool call, an answer with no tool, a
    tool error then a wrong answer, a run out of turns, a malformed tool call, an environment failure."""
    code = "```python\nprint(2 + 3)\n```"
    rows = [
        trajectory(tok, TOOL_PROMPT, [code, "The answer is \\boxed{5}."], ["5"], turn_reward=0.5),
        trajectory(tok, TOOL_PROMPT, ["The answer is \\boxed{5}."], [], turn_reward=0.0),
        trajectory(tok, TOOL_PROMPT, [code, "The answer is \\boxed{6}."], ["Traceback: NameError"], tool_errors=1,
                   turn_reward=0.0),
        trajectory(tok, TOOL_PROMPT, [code, code], ["5", "5"], finish_reason="max_turns",
                   env_fault="max_turns: no final answer after 2 turns", turn_reward=1.0),
        trajectory(tok, TOOL_PROMPT, ["```python\nprint(2 + "], [], finish_reason="fault",
                   env_fault="unterminated code block", turn_reward=None),
        trajectory(tok, TOOL_PROMPT, [code], [], finish_reason="env_error",
                   env_fault="env_error: RuntimeError: the sandbox could not start", tool_calls=1),
    ]
    for k, r in enumerate(rows):
        pid = "p0" if k < 4 else "p1"
        r.update(id=f"{pid}-{k}", prompt_id=pid, sample_idx=k if k < 4 else k - 4)
    return rows


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    from tiny_model import build_tiny_model

    return AutoTokenizer.from_pretrained(build_tiny_model(tmp_path_factory.mktemp("tok") / "tiny"))


def labeled(tmp_path, tok, *rewards: str) -> list[dict]:
    src = ds.write_dataset(trajectory_rows(tok), tmp_path / "rollouts", {"stage": "generate"})
    out = tmp_path / "labeled"
    assert cli(["label", "--input", str(src), "--output", str(out), "--no-progress", *rewards]) == 0
    return ds.load_rows(out)


# ------------------------------------------------------------------------------------------------ rewards
def test_label_trajectories_faults_cap_at_zero_and_env_errors_are_null(tmp_path, tok):
    rows = labeled(tmp_path, tok, "--reward", "math", "--reward", "tool_use", "--reward", "turn_reward",
                   "--reward", "format:boxed", "--weight", "tool_use=0.1", "--weight", "format=0.2")
    by = {r["id"]: r for r in rows}
    # the answer after a clean tool call: every reward pays
    r = by["p0-0"]
    assert r["rewards"] == {"math": 1.0, "tool_use": 1.0, "turn_reward": 0.5, "format": 1.0}
    assert r["reward"] == pytest.approx(1.0 + 0.1 + 0.5 + 0.2)
    # a correct answer with no tool call: tool_use 0 with its reason
    assert by["p0-1"]["rewards"]["tool_use"] == 0.0 and by["p0-1"]["reward_info"]["tool_use"] == "no_tool_call"
    assert by["p0-2"]["reward_info"]["tool_use"] == "tool_errors: 1" and by["p0-2"]["rewards"]["math"] == 0.0
    # out of turns: every reward at 0 with the fault's reason (the word "turn"), the env's turn reward too
    r = by["p0-3"]
    assert r["rewards"] == {"math": 0.0, "tool_use": 0.0, "turn_reward": 0.0, "format": 0.0}
    assert set(r["reward_info"].values()) == {"max_turns: no final answer after 2 turns"} and r["reward"] == 0.0
    # a malformed tool call: 0 with the fault; its missing turn reward is data missing, still null
    r = by["p1-4"]
    assert r["rewards"]["math"] == 0.0 and r["reward_info"]["math"] == "unterminated code block"
    assert r["rewards"]["turn_reward"] is None and r["reward_info"]["turn_reward"] == "no_turn_reward"
    assert r["reward"] is None
    # the environment failed: null everywhere with its reason, no reward called
    r = by["p1-5"]
    assert r["rewards"] == dict.fromkeys(r["rewards"]) and r["reward"] is None
    assert set(r["reward_info"].values()) == {"env_error: RuntimeError: the sandbox could not start"}


def test_fault_keeps_a_penalty_and_a_bad_gold(tmp_path, tok):
    """A score below 0 (a penalty) survives a fault, so faulting never escapes it; a null (bad gold) stays null."""
    from pipelines.stages.label import trajectory_outcome

    row = {"finish_reason": "fault", "env_fault": "unknown tool 'search'"}
    scores, info = trajectory_outcome(row, {"math": None, "overlong": -0.5, "format": 1.0},
                                      {"math": "bad_gold", "overlong": "overlong", "format": "ok"})
    assert scores == {"math": None, "overlong": -0.5, "format": 0.0}
    assert info == {"math": "bad_gold", "overlong": "overlong", "format": "unknown tool 'search'"}
    assert trajectory_outcome({"finish_reason": "length"}, {"m": 1.0}, {"m": "ok"}) == ({"m": 1.0}, {"m": "ok"})


def test_trajectory_rewards_need_their_columns(tmp_path):
    src = ds.write_dataset([{"prompt": "p", "completion": "c"}], tmp_path / "plain", {"stage": "generate"})
    assert cli(["label", "--input", str(src), "--output", str(tmp_path / "o"), "--no-progress",
                "--reward", "tool_use"]) == 2


# ------------------------------------------------------------------------------------------------ offline sets
@pytest.fixture(scope="module")
def built(tmp_path_factory, tok):
    """Labeled trajectory rollouts (math + tool_use) and the three sets built from them, through the CLI."""
    d = tmp_path_factory.mktemp("built")
    src = ds.write_dataset(trajectory_rows(tok), d / "rollouts", {"stage": "generate"})
    assert cli(["label", "--input", str(src), "--output", str(d / "labeled"), "--no-progress", "--reward", "math",
                "--reward", "tool_use", "--weight", "tool_use=0.1"]) == 0
    assert cli(["select", "--input", str(d / "labeled"), "--output", str(d / "select"), "--keep", "all-correct"]) == 0
    assert cli(["pairs", "--input", str(d / "labeled"), "--output", str(d / "pairs")]) == 0
    assert cli(["kto", "--input", str(d / "labeled"), "--output", str(d / "kto")]) == 0
    return d, {r["id"]: r for r in trajectory_rows(tok)}


def test_builders_carry_the_turns_ids_and_mask(built):
    d, src = built
    picked = ds.load_rows(d / "select")
    # p0-0 (1.1) and p0-1 (1.0) are correct; the tool error and the out-of-turns run are not; p1 has none
    assert sorted(r["id"] for r in picked) == ["p0-0", "p0-1"]
    for r in picked:
        assert r["prompt"] == TOOL_PROMPT
        assert r["completion"] == src[r["id"]]["messages"][len(TOOL_PROMPT):]  # assistant turns and tool outputs
        assert r["completion_ids"] == src[r["id"]]["completion_ids"]
        assert r["completion_mask"] == src[r["id"]]["completion_mask"]
    assert [m["role"] for m in picked[0]["completion"]] == ["assistant", "tool", "assistant"]
    (pair,) = ds.load_rows(d / "pairs")  # best-worst: p0-0 (1.1) over the tool error (0; tied, the earlier)
    assert (pair["chosen_id"], pair["rejected_id"]) == ("p0-0", "p0-2")
    for side, sid in (("chosen", "p0-0"), ("rejected", "p0-2")):
        assert pair[side] == src[sid]["messages"][len(TOOL_PROMPT):]
        assert pair[f"{side}_ids"] == src[sid]["completion_ids"] and pair[f"{side}_mask"] == src[sid]["completion_mask"]
    kto = {r["id"]: r for r in ds.load_rows(d / "kto")}
    assert set(kto) == {"p0-0", "p0-1", "p0-2", "p0-3", "p1-4"}  # the environment failure is skipped (null)
    assert kto["p0-3"]["label"] is False and kto["p0-3"]["completion_mask"] == src["p0-3"]["completion_mask"]
    skipped = ds.load_rows(d / "kto" / "skipped")
    assert [s["reason"] for s in skipped] == ["math: env_error: RuntimeError: the sandbox could not start; "
                                              "tool_use: env_error: RuntimeError: the sandbox could not start"]


def test_trainers_encode_policy_tokens_only(built, tok):
    """Each set's examples are the sampled context's ids then the trajectory's ids as sampled, the loss mask 0 on
    the prompt and equal to completion_mask after it: tool outputs never trained, nothing re-tokenized."""
    from trainers.offline.algorithms import make_algorithm
    from trainers.offline.config import TrainConfig

    d, src = built
    prompt = src["p0-0"]["prompt_token_ids"]

    def check(feat, sid):
        assert feat["input_ids"] == prompt + src[sid]["completion_ids"]
        assert feat["loss_mask"] == [0] * len(prompt) + src[sid]["completion_mask"]

    for algo, data in (("sft", "select"), ("dpo", "pairs"), ("kto", "kto")):
        cfg = TrainConfig(algorithm=algo, model="m", data=str(d / data), output="o")
        rows = ds.load_rows(d / data)
        examples = make_algorithm(cfg).encode(rows, tok, cfg, data)
        for row, ex in zip(rows, examples):
            assert not ex["context_differs"]
            if algo == "dpo":
                check(ex["chosen"], row["chosen_id"])
                check(ex["rejected"], row["rejected_id"])
            else:
                check(ex["seq" if algo == "sft" else "completion"], row["id"])
        if algo == "sft":  # the loss counts the policy's tokens (the first token has no context: [1:])
            assert [ex["units"] for ex in examples] == [sum(src[r["id"]]["completion_mask"]) for r in rows]


def test_train_sft_dpo_kto_on_trajectory_sets(built, tiny_model, tmp_path):
    """The sets train end to end; SFT's logged loss is the mean NLL over the policy tokens alone, recomputed here
    from the model's logits."""
    import torch
    from transformers import AutoModelForCausalLM

    d, src = built
    for algo, data in (("sft", "select"), ("dpo", "pairs"), ("kto", "kto")):
        out = tmp_path / algo
        assert cli(["train", algo, "--model", str(tiny_model), "--data", str(d / data), "--output", str(out),
                    "--max-steps", "1", "--batch-size", "8", "--no-plots", "--no-progress", "--threads", "1",
                    "--ref-cache-dir", str(tmp_path / "cache")]) == 0
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
        assert recs and all(r["loss"] == r["loss"] for r in recs)  # finite
        if algo == "sft":
            sft = recs[0]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    nll, n = 0.0, 0
    for sid in ("p0-0", "p0-1"):
        r = src[sid]
        ids = torch.tensor([r["prompt_token_ids"] + r["completion_ids"]])
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].log_softmax(-1)
        start = len(r["prompt_token_ids"])
        for k, (t, m) in enumerate(zip(r["completion_ids"], r["completion_mask"])):
            if m:
                nll -= float(logp[start + k - 1, t])
                n += 1
    assert sft["loss"] == pytest.approx(nll / n, rel=1e-4)
    assert sft["completion_tokens"] == pytest.approx(n / 2)


def test_stats_reports_tool_use_and_its_effect_on_reward(built, capsys):
    from pipelines.reports.stats import compute_stats

    d, _ = built
    stats = compute_stats(ds.load_table(d / "labeled"))
    t = stats["trajectories"]
    assert t["turns"]["values"] == {"1": 3, "2": 3}
    assert t["tool_calls"]["values"] == {"0": 2, "1": 3, "2": 1}
    assert t["rows_with_tool_errors"] == pytest.approx(1 / 6)
    assert t["env_faults"] == {"max_turns: no final answer after 2 turns": 1, "unterminated code block": 1,
                               "env_error: RuntimeError: the sandbox could not start": 1}
    # rewards 1.1 (1 call), 1.0 (0 calls), 0 (1 call, tool error), 0 (2 calls, max_turns), 0 (fault), null (env)
    assert t["reward_by_tool_calls"]["0"] == {"rows": 2, "scored": 2, "mean_reward": pytest.approx(0.5)}
    assert t["reward_by_tool_calls"]["1"] == {"rows": 3, "scored": 2, "mean_reward": pytest.approx(0.55)}
    assert t["reward_by_tool_errors"]["with"] == {"rows": 1, "scored": 1, "mean_reward": 0.0}
    assert stats["policy_tokens"]["count"] == 6
    assert cli(["stats", str(d / "labeled"), "--no-plot"]) == 0
    assert "reward_by_tool_calls" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ online RL
ENV_SOURCE = '''
class EchoEnv:
    """Two policy turns: the first gets a tool observation quoting it (a tool call, turn reward 0.25), the
    second is the answer. Deterministic, so a resumed run replays it exactly."""

    name = "echo"
    stop = ()
    tools = None

    def reset(self, row):
        from pipelines.envs.base import prompt_messages

        return prompt_messages(row), 0

    def step(self, turn, state):
        if state == 0:
            return [{"role": "user", "content": f"tool says {len(turn)} chars: {turn[:4]!r}"}], 1, {
                "tool_calls": 1, "tool_errors": 0, "reward": 0.25}
        return None, state, {}
'''


def grpo_env_args(model, prompts, out, env_file, *extra):
    return ["train", "grpo", "--model", str(model), "--prompts", str(prompts), "--output", str(out),
            "--reward", "plugin_rewards:length_reward", "--reward", "turn_reward", "--weight", "length_reward=0.1",
            "--weight", "turn_reward=0.5",
            "--env", f"{env_file}:EchoEnv", "--max-turns", "3", "--num-generations", "4", "--prompts-per-step", "2",
            "--max-new-tokens", "6", "--lr", "1e-3", "--seed", "3", "--threads", "1", "--no-dynamic-sampling",
            *extra]


@pytest.fixture()
def env_file(tmp_path):
    path = tmp_path / "echo_env.py"
    path.write_text(ENV_SOURCE)
    return path


def test_grpo_env_step_trains_policy_tokens_only(tmp_path, tiny_model, prompts, env_file):
    """One GRPO step on trajectories through the run's own update: its gradient norm is the one of the loss over
    the policy's tokens alone, recomputed here from the starting model (and differs from the loss that would also
    train the observations' tokens)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.cli import main as run_cli

    out = tmp_path / "run"
    assert run_cli(grpo_env_args(tiny_model, prompts, out, env_file, "--max-steps", "1", "--save-every", "0",
                                 "--max-grad-norm", "0")) == 0
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    rows = ds.load_rows(out / "rollouts")
    assert {r["turns"] for r in rows} == {2} and {r["tool_calls"] for r in rows} == {1}
    assert rec["turns"] == 2.0 and rec["tool_calls"] == 1.0
    for r in rows:
        assert r["completion_mask"].count(0) > 0 and len(r["completion_mask"]) == len(r["completion_ids"])
        assert r["messages"][2]["content"].startswith("tool says")
        # the final turn's length (0.1 per character) + 0.5 x the environment's 0.25
        assert r["rewards"] == {"length_reward": len(r["completion"]), "turn_reward": 0.25}
        assert r["reward"] == pytest.approx(0.1 * len(r["completion"]) + 0.125)
    trained = rows
    assert all(r["advantage"] is not None for r in rows) and any(r["advantage"] != 0 for r in rows)

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)

    def grad_norm(include_env: bool) -> float:
        model.zero_grad()
        n = sum(len(r["completion_ids"]) if include_env else sum(r["completion_mask"]) for r in trained)
        loss = 0.0
        for r in trained:  # dapo, first pass (ratio 1): -A · Σ log π over the trained tokens / the step's tokens
            ids = torch.tensor([r["prompt_token_ids"] + r["completion_ids"]])
            logp = model(ids).logits[0, :-1].log_softmax(-1)
            start = len(r["prompt_token_ids"])
            for k, (t, m) in enumerate(zip(r["completion_ids"], r["completion_mask"])):
                if m or include_env:
                    loss = loss - r["advantage"] * logp[start + k - 1, t] / n
        loss.backward()
        return float(torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None)))

    assert rec["grad_norm"] == pytest.approx(grad_norm(False), rel=1e-4)
    assert abs(rec["grad_norm"] - grad_norm(True)) > 1e-3 * rec["grad_norm"]


def test_grpo_env_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path, tiny_model, prompts, env_file):
    from kill_resume import assert_same_weights, kill_at_checkpoint_then_resume

    extra = ("--max-steps", "4", "--save-every", "2")
    clean = tmp_path / "clean"
    assert cli(grpo_env_args(tiny_model, prompts, clean, env_file, *extra)) == 0
    out = tmp_path / "killed"
    kill_at_checkpoint_then_resume(grpo_env_args(tiny_model, prompts, out, env_file, *extra), out, step=2)
    assert_same_weights(clean / "model", out / "model")
    key = lambda r: (r["id"], r["step"], r["completion_ids"], r["completion_mask"])  # noqa: E731
    assert [key(r) for r in ds.load_rows(out / "rollouts")] == [key(r) for r in ds.load_rows(clean / "rollouts")]
    # the environment is part of the run: another --max-turns, or an edited environment file, is refused
    assert cli([*grpo_env_args(tiny_model, prompts, out, env_file, *extra), "--resume", "--max-turns", "2"]) == 2
    env_file.write_text(ENV_SOURCE.replace("0.25", "0.5"))
    assert cli([*grpo_env_args(tiny_model, prompts, out, env_file, *extra), "--resume"]) == 2


def test_grpo_env_options_are_checked_before_any_work(tmp_path, tiny_model, prompts, env_file, capsys):
    base = ["train", "grpo", "--model", str(tiny_model), "--prompts", str(prompts), "--output", str(tmp_path / "o"),
            "--reward", "plugin_rewards:first_char_reward"]
    assert cli([*base, "--reward", "tool_use"]) == 2
    assert "give --env" in capsys.readouterr().err
    assert cli([*base, "--env", f"{env_file}:EchoEnv", "--max-staleness", "1"]) == 2
    assert "synchronous loop" in capsys.readouterr().err
    assert cli([*base, "--env", f"{env_file}:EchoEnv", "--env-option", "volume=3"]) == 2
    assert "volume" in capsys.readouterr().err
    assert cli([*base, "--env", f"{tmp_path / 'missing.py'}:EchoEnv"]) == 2
    assert "not found" in capsys.readouterr().err
    from trainers.online.grpo import GRPOConfig

    plain = GRPOConfig(model="m", prompts="p", output="o", rewards=["math"])
    assert not {"env", "max_turns", "env_options", "env_source"} & set(plain.identity())


def test_remax_baseline_is_a_greedy_trajectory_and_ppo_trains_on_trajectories(tmp_path, tiny_model, prompts,
                                                                               env_file):
    """ReMax's baseline is one greedy trajectory per prompt (never trained); PPO's value model and GAE run over
    the policy's tokens (its loss mask is completion_mask: environment tokens get no reward, value or loss)."""
    remax = tmp_path / "remax"
    assert cli(grpo_env_args(tiny_model, prompts, remax, env_file, "--max-steps", "1", "--save-every", "0",
                             "--advantage", "remax")) == 0
    rows = ds.load_rows(remax / "rollouts")
    greedy = [r for r in rows if r["remax_baseline"]]
    assert len(greedy) == 2 and all(r["turns"] == 2 and r["sample_idx"] == -1 for r in greedy)
    assert all(r["advantage"] is None for r in greedy)
    for r in (r for r in rows if not r["remax_baseline"]):  # A = r − the prompt's greedy trajectory's reward
        (base,) = [g for g in greedy if g["prompt_id"] == r["prompt_id"]]
        assert r["advantage"] == pytest.approx(r["reward"] - base["reward"], abs=1e-5)
    ppo = tmp_path / "ppo"
    args = grpo_env_args(tiny_model, prompts, ppo, env_file, "--max-steps", "1", "--save-every", "0",
                         "--num-generations", "1", "--prompts-per-step", "4")
    args[1] = "ppo"
    args.remove("--no-dynamic-sampling")
    assert cli(args) == 0
    rec = json.loads((ppo / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["turns"] == 2.0 and rec["value_loss"] > 0 and rec["grad_norm"] > 0


def test_gae_over_a_trajectory_skips_environment_tokens():
    """PPO's rule: GAE runs over the policy's tokens as if the environment's were not there (γ and λ discount
    policy tokens only); environment positions get no advantage and no return."""
    import torch

    from trainers.online.rl_objectives import gae

    torch.manual_seed(0)
    mask = torch.tensor([[0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0]])  # prompt, turn, observation, turn, padding
    rewards, values = torch.randn(1, 11) * mask, torch.randn(1, 11)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    keep = mask[0].bool()
    a2, r2 = gae(rewards[:, keep], values[:, keep], torch.ones(1, int(keep.sum())), gamma=0.9, lam=0.8)
    assert torch.allclose(adv[:, keep], a2) and torch.allclose(ret[:, keep], r2)
    assert not adv[:, ~keep].any() and not ret[:, ~keep].any()


# ------------------------------------------------------------------------------------------------ the recipe's traces
def test_tir_traces_replay_in_the_python_environment(tok):
    """data/tir/tir_traces.jsonl (the tir recipe's cold start) is what the `python` environment would have made:
    its opening is `reset`'s for the prompt as GRPO poses it, each tool turn's output is what the sandbox prints
    for that block now, the last turn is a final answer with the gold boxed; SFT trains the assistant turns only."""
    from pipelines.envs import load_env
    from rewards.math import BOXED_INSTRUCTION
    from trainers.core.data import encode_messages

    rows = [json.loads(x) for x in (ROOT / "data" / "tir" / "tir_traces.jsonl").read_text().splitlines()]
    assert len(rows) >= 12
    env = load_env("python", {})
    try:
        for row in rows:
            messages, state = env.reset({"prompt": f"{row['prompt']} {BOXED_INSTRUCTION}"})
            assert row["messages"][:len(messages)] == messages
            turns = row["messages"][len(messages):]
            for k in range(0, len(turns), 2):
                observation, state, info = env.step(turns[k]["content"], state)
                if k + 1 < len(turns):
                    assert info["tool_calls"] == 1 and info["tool_errors"] == 0 and observation == [turns[k + 1]]
                else:
                    assert observation is None and f"\\boxed{{{row['answer']}}}" in turns[k]["content"]
            feat = encode_messages(tok, row["messages"])
            trained = tok.decode([t for t, m in zip(feat["input_ids"], feat["loss_mask"]) if m])
            assert "```output" not in trained and "```python" in trained
    finally:
        env.close()


def test_generate_env_rows_build_and_train_offline(tmp_path, tiny_model, prompts, env_file):
    """Rows as `generate --env` writes them (the real rollout driver on the tiny model): label, select and kto
    carry them, and `train sft` and `train kto` train their policy tokens after the ids the engine continued."""
    from transformers import AutoTokenizer

    from trainers.offline.algorithms import make_algorithm
    from trainers.offline.config import TrainConfig

    d = tmp_path
    assert cli(["generate", "--model", str(tiny_model), "--input", str(prompts), "--output", str(d / "rollouts"),
                "--env", f"{env_file}:EchoEnv", "--max-turns", "3", "--n", "2", "--max-new-tokens", "6",
                "--limit", "4", "--threads", "1"]) == 0
    assert cli(["label", "--input", str(d / "rollouts"), "--output", str(d / "labeled"), "--no-progress",
                "--reward", "plugin_rewards:parity_reward", "--reward", "tool_use"]) == 0
    assert cli(["select", "--input", str(d / "labeled"), "--output", str(d / "select"), "--keep", "all-correct",
                "--min-reward", "1.0"]) == 0
    assert cli(["kto", "--input", str(d / "labeled"), "--output", str(d / "kto"), "--threshold", "1.5"]) == 0
    src = {r["id"]: r for r in ds.load_rows(d / "labeled")}
    assert all(r["rewards"]["tool_use"] == 1.0 and r["turns"] == 2 for r in src.values())
    tok = AutoTokenizer.from_pretrained(tiny_model)
    for algo, data in (("sft", "select"), ("kto", "kto")):
        rows = ds.load_rows(d / data)
        assert rows
        cfg = TrainConfig(algorithm=algo, model=str(tiny_model), data=str(d / data), output=str(d / f"t-{algo}"))
        for row, ex in zip(rows, make_algorithm(cfg).encode(rows, tok, cfg, data)):
            s = src[row["id"]]
            feat = ex["seq" if algo == "sft" else "completion"]
            assert feat["input_ids"] == s["prompt_token_ids"] + s["completion_ids"]
            assert feat["loss_mask"] == [0] * len(s["prompt_token_ids"]) + s["completion_mask"]
            assert row["completion"] == s["messages"][len(s["sampled_prompt"]):]
        assert cli(["train", algo, "--model", str(tiny_model), "--data", str(d / data), "--output",
                    str(d / f"t-{algo}"), "--max-steps", "1", "--no-plots", "--no-progress", "--threads", "1",
                    "--ref-cache-dir", str(d / "cache")]) == 0


def test_grpo_with_the_python_environment_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path, tiny_model):
    """`train grpo --env python` for 2 steps on a tiny model taught to write python blocks: the blocks run in the
    real sandbox (tool calls in the rollouts, their output in the conversation, masked out of the loss), and a run
    killed after its first checkpoint resumes to the uninterrupted run's weights and rollouts."""
    from kill_resume import assert_same_weights, kill_at_checkpoint_then_resume
    from tiny_model import build_coding_model

    model = build_coding_model(tiny_model, tmp_path / "coder")
    problems = (ROOT / "data" / "math" / "train.jsonl").read_text().splitlines()[:8]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(problems) + "\n")

    def args(out: Path) -> list[str]:
        return ["train", "grpo", "--model", str(model), "--prompts", str(prompts), "--output", str(out),
                "--reward", "math", "--env", "python", "--max-turns", "2", "--env-option", "timeout_s=5",
                "--num-generations", "4", "--prompts-per-step", "2", "--max-new-tokens", "24", "--temperature", "0.7",
                "--lr", "1e-3", "--seed", "5", "--threads", "1", "--no-dynamic-sampling", "--max-steps", "2",
                "--save-every", "1"]

    clean = tmp_path / "clean"
    assert cli(args(clean)) == 0
    rows = ds.load_rows(clean / "rollouts")
    ran = [r for r in rows if r["tool_calls"]]
    assert ran, "the coding model wrote no python block the environment ran"
    for r in ran:  # the block's output came back as the next turn's observation, never trained
        assert r["turns"] >= 2 and r["messages"][3]["content"].startswith("```output\n")
        assert 0 in r["completion_mask"] and len(r["completion_mask"]) == len(r["completion_ids"])
    assert any(r["messages"][3]["content"] == f"```output\n{r['answer']}\n```" for r in ran)  # it printed the answer

    out = tmp_path / "killed"
    kill_at_checkpoint_then_resume(args(out), out, step=1)
    assert_same_weights(clean / "model", out / "model")
    key = lambda r: (r["id"], r["step"], r["completion_ids"], r["completion_mask"], r["tool_calls"])  # noqa: E731
    assert [key(r) for r in ds.load_rows(out / "rollouts")] == [key(r) for r in rows]
