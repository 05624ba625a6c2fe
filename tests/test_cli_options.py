"""One CLI, one config story (docs/cli.md): options from config dataclasses, help and defaults everywhere,
abbreviations refused, canonical names with their older spellings as aliases, `--config FILE.yaml`,
`prefsmith train --help`, `--prompt-column` / `--gold-column` / `messages`, `--chat-template`; and the
docs/cli.md example run for real on the tiny model."""
from __future__ import annotations

import dataclasses
import importlib
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from pipelines.cli import COMMANDS, command_parser, main as cli
from pipelines.errors import UsageError

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
TRAIN_ALGOS = ("sft", "dpo", "kto", "rm", "prm", "grpo", "rloo", "ppo", "iterative-dpo", "rft")


def _parser(name: str, algo: str | None = None):
    """The finished parser of `prefsmith NAME` (for train: of `prefsmith train ALGO`)."""
    if name != "train":
        return command_parser(name, importlib.import_module(COMMANDS[name][0])).finish()
    if algo in ("grpo", "rloo"):
        from trainers.online.grpo import build_parser
        return build_parser(f"prefsmith train {algo}").finish()
    if algo == "ppo":
        from trainers.online.ppo import build_parser
        return build_parser().finish()
    if algo in ("iterative-dpo", "rft"):
        from trainers.rounds.cli import build_parser
        return build_parser(algo).finish()
    from trainers.offline.cli import build_parser
    return build_parser().finish()


ALL_PARSERS = [(n, None) for n in COMMANDS if n not in ("train", "plot")] + [("train", a) for a in TRAIN_ALGOS]


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# ----------------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("name, algo", ALL_PARSERS)
def test_every_option_of_every_command_has_help(name, algo):
    parser = _parser(name, algo)
    missing = [a.option_strings or [a.dest] for a in parser._actions if not (a.help or "").strip()]
    assert not missing, f"prefsmith {name} {algo or ''}: options without help: {missing}"
    assert "--config" in parser._option_string_actions
    assert "--config FILE.yaml" in parser.format_help()  # formats (no stray % in a help text)


def test_help_shows_defaults_but_not_none_noise():
    text = " ".join(_parser("generate").format_help().split())
    assert "completions per prompt (default: 8)" in text
    assert "sampling temperature (0: greedy) (default: 1.0)" in text
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
    grpo = " ".join(_parser("train", "grpo").format_help().split())
    assert "prompts sampled per optimizer step (each gives a group of G completions) (default: 4)" in grpo
    assert "(default: None)" not in grpo


def test_train_help_lists_every_algorithm_and_recipe(capsys):
    assert cli(["train", "--help"]) == 0
    out = capsys.readouterr().out
    listed = {m.group(1): m.group(2) for m in re.finditer(r"^  (\S+)\s+(.+)$", out, re.M)}
    assert list(listed) == list(TRAIN_ALGOS)
    assert all(len(line) > 20 for line in listed.values())  # one real line each
    assert "rejection-sampling" in listed["rft"] and "value model" in listed["ppo"]


# ----------------------------------------------------------------------------------------------- from the dataclass
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_online_trainers_options_are_their_config_dataclass(algo):
    from trainers.online.grpo import GRPOConfig
    from trainers.online.ppo import PPOConfig

    config = GRPOConfig if algo == "grpo" else PPOConfig
    parser = _parser("train", algo)
    dests = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(config):
        assert f.name in dests, f"{config.__name__}.{f.name} has no flag"
        if f.default is not dataclasses.MISSING:
            assert dests[f.name].default == f.default, f.name
    args = parser.parse_args(["--model", "m", "--input", "p.jsonl", "--output", "o", "--reward", "math",
                              "--no-dynamic-sampling" if algo == "grpo" else "--no-whiten-advantages"])
    cfg = config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config)})  # field for field
    assert cfg.prompts == "p.jsonl" and cfg.rewards == ["math"]
    if algo == "ppo":  # PPO's own defaults for the fields it shares with GRPO
        assert (cfg.num_generations, cfg.prompts_per_step, cfg.num_iterations) == (1, 16, 4)
        assert cfg.whiten_advantages is False
    else:
        assert cfg.dynamic_sampling is False and cfg.num_generations == 8
    help_of = {a.dest: a.help for a in parser._actions}
    assert help_of["mask_truncated"].startswith("DAPO: truncated completions")  # the field's trailing comment


def test_offline_trainers_options_are_their_config_dataclass():
    from trainers.offline.cli import config_from_args
    from trainers.offline.config import TrainConfig

    parser = _parser("train", "dpo")
    dests = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name != "extra":
            assert f.name in dests, f"TrainConfig.{f.name} has no flag"
            assert (dests[f.name].help or "").strip(), f.name
        if f.default is not dataclasses.MISSING and f.name != "lr":  # --lr: the algorithm's default
            assert dests[f.name].default == f.default, f.name
    args = parser.parse_args(["dpo", "--model", "m", "--input", "d", "--output", "o", "--no-shuffle", "--no-plots",
                              "--soft", "--step-sep", "\\n\\n", "--no-reference", "--loss", "simpo",
                              "--adam-beta2", "0.95"])
    cfg = config_from_args(args)
    assert (cfg.shuffle, cfg.plots, cfg.prm_soft, cfg.no_reference, cfg.loss) == (False, False, True, True, "simpo")
    assert cfg.step_separator == "\n\n" and cfg.adam_beta2 == 0.95 and cfg.lr == 1e-6  # DPO's default lr
    assert cfg.group_by_length and cfg.progress  # switches not given keep the field's default
    assert dests["warmup_steps"].help.startswith("steps of warm-up")  # the field's trailing comment


def test_eval_options_are_its_config_dataclasses(tiny_model):
    from pipelines.engines.base import SamplingConfig
    from pipelines.reports.evaluate import EvalConfig, config_from_args
    from pipelines.stages.generate import GenerateConfig

    parser = _parser("eval")
    dests = {a.dest for a in parser._actions}
    for cls, skip in ((GenerateConfig, {"sampling", "engine_options"}), (SamplingConfig, {"stop"}),
                      (EvalConfig, {"generate", "label"})):
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in skip and f.name not in dests]
        assert not missing, f"{cls.__name__}: no flag for {missing}"
    cfg = config_from_args(parser.parse_args(["--model", str(tiny_model), "--input", "p.jsonl", "--output", "o",
                                              "--max-new-tokens", "7", "--by", "level", "--correct-reward", "math",
                                              "--gold-column", "solution", "--batch-size", "3"]))
    assert cfg.generate.sampling == SamplingConfig(n=1, temperature=0.0, max_new_tokens=7)  # eval's greedy default
    assert (cfg.generate.batch_size, cfg.label.batch_size) == (3, 64)  # the engine's, not the reward calls'
    assert cfg.label.rewards == ["math"] and cfg.label.gold_column == "solution" and cfg.by == ["level"]

    from pipelines.stages.generate import generate_config  # generate: the same dataclasses, its own n default
    gen = generate_config(_parser("generate").parse_args([
        "--model", str(tiny_model), "--input", "p.jsonl", "--output", "o", "--env", "python", "--env-option",
        "timeout_s=3", "--max-turns", "2", "--top-p", "0.9"]))
    assert gen.sampling == SamplingConfig(n=8, top_p=0.9) and (gen.env, gen.max_turns) == ("python", 2)
    assert gen.env_options == ["timeout_s=3"]


def test_label_options_are_its_config_dataclass():
    from pipelines.stages.label import LabelConfig

    args = _parser("label").parse_args(["--input", "i", "--output", "o", "--reward", "math", "--reward",
                                        "format:boxed", "--weight", "format=0.2", "--gold-column", "solution",
                                        "--null-on-timeout", "--threads", "1"])
    cfg = LabelConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LabelConfig)})
    assert cfg == LabelConfig(rewards=["math", "format:boxed"], weights=["format=0.2"], gold_column="solution",
                              null_on_timeout=True, threads=1)


def _model_folder(tmp_path) -> str:
    """A folder `--model` takes (checked for config.json only: parsing loads no model)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return str(folder)


def _fields_without_flags(parser, *classes, skip=()) -> list[str]:
    dests = {a.dest for a in parser._actions}
    return [f"{cls.__name__}.{f.name}" for cls in classes for f in dataclasses.fields(cls)
            if f.name not in skip and f.name not in dests]


def test_judge_options_are_its_config_dataclasses(tmp_path, monkeypatch):
    from judges.rubrics import load_rubric
    from judges.verdicts import JudgeConfig
    from pipelines.engines.models import resolve_model
    from pipelines.stages.judge import JudgeStageConfig, config_from_args

    monkeypatch.setenv("PREFSMITH_CHAT_CACHE", str(tmp_path / "chat"))
    parser = _parser("judge")
    # rubric: --rubric NAME|FILE; sampling: JudgeConfig's flags
    assert not _fields_without_flags(parser, JudgeStageConfig, JudgeConfig, skip=("sampling",))
    run = ["--input", "i", "--output", "o"]
    assert config_from_args(parser.parse_args([*run, "--model", "served"])) == JudgeStageConfig(model="served")
    cfg = config_from_args(parser.parse_args([
        *run, "--model", "served", "--mode", "pairwise", "--base-url", "http://h:1/v1", "--concurrency", "3",
        "--cache-dir", str(tmp_path / "c"), "--api-key-env", "MY_KEY", "--max-retries", "1", "--backoff-s", "0.5",
        "--timeout-s", "30", "--threads", "2", "--rubric", "correctness", "--reference-column", "solution",
        "--retries", "4", "--temperature", "0.3", "--retry-temperature", "0.9", "--max-new-tokens", "64", "--seed",
        "7", "--max-pairs", "2", "--shard-size", "5"]))
    assert cfg == JudgeStageConfig(
        model="served", mode="pairwise", base_url="http://h:1/v1", concurrency=3, cache_dir=str(tmp_path / "c"),
        api_key_env="MY_KEY", max_retries=1, backoff_s=0.5, timeout_s=30.0, threads=2,
        rubric=load_rubric("correctness"), reference_column="solution", max_pairs=2, shard_size=5,
        sampling=JudgeConfig(retries=4, temperature=0.3, retry_temperature=0.9, max_new_tokens=64, seed=7))
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    folder = _model_folder(tmp_path)
    cfg = config_from_args(parser.parse_args([*run, "--model", folder, "--engine", "hf", "--no-cache",
                                              "--chat-template", str(template), "--verdict-retries", "0"]))
    assert (cfg.engine, cfg.model, cfg.cache_dir, cfg.sampling.retries) == ("hf", resolve_model(folder), None, 0)
    assert cfg.chat_template == str(template.resolve())


def test_critique_options_are_its_config_dataclasses(tmp_path, monkeypatch):
    from judges.constitutional import CritiqueConfig, load_constitution
    from pipelines.stages.critique import CritiqueStageConfig, config_from_args

    monkeypatch.setenv("PREFSMITH_CHAT_CACHE", str(tmp_path / "chat"))
    parser = _parser("critique-revise")
    # constitution: --constitution NAME|FILE; loop: CritiqueConfig's flags
    assert not _fields_without_flags(parser, CritiqueStageConfig, CritiqueConfig, skip=("loop",))
    run = ["--input", "i", "--output", "o"]
    assert config_from_args(parser.parse_args([*run, "--model", "served"])) == CritiqueStageConfig(model="served")
    constitution = tmp_path / "mine.yaml"
    constitution.write_text(yaml.safe_dump({"name": "mine", "principles": [
        {"name": "brief", "critique": "Is it too long?", "revision": "Shorten it."}]}))
    cfg = config_from_args(parser.parse_args([
        *run, "--model", "served", "--base-url", "http://h:1/v1", "--concurrency", "2", "--no-cache",
        "--max-retries", "0", "--timeout-s", "9", "--constitution", str(constitution), "--rounds", "3",
        "--temperature", "0.1", "--max-new-tokens", "32", "--seed", "5", "--shard-size", "4"]))
    assert cfg == CritiqueStageConfig(
        model="served", base_url="http://h:1/v1", concurrency=2, cache_dir=None, max_retries=0, timeout_s=9.0,
        constitution=load_constitution(str(constitution)), shard_size=4,
        loop=CritiqueConfig(rounds=3, temperature=0.1, max_new_tokens=32, seed=5))


def test_prm_label_options_are_its_config_dataclass(tmp_path):
    from pipelines.engines.models import resolve_model
    from pipelines.stages.prm_label import PRMLabelConfig, config_from_args

    parser = _parser("prm-label")
    # engine_options: --engine-option KEY=VALUE, --base-url and --chat-template fill the dict
    assert not _fields_without_flags(parser, PRMLabelConfig, skip=("engine_options",))
    folder = _model_folder(tmp_path)
    model = resolve_model(folder)
    run = ["--input", "i", "--output", "o", "--model", folder]
    assert config_from_args(parser.parse_args(run)) == PRMLabelConfig(model=model)
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    cfg = config_from_args(parser.parse_args([
        *run, "--method", "binary-search", "--rollouts-per-step", "4", "--step-sep", "\\n", "--reward",
        "format:boxed", "--min-reward", "0.5", "--max-new-tokens", "64", "--max-steps", "9", "--temperature", "0.8",
        "--top-p", "0.9", "--seed", "3", "--prompt-column", "question", "--chat", "never", "--batch-size", "2",
        "--threads", "1", "--engine-option", "dtype=\"float32\"", "--chat-template", str(template)]))
    assert cfg == PRMLabelConfig(
        model=model, method="binary-search", rollouts_per_step=4, step_sep="\n", reward="format:boxed",
        min_reward=0.5, max_new_tokens=64, max_steps=9, temperature=0.8, top_p=0.9, seed=3, prompt_column="question",
        chat="never", batch_size=2, threads=1,
        engine_options={"dtype": "float32", "chat_template": str(template.resolve())})
    cfg = config_from_args(parser.parse_args([*run, "--step-regex", "Step \\d+", "--hard-threshold", "0.5"]))
    assert (cfg.step_regex, cfg.hard_threshold, cfg.method) == ("Step \\d+", 0.5, "mc")


# ----------------------------------------------------------------------------------------------- names and aliases
@pytest.mark.parametrize("name, algo, old, new, dest, value", [
    ("generate", None, "--n", "--num-generations", "n", "3"),
    ("eval", None, "--prompts", "--input", "prompts", "p.jsonl"),
    ("eval", None, "--n", "--num-generations", "n", "3"),
    ("eval", None, "--no-plot", "--no-plots", "no_plot", None),
    ("stats", None, "--no-plot", "--no-plots", "no_plot", None),
    ("judge", None, "--retries", "--verdict-retries", "retries", "4"),
    ("judge", None, "--reference-column", "--gold-column", "reference_column", "solution"),
    ("check-gold", None, "--column", "--gold-column", "column", "solution"),
    ("train", "dpo", "--data", "--input", "data", "pairs.jsonl"),
    ("train", "grpo", "--prompts", "--input", "prompts", "p.jsonl"),
    ("train", "rft", "--prompts", "--input", "prompts", "p.jsonl"),
    ("train", "rft", "--n", "--num-generations", "n", "3"),
])
def test_one_name_per_idea_and_the_old_spelling_still_works(name, algo, old, new, dest, value):
    parser = _parser(name, algo)
    for a in parser._actions:
        a.required = False  # only the one option matters here
    action = parser._option_string_actions[old]
    assert parser._option_string_actions[new] is action and action.option_strings[0] == new  # listed first
    words = [old] + ([value] if value is not None else [])
    for flag in (old, new):
        words[0] = flag
        parsed = parser.parse_known_args(words)[0].__dict__[dest]
        assert parsed is True if value is None else str(parsed) == value


def test_the_alias_table_in_the_docs_is_the_one_in_the_code():
    from pipelines.core.options import ALIASES

    table = DOC.read_text().partition("## One name per idea")[2]
    for canonical, older in ALIASES.items():
        row = next((line for line in table.splitlines() if f"| `{canonical}` |" in line), None)
        assert row, f"docs/cli.md has no row for {canonical}"
        assert all(f"`{o}`" in row for o in older if any(o in _parser(n, a)._option_string_actions
                                                            for n, a in ALL_PARSERS)), row


# ----------------------------------------------------------------------------------------------- abbreviations
@pytest.mark.parametrize("value", [5, False])
def test_a_pipeline_file_abbreviation_is_refused_with_did_you_mean(tmp_path, capsys, value):
    """`max_new_token:` was taken for `--max-new-tokens` while argparse still guessed abbreviations; a false
    value was dropped without a look at its name. Both are refused now, before any stage runs."""
    spec = {"workdir": str(tmp_path / "w"), "stages": [
        {"name": "g", "command": "generate", "args": {"model": "m", "input": "p.jsonl", "max_new_token": value}}]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert cli(["run", str(path)]) == 2
    line = _one_error_line(capsys)
    assert "unrecognized arguments: --max-new-token" in line and "did you mean --max-new-tokens?" in line
    assert not (tmp_path / "w").exists()


def test_a_pipeline_file_false_turns_a_switch_off(tmp_path):
    from pipelines.pipeline import stage_argv
    from trainers.cli import check_args

    stage = {"name": "grpo", "command": "train", "args": {"algo": "grpo", "model": "m", "input": "p.jsonl",
                                                          "reward": "math", "dynamic_sampling": False,
                                                          "mask_truncated": True, "resume": False}}
    argv = stage_argv(stage, {}, tmp_path)
    check_args(argv[1:])  # parses
    args = _parser("train", "grpo").parse_args(argv[2:])
    assert args.dynamic_sampling is False and args.mask_truncated is True and args.resume is False


# ----------------------------------------------------------------------------------------------- --config
def test_config_file_gives_the_options_and_flags_override_it(tmp_path):
    path = tmp_path / "generate.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "input": "p.jsonl", "output": "o", "num_generations": 3,
                                    "max-new-tokens": 7, "engine_option": {"dtype": "bfloat16", "max_concurrency": 16},
                                    "overwrite": True, "system": None}))
    args = _parser("generate").parse_args(["--config", str(path), "--max-new-tokens", "9"])
    assert (args.model, args.input, args.n, args.max_new_tokens, args.overwrite, args.system) == \
           ("m", "p.jsonl", 3, 9, True, None)
    assert args.engine_option == ["dtype=bfloat16", "max_concurrency=16"]
    args = _parser("generate").parse_args([f"--config={path}", "--engine-option", "seed=1"])
    assert args.engine_option == ["seed=1"]  # a repeatable flag on the command line replaces the file's list
    assert "config" not in vars(args)


def test_config_file_unknown_key_is_one_line_naming_the_file(tmp_path, capsys):
    path = tmp_path / "generate.yaml"
    path.write_text("model: m\ninput: p.jsonl\noutput: o\nmax_new_token: 5\n")
    assert cli(["generate", "--config", str(path)]) == 2
    line = _one_error_line(capsys)
    assert line == (f"prefsmith generate: error: --config {path}: unknown key 'max_new_token'; did you mean "
                    "max_new_tokens? (see `prefsmith generate --help`)")
    path.write_text("- not\n- a mapping\n")
    assert cli(["generate", "--config", str(path)]) == 2
    assert "expected a mapping of option names to values" in _one_error_line(capsys)
    assert cli(["generate", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such file" in _one_error_line(capsys)


def test_config_file_for_train_algorithms(tmp_path):
    from trainers.offline.cli import build_parser, config_from_args
    from trainers.online.grpo import GRPOConfig
    from trainers.rounds.cli import parse_args

    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "prompts": "p.jsonl", "output": "o", "rewards": ["math", "format:boxed"],
                                    "weight": ["format=0.1"], "dynamic_sampling": False, "num_generations": 4}))
    args = _parser("train", "grpo").parse_args(["--config", str(path), "--max-steps", "3"])
    cfg = GRPOConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GRPOConfig)})
    assert (cfg.rewards, cfg.weights, cfg.dynamic_sampling, cfg.num_generations, cfg.max_steps) == \
           (["math", "format:boxed"], ["format=0.1"], False, 4, 3)

    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "input": "pairs.jsonl", "output": "o", "beta": 0.2,
                                    "no_plots": True, "lr": 1e-6}))
    cfg = config_from_args(build_parser().parse_args(["dpo", "--config", str(path), "--lr", "2e-6"]))
    assert (cfg.data, cfg.beta, cfg.plots, cfg.lr) == ("pairs.jsonl", 0.2, False, 2e-6)

    path = tmp_path / "rft.yaml"  # the rounds' own keys and the per-round training run's, in one file
    path.write_text(yaml.safe_dump({"model": "m", "prompts": "p.jsonl", "output": "o", "reward": ["math"], "n": 2,
                                    "rounds": 3, "lr": 3e-5, "epochs": 2}))
    own, train = parse_args(["--config", str(path)], "rft")
    assert (own.n, own.rounds, own.rewards, train.lr, train.epochs) == (2, 3, ["math"], 3e-5, 2.0)
    path.write_text(yaml.safe_dump({"model": "m", "prompts": "p.jsonl", "output": "o", "reward": ["math"],
                                    "lrr": 3e-5}))
    with pytest.raises(UsageError, match="unrecognized arguments: --lrr"):
        parse_args(["--config", str(path)], "rft")


# ----------------------------------------------------------------------------------------------- columns
def test_prompt_column_rule():
    from pipelines.core.columns import prompt_of, standard_rows

    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert prompt_of(chat, "messages") == chat[:1]  # a conversation: the prompt is what precedes the answer
    assert prompt_of(chat, "prompt") == chat  # the prompt column as it is (a trailing assistant turn continues)
    assert prompt_of("text", "question") == "text"
    rows = standard_rows([{"messages": chat, "solution": "4"}], "messages", "solution")
    assert rows == [{"messages": chat, "solution": "4", "prompt": chat[:1], "answer": "4"}]
    with pytest.raises(Exception, match="no column 'messages'"):
        standard_rows([{"prompt": "x"}], "messages")


def test_rounds_take_the_columns_and_old_runs_keep_their_identity(tiny_model):
    from trainers.rounds.cli import parse

    base = ["--model", str(tiny_model), "--input", "p.jsonl", "--output", "o", "--reward", "math"]
    cfg = parse([*base, "--prompt-column", "messages", "--gold-column", "solution", "--chat-template", "t.jinja"],
                "rft")
    assert (cfg.prompt_column, cfg.gold_column, cfg.train.chat_template) == ("messages", "solution", "t.jinja")
    assert cfg.identity()["prompt_column"] == "messages" and cfg.identity()["train"]["chat_template"] == "t.jinja"
    plain = parse(base, "rft").identity()  # a run made before these options had none of them
    assert not {"prompt_column", "gold_column"} & set(plain)
    assert not {"chat_template", "warmup_steps"} & set(plain["train"])


# ----------------------------------------------------------------------------------------------- --chat-template
def test_chat_template_mistakes_are_one_line_before_any_model_loads(tmp_path, tiny_model, capsys):
    base = ["generate", "--model", str(tiny_model), "--input", str(tmp_path / "p.jsonl"),
            "--output", str(tmp_path / "o")]
    assert cli([*base, "--chat-template", str(tmp_path / "missing.jinja")]) == 2
    assert _one_error_line(capsys).endswith(f"--chat-template {tmp_path / 'missing.jinja'}: no such file")
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{{ m['content'] }}\n")
    assert cli([*base, "--chat-template", str(bad)]) == 2
    assert "not a valid Jinja template" in _one_error_line(capsys)
    assert cli([*base, "--engine", "openai", "--base-url", "http://127.0.0.1:9/v1", "--chat-template", str(bad)]) == 2
    assert "the server applies its own chat template" in _one_error_line(capsys)


# ----------------------------------------------------------------------------------------------- docs/cli.md
def _doc_blocks() -> tuple[dict[str, str], list[str]]:
    """docs/cli.md's example: the files it shows (`<!-- file: NAME -->` before a block) and its commands
    (the `<!-- run -->` block)."""
    text = DOC.read_text()
    files = {m.group(1): m.group(2) for m in re.finditer(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, re.S)}
    runs = [m.group(1) for m in re.finditer(r"<!-- run -->\n```bash\n(.*?)```", text, re.S)]
    return files, [line for block in runs for line in block.splitlines() if line.strip()]


def test_docs_cli_example_runs(tmp_path, tiny_model, monkeypatch, capsys):
    """The example end to end on the tiny model (`default` is the tiny model here): a `messages` file flows
    from generate to label, eval and both trainers with only --prompt-column / --gold-column."""
    from transformers import AutoTokenizer

    from pipelines.core.dataset import load_rows
    from rewards.chat import prompt_ids

    files, commands = _doc_blocks()
    assert set(files) == {"prompts.jsonl", "chat.jinja", "generate.yaml"} and len(commands) == 5
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        Path(name).write_text(text.replace("model: default", f"model: {tiny_model}"))
    for line in commands:
        words = shlex.split(line.replace("--model default", f"--model {tiny_model}"))
        assert words[0] == "prefsmith"
        assert cli(words[1:]) == 0, line

    template = files["chat.jinja"]
    conversations = [json.loads(x) for x in files["prompts.jsonl"].splitlines()]
    rollouts = load_rows("runs/cli/rollouts")
    assert len(rollouts) == 2 * len(conversations)  # num_generations 2 from the config file
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = template
    for row in rollouts:
        conversation = next(c for c in conversations if c["id"] == row["prompt_id"])
        assert row["prompt"] == conversation["messages"][:1]  # the user turn: the answer is not part of the prompt
        assert row["prompt_token_ids"] == prompt_ids(tok, row["prompt"])  # rendered with chat.jinja
        assert len(row["completion_ids"]) <= 8  # the config file's max_new_tokens
    labeled = load_rows("runs/cli/labeled")
    assert len(labeled) == len(rollouts) and all(r["rewards"]["math"] is not None for r in labeled)
    assert all(r["reward_info"]["math"] != "bad_gold" for r in labeled)  # the gold came from `solution`
    assert "answer" not in labeled[0]  # the rows as they came, plus the reward columns
    evaluated = load_rows("runs/cli/eval")
    assert len(evaluated) == 2 and all(r["prompt_token_ids"] == prompt_ids(tok, r["prompt"]) for r in evaluated)
    assert json.loads(Path("runs/cli/eval/eval.json").read_text())["overall"]["prompts"] == 2
    sft = Path("runs/cli/sft") / "model" if (Path("runs/cli/sft") / "model").is_dir() else Path("runs/cli/sft")
    assert AutoTokenizer.from_pretrained(sft).chat_template == template  # saved with the trained model
    assert (Path("runs/cli/grpo") / "model" / "config.json").is_file()
    metrics = [json.loads(x) for x in Path("runs/cli/grpo/metrics.jsonl").read_text().splitlines()]
    assert any(m.get("step") == 1 for m in metrics)
