"""`prefsmith train iterative-dpo | rft` on the tiny model: two rounds, SIGKILLed during round 1 and rerun,
end with the weights and rows of an uninterrupted run; the round layout and round.json; whom each round trains
from and against; cross-round dedup; a changed config is refused."""
from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pipelines.core import dataset as ds
from trainers.core.checkpoint import list_checkpoints
from trainers.core.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
# about a third of the tiny random model's 8-token samples contain "in": most prompts get mixed outcomes
REWARD = "format:.*in.*"
# DPO rounds have few pairs: more epochs, so the kill lands between round 1's first checkpoint and its end
DPO_TRAIN = ("--epochs", "5", "--save-every", "2")
STAGES = {"iterative-dpo": ("prompts", "rollouts", "labeled", "deduped", "pairs", "eval/heldout"),
          "rft": ("prompts", "rollouts", "labeled", "deduped", "selected", "sft", "eval/heldout")}


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("prompts")
    rng = random.Random(0)
    with open(d / "train.jsonl", "w") as f:
        for _ in range(16):
            a, b = rng.randint(0, 50), rng.randint(0, 50)
            f.write(json.dumps({"prompt": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n")
    with open(d / "heldout.jsonl", "w") as f:
        for i in range(4):
            f.write(json.dumps({"id": f"h{i}", "prompt": f"Add {i} and {2 * i}.", "answer": str(3 * i)}) + "\n")
    return d / "train.jsonl", d / "heldout.jsonl"


def _args(recipe: str, model: Path, prompts: tuple[Path, Path], out: Path, cache: Path, *extra: str) -> list[str]:
    return [recipe, "--model", str(model), "--prompts", str(prompts[0]), "--eval-prompts", str(prompts[1]),
            "--reward", REWARD, "--rounds", "2", "--output", str(out), "--n", "4", "--prompts-per-round", "6",
            "--max-new-tokens", "8", "--lr", "1e-3", "--batch-size", "2", "--save-every", "1", "--no-progress",
            "--no-plots", "--ref-cache-dir", str(cache), *extra]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "trainers.cli", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _kill_in_round_1_training(args: list[str], out: Path) -> None:
    """Start the run and SIGKILL it once round 1's training has written a checkpoint."""
    proc = subprocess.Popen([sys.executable, "-m", "trainers.cli", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    train = out / "round-001" / "train"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and not list_checkpoints(train):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (out / "round-000" / "round.json").exists()
    assert not (out / "round-001" / "train" / "train_result.json").exists(), "round 1 trained before the kill"


def _weights(model_dir: Path) -> dict:
    return load_file(model_dir / "model.safetensors")


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert (wa[name] - wb[name]).abs().max().item() <= 1e-6, name


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def _killed_and_resumed_equals_uninterrupted(recipe: str, tiny_model: Path, prompt_files, tmp_path: Path,
                                             *extra: str) -> tuple[Path, subprocess.CompletedProcess]:
    """The uninterrupted run, moved aside; then the same command in the same directory, killed in round 1's
    training and rerun. Same paths, so the rows (which name the policy's path) can be compared byte for byte.
    Returns the resumed run's directory and the uninterrupted run's output."""
    out, full, cache = tmp_path / "run", tmp_path / "full", tmp_path / "cache"
    args = _args(recipe, tiny_model, prompt_files, out, cache, *extra)
    first = _run(args)
    out.rename(full)
    _kill_in_round_1_training(args, out)
    resumed = _run(args)
    assert "round 0: already done" in resumed.stderr
    assert "already complete" in resumed.stderr  # round 1's finished stages were not run again
    assert "resuming from" in resumed.stderr  # its training continued from the checkpoint
    for r in (0, 1):
        _assert_same_weights(full / f"round-00{r}" / "train" / "model", out / f"round-00{r}" / "train" / "model")
        a, b = (json.loads((d / f"round-00{r}" / "round.json").read_text()) for d in (full, out))
        fingerprints = [{k: v["fingerprint"] for k, v in rec["data"].items()} for rec in (a, b)]
        assert fingerprints[0] == fingerprints[1], r
    ra, rb = _rows(full), _rows(out)
    assert [{k: v for k, v in r.items() if k != "train_loss"} for r in ra] == \
           [{k: v for k, v in r.items() if k != "train_loss"} for r in rb]
    assert [r["train_loss"] for r in ra] == pytest.approx([r["train_loss"] for r in rb], abs=1e-6)
    assert resumed.stdout.splitlines()[-3:] == first.stdout.splitlines()[-3:]  # the rounds table
    return out, first


def _check_layout(recipe: str, out: Path, model: Path) -> list[dict]:
    records = [json.loads((out / f"round-00{r}" / "round.json").read_text()) for r in (0, 1)]
    for r, rec in enumerate(records):
        rdir = out / f"round-00{r}"
        for stage in STAGES[recipe]:
            assert ds.read_manifest(rdir / stage)["complete"], (r, stage)
            assert rec["data"][stage]["fingerprint"] == ds.fingerprint(rdir / stage)
            assert rec["data"][stage]["rows"] == ds.read_manifest(rdir / stage)["rows_out"]
        assert (rdir / "train" / "model" / "model.safetensors").exists()
        assert not (rdir / "train" / "checkpoints").exists()  # dropped once the round is done
        assert rec["model"] == str(rdir / "train" / "model") and rec["trained"]
        figures = rec["figures"]
        assert figures["rollouts"] == 6 * 4 and figures["prompts"] == 6
        labeled = ds.load_table(rdir / "labeled").column("reward").to_pylist()
        assert figures["mean_reward"] == pytest.approx(sum(labeled) / len(labeled))
        assert 0.0 <= figures["accuracy"] <= 1.0
        evals = ds.load_rows(rdir / "eval" / "heldout")
        assert len(evals) == 4 and figures["accuracy"] == pytest.approx(
            sum(e["rewards"]["format"] >= 1 for e in evals) / 4)
    # round 0 samples with --model, round 1 with round 0's model; new prompts each round
    assert records[0]["sampled_with"] == str(model)
    assert records[1]["sampled_with"] == str(out / "round-000" / "train" / "model")
    assert (out / "model").resolve() == (out / "round-001" / "train" / "model").resolve()  # the run's final model
    ids = [set(ds.load_table(out / f"round-00{r}" / "prompts").column("id").to_pylist()) for r in (0, 1)]
    assert len(ids[0]) == len(ids[1]) == 6 and not ids[0] & ids[1]
    assert {r["round"] for r in _rows(out)} == {0, 1}
    assert (out / "rounds.png").stat().st_size > 0
    assert json.loads((out / "eval-initial" / "heldout" / "eval.json").read_text())["overall"]["accuracy"] is not None
    return records


def test_iterative_dpo_killed_in_round_1_resumes_to_the_uninterrupted_run(tiny_model, prompt_files, tmp_path,
                                                                           capsys):
    run, first = _killed_and_resumed_equals_uninterrupted("iterative-dpo", tiny_model, prompt_files, tmp_path,
                                                           *DPO_TRAIN)
    records = _check_layout("iterative-dpo", run, tiny_model)
    for rec in records:
        assert rec["reference"] == str(tiny_model)  # --ref initial: RLHFlow's fixed reference
        assert rec["figures"]["pairs"] == ds.read_manifest(run / f"round-00{rec['round']}" / "pairs")["rows_out"] > 0
    assert records[1]["trained_from"] == str(run / "round-000" / "train" / "model")
    saved = json.loads((run / "round-001" / "train" / "prefsmith_train.json").read_text())
    assert saved["ref_model"] == str(tiny_model) and saved["algorithm"] == "dpo"
    # round 1's policy starts where round 0 ended, so against the initial reference its first loss is not ln 2
    first_loss = next(r for r in read_metrics(run / "round-001" / "train") if r.get("split") == "train")["loss"]
    assert abs(first_loss - math.log(2)) > 1e-3
    assert "held-out acc" in first.stdout

    # the same directory with another setting is refused, naming it
    from trainers.cli import main

    args = _args("iterative-dpo", tiny_model, prompt_files, run, tmp_path / "cache", *DPO_TRAIN)
    args[args.index("--n") + 1] = "5"
    assert main(args) == 2
    assert "n: 4 -> 5" in capsys.readouterr().err


def test_rft_killed_in_round_1_resumes_to_the_uninterrupted_run(tiny_model, prompt_files, tmp_path):
    run, _ = _killed_and_resumed_equals_uninterrupted("rft", tiny_model, prompt_files, tmp_path)
    records = _check_layout("rft", run, tiny_model)
    for rec in records:
        assert rec["reference"] is None and rec["trained_from"] == str(tiny_model)  # --from initial
    selected = [ds.read_manifest(run / f"round-00{r}" / "selected")["rows_out"] for r in (0, 1)]
    assert selected[0] > 0
    sft = ds.load_rows(run / "round-001" / "sft")
    assert len(sft) == sum(selected) == records[1]["figures"]["sft_rows"]  # accumulated over the rounds
    assert [r["id"] for r in sft] == [r["id"] for r in ds.load_rows(run / "round-000" / "selected")] + \
           [r["id"] for r in ds.load_rows(run / "round-001" / "selected")]
    assert all(r["reward"] >= 1.0 for r in sft)
    saved = json.loads((run / "round-001" / "train" / "prefsmith_train.json").read_text())
    assert saved["algorithm"] == "sft" and saved["model"] == str(tiny_model)


def test_ref_previous_uses_round_0_model_as_round_1_reference(tiny_model, prompt_files, tmp_path):
    from trainers.cli import main

    out = tmp_path / "run"
    evalset = tmp_path / "contaminated.jsonl"  # half the training prompts, as an eval set to keep out of training
    evalset.write_text("".join(line + "\n" for line in prompt_files[0].read_text().splitlines()[:8]))
    assert main(_args("iterative-dpo", tiny_model, prompt_files, out, tmp_path / "cache", "--ref", "previous",
                      "--decontaminate-against", str(evalset))) == 0
    leaked = set(ds.load_table(evalset).column("prompt").to_pylist())
    for r in (0, 1):
        rdir = out / f"round-00{r}"
        figures = json.loads((rdir / "round.json").read_text())["figures"]
        n = sum(p in leaked for p in ds.load_table(rdir / "prompts").column("prompt").to_pylist())
        assert figures["contaminated"] == 4 * n and figures["kept"] == 24 - 4 * n  # kept: after all cleaning
        # pairs train in the sampled context: the tiny model's chat template, the question as the user turn
        pairs = ds.load_table(rdir / "pairs").column("prompt").to_pylist()
        assert all(p[-1]["role"] == "user" for p in pairs) and not leaked & {p[-1]["content"] for p in pairs}
    rec = json.loads((out / "round-001" / "round.json").read_text())
    assert rec["reference"] == rec["trained_from"] == str(out / "round-000" / "train" / "model")
    saved = json.loads((out / "round-001" / "train" / "prefsmith_train.json").read_text())
    assert saved["model"] == str(out / "round-000" / "train" / "model") and saved["ref_model"] is None
    # the reference is the policy round 1 starts from: its first DPO loss is -log σ(0) = ln 2
    first = next(r for r in read_metrics(out / "round-001" / "train") if r.get("split") == "train")
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_rft_dedups_against_earlier_rounds(tiny_model, prompt_files, tmp_path, capsys):
    """Greedy sampling and lr 0: round 1's policy is round 0's, so it samples exactly round 0's completions,
    which the cross-round index removes; round 1 then has nothing new and trains on round 0's set again."""
    from trainers.cli import main

    out = tmp_path / "run"
    args = _args("rft", tiny_model, prompt_files, out, tmp_path / "cache", "--temperature", "0", "--n", "1")
    args[args.index("--lr") + 1] = "0"
    args[args.index("--prompts-per-round") + 1] = "16"  # every prompt, every round
    assert main(args) == 0
    r0, r1 = (json.loads((out / f"round-00{r}" / "round.json").read_text()) for r in (0, 1))
    assert r0["figures"]["kept"] == 16 and r0["figures"]["removed_by_earlier_rounds"] == 0
    assert r1["figures"]["removed_by_earlier_rounds"] == 16 and r1["figures"]["kept"] == 0
    assert r1["figures"]["selected"] == 0
    assert r1["data"]["sft"]["fingerprint"] == r0["data"]["sft"]["fingerprint"]
    removed = ds.load_rows(out / "round-001" / "deduped" / "removed")
    round_0 = ds.load_table(out / "round-000" / "rollouts").column("id").to_pylist()
    assert {r["duplicate_of"] for r in removed} == set(round_0)

    # --rounds may grow: a rerun with more rounds keeps the finished ones and runs the new one
    capsys.readouterr()
    args[args.index("--rounds") + 1] = "3"
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "round 0: already done" in err and "round 1: already done" in err and "round 2: generate" in err
    assert [r["round"] for r in _rows(out)] == [0, 1, 2]


def test_dedup_field_joins_prompt_and_completion(tmp_path):
    """`--field prompt+completion`: the same completion of another prompt is no duplicate."""
    from pipelines.hygiene.dedup import DedupConfig, dedup

    text = "the answer is forty two because six times seven makes it"
    rows = [{"id": "a", "prompt": "p one two three", "completion": text},
            {"id": "b", "prompt": "q four five six", "completion": text},
            {"id": "c", "prompt": "p one two three", "completion": text}]
    src = ds.write_dataset(rows, tmp_path / "in")
    r = dedup(str(src), str(tmp_path / "joined"), DedupConfig(field="prompt+completion"), progress=False)
    assert [x["id"] for x in ds.load_rows(tmp_path / "joined")] == ["a", "b"]
    r = dedup(str(src), str(tmp_path / "completion"), DedupConfig(field="completion"), progress=False)
    assert r.rows_out == 1
