"""The builders (`pairs`, `select`, `kto`) and the hygiene commands (`dedup`, `decontaminate`) take their options
from their config dataclasses (STYLE.md rule 14, docs/cli.md "Options from the config dataclass"): every field has
a flag with help and the field's default, and a parsed command line builds the config field for field. The flags
written by hand are the ones a field cannot say (two spellings, one flag for two fields, a second way to give a
field) and the run's own (input, output, overwrite, progress, executor, index)."""
from __future__ import annotations

import dataclasses
import importlib

import pytest

from pipelines.cli import COMMANDS, command_parser
from pipelines.core.options import from_args
from pipelines.errors import UsageError


def _parser(name: str):
    """The finished parser of `prefsmith NAME`, as the CLI builds it."""
    return command_parser(name, importlib.import_module(COMMANDS[name][0])).finish()


def _field_default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _check_flags(parser, cls, flags: dict[str, str], without: tuple[str, ...] = ()) -> None:
    """Every field of `cls` but `without` has its flag (`flags`: field -> flag) with help and the field's default;
    `flags` lists every field that has one, so a new field without a flag fails here."""
    actions = {a.dest: a for a in parser._actions}
    names = [f.name for f in dataclasses.fields(cls)]
    assert sorted(flags) == sorted(n for n in names if n not in without), "a field has no flag, or one too many"
    for f in dataclasses.fields(cls):
        if f.name in without:
            assert f.name not in actions, f"{cls.__name__}.{f.name} is not an option"
            continue
        action = actions[f.name]
        assert flags[f.name] in action.option_strings, (f.name, action.option_strings)
        assert (action.help or "").strip(), f"{flags[f.name]} has no help"
        assert action.default == _field_default(f), (f.name, action.default, _field_default(f))
    help_text = parser.format_help()
    for flag in flags.values():
        assert flag in help_text


def test_pairs_options_are_its_config_dataclass():
    from pipelines.builders.pairs import PairsConfig, config_from_args

    parser = _parser("pairs")
    _check_flags(parser, PairsConfig, {"strategy": "--strategy", "min_margin": "--min-margin",
                                       "max_per_prompt": "--max-per-prompt", "seed": "--seed",
                                       "min_edit_distance": "--min-edit-distance"})
    assert parser._option_string_actions["--strategy"].choices == ["best-worst", "all", "random"]
    base = ["--input", "i", "--output", "o"]
    assert config_from_args(parser.parse_args(base)) == PairsConfig()
    args = parser.parse_args(base + ["--strategy", "random", "--min-margin", "0.25", "--max-per-prompt", "3",
                                     "--seed", "7", "--min-edit-distance", "0.1"])
    assert config_from_args(args) == PairsConfig(strategy="random", min_margin=0.25, max_per_prompt=3, seed=7,
                                                 min_edit_distance=0.1)
    # --max-similarity (hand-written): the same filter said as 1 - distance, and not both at once
    assert config_from_args(parser.parse_args(base + ["--max-similarity", "0.9"])).min_edit_distance == 0.1
    with pytest.raises(UsageError, match="not allowed with"):
        parser.parse_args(base + ["--max-similarity", "0.9", "--min-edit-distance", "0.1"])


def test_select_options_are_its_config_dataclass():
    from pipelines.builders.rft import SelectConfig, config_from_args

    parser = _parser("select")
    # `--mix OTHER:RATIO` (hand-written) gives mix and mix_ratio; format and mix_fingerprint are build_select's
    _check_flags(parser, SelectConfig, {"keep": "--keep", "min_reward": "--min-reward", "mix": "--mix",
                                        "seed": "--seed", "by": "--by"},
                 without=("mix_ratio", "format", "mix_fingerprint"))
    assert parser._option_string_actions["--keep"].choices == ["best", "all-correct"]
    assert parser._option_string_actions["--by"].metavar == "SPEC"
    base = ["--input", "i", "--output", "o"]
    assert config_from_args(parser.parse_args(base)) == SelectConfig()
    args = parser.parse_args(base + ["--keep", "all-correct", "--min-reward", "0.5", "--mix", "data/sft.jsonl:0.3",
                                     "--seed", "4"])
    assert config_from_args(args) == SelectConfig(keep="all-correct", min_reward=0.5, mix="data/sft.jsonl",
                                                  mix_ratio=0.3, seed=4)
    assert config_from_args(parser.parse_args(base + ["--by", "prm:runs/prm:min"])).by == "prm:runs/prm:min"


def test_kto_options_are_its_config_dataclass():
    from pipelines.builders.kto import KTOConfig

    parser = _parser("kto")
    _check_flags(parser, KTOConfig, {"threshold": "--threshold", "label_column": "--label-column"})
    base = ["--input", "i", "--output", "o"]
    assert from_args(KTOConfig, parser.parse_args(base)) == KTOConfig()
    args = parser.parse_args(base + ["--threshold", "7", "--label-column", "judge_score"])
    assert from_args(KTOConfig, args) == KTOConfig(threshold=7.0, label_column="judge_score")
    # the older spelling docs/judges.md uses is the same option
    assert from_args(KTOConfig, parser.parse_args(base + ["--from-column", "judge_ok"])).label_column == "judge_ok"


def test_dedup_options_are_its_config_dataclass():
    from pipelines.hygiene.dedup import DedupConfig

    parser = _parser("dedup")
    flags = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(DedupConfig)}  # --shard-rows too
    _check_flags(parser, DedupConfig, flags)
    assert parser._option_string_actions["--keep"].choices == ["first", "best-reward"]
    base = ["--input", "i", "--output", "o"]
    assert from_args(DedupConfig, parser.parse_args(base)) == DedupConfig()
    args = parser.parse_args(base + ["--field", "prompt+completion", "--threshold", "0.7", "--ngram", "3",
                                     "--num-perm", "64", "--keep", "best-reward", "--seed", "2", "--batch-rows", "10",
                                     "--shard-rows", "20", "--bucket-mb", "0.5", "--index", "idx"])
    assert from_args(DedupConfig, args) == DedupConfig(field="prompt+completion", threshold=0.7, ngram=3, num_perm=64,
                                                       keep="best-reward", seed=2, batch_rows=10, shard_rows=20,
                                                       bucket_mb=0.5)
    assert args.index == "idx"  # a run option (dedup's `index=`), not part of the config


def test_decontaminate_options_are_its_config_dataclass():
    from pipelines.hygiene.decontaminate import DecontaminateConfig

    parser = _parser("decontaminate")
    _check_flags(parser, DecontaminateConfig, {"against": "--against", "ngram": "--ngram", "field": "--field"})
    assert parser._option_string_actions["--against"].metavar == "EVAL"
    base = ["--input", "i", "--output", "o"]
    assert from_args(DecontaminateConfig, parser.parse_args(base)) == DecontaminateConfig()
    args = parser.parse_args(base + ["--against", "humaneval", "--against", "data/eval.jsonl:question",
                                     "--ngram", "8", "--field", "completion"])
    assert from_args(DecontaminateConfig, args) == DecontaminateConfig(
        against=["humaneval", "data/eval.jsonl:question"], ngram=8, field="completion")
