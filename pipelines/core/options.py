"""Command-line options from config dataclasses, and the finishing pass every prefsmith parser gets.

A config dataclass is the single source of a command's options (STYLE.md rule 14): `add_dataclass_options`
makes one flag per field — the type from the annotation (`bool` → `--x/--no-x`, `list[T]` → a repeatable flag,
`T | None` → optional), the default from the field, the help from `field(metadata={"help": ...})` or the
field's trailing `# comment`. Every parser (pipelines/cli.py `Parser`) then gets `finish`: the canonical name of
an idea added where an older spelling is in use (`ALIASES`, docs/cli.md), shared help for the options every
command spells the same way (`COMMON_HELP`), defaults shown in `--help`, and `--config FILE.yaml`
(`config_argv`), whose keys are the flags' names and which the command line overrides.

    @dataclass
    class Config:
        input: str                      # prompts: JSONL, Parquet or a dataset directory
        n: int = 4                      # completions per prompt
        rewards: list[str] = field(default_factory=list, metadata={"flag": "--reward", "help": "a reward spec"})

    add_dataclass_options(parser, Config)   # --input (required), --n N (default: 4), --reward (repeatable)
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

from pipelines.errors import UsageError, UserError

# One name per idea (docs/cli.md): canonical flag -> the older spellings it stands for. A parser that has an older
# spelling also takes the canonical one (same option, same destination), listed first in --help; the older
# spelling keeps working everywhere it did.
ALIASES: dict[str, tuple[str, ...]] = {
    "--input": ("--prompts", "--data"),
    "--num-generations": ("--n",),
    "--no-plots": ("--no-plot",),
    "--verdict-retries": ("--retries",),
    "--gold-column": ("--reference-column", "--column"),
}

# Help for options that several commands spell the same way; a command's own help text, where it gives one, wins.
COMMON_HELP: dict[str, str] = {
    "--model": "`default` (the embedded model), a local model folder or a hub name",
    "--output": "output directory (written atomically; rerun to resume)",
    "--engine": "hf: transformers in this process | vllm: a vLLM engine | openai: an OpenAI-compatible server "
                "(docs/engines.md)",
    "--temperature": "sampling temperature (0: greedy)",
    "--top-p": "nucleus sampling: sample from the smallest set of tokens holding this much probability",
    "--max-new-tokens": "most tokens generated per completion",
    "--seed": "random seed: the same seed, inputs and engine give the same result",
    "--prompt-column": "column holding the prompts: a string or a list of {role, content} messages "
                       "(e.g. `messages`: a trailing assistant turn is left out, docs/cli.md)",
    "--gold-column": "column holding the gold answers the rewards check",
    "--chat": "wrap string prompts as one user message: auto (when the model has a chat template) | always | never",
    "--system": "system message put before chat prompts",
    "--chat-template": "Jinja chat template file used instead of the model's own (wherever one is applied)",
    "--weight": "NAME=W: weight of reward NAME in the total (repeatable; default 1 each)",
    "--reward": "reward spec as in `prefsmith label --help` (repeatable)",
    "--no-progress": "no progress bar",
    "--overwrite": "replace an output made with another config or input",
    "--resume": "continue from the newest checkpoint in --output",
    "--epochs": "passes over the training data (fractions allowed)",
    "--warmup-ratio": "fraction of the steps spent warming the learning rate up from 0",
    "--warmup-steps": "steps spent warming the learning rate up from 0",
    "--scheduler": "learning-rate schedule after warm-up",
    "--weight-decay": "AdamW weight decay",
    "--lora-alpha": "LoRA scaling α (the update is scaled by α / r)",
    "--lora-dropout": "dropout on the LoRA adapters' input",
    "--mode": "pointwise: a score per completion | pairwise: a preference per pair of completions (both orders)",
    "--method": "mc: Monte Carlo rollouts from every step | binary-search: find the first wrong step",
    "--system-prompt": "system message put before chat prompts",
    "--n": "completions per prompt",
    "--batch-size": "prompts per engine call",
    "--template": "format string for string prompts, e.g. '{prompt} Put the answer in \\boxed{{}}.'",
}

CONFIG_HELP = ("YAML file of this command's options: keys are the flags' names (`max_new_tokens` or "
               "`max-new-tokens`), lists for repeatable flags, true/false for switches; flags given on the command "
               "line override it")


# ----------------------------------------------------------------------------------------- from dataclasses
@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """Each field's trailing `# comment` in `cls`'s source (the class body only, not its methods)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    depth, line_tokens = 0, []
    for tok in tokenize.generate_tokens(io.StringIO(textwrap.dedent(source)).readline):
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type == tokenize.NEWLINE:
            names = [t for t in line_tokens if t.type not in (tokenize.COMMENT, tokenize.NL)]
            notes = [t.string.lstrip("#").strip() for t in line_tokens if t.type == tokenize.COMMENT]
            if depth == 1 and len(names) > 1 and names[0].type == tokenize.NAME and names[1].string == ":" and notes:
                comments[names[0].string] = notes[-1]
            line_tokens = []
        elif tok.type not in (tokenize.INDENT, tokenize.DEDENT):
            line_tokens.append(tok)
    return comments


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """`T | None` → (T, True); anything else → (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def add_dataclass_options(parser: argparse._ActionsContainer, cls: type, *, skip: tuple[str, ...] = (),
                          only: tuple[str, ...] | None = None, flags: dict[str, str] | None = None,
                          choices: dict[str, Any] | None = None, help: dict[str, str] | None = None) -> None:
    """One flag per field of dataclass `cls` that `parser` does not have yet (a hand-written option for a field,
    added before this call, wins). Flag `--field-name` unless `flags` or the field's metadata "flag" names
    another; help from `help`, metadata "help", the trailing comment or `COMMON_HELP`; choices from `choices` or
    metadata "choices"; `only`: just these fields (to list them first). The parsed namespace's names are the
    fields' names, so `cls(**vars(args))` builds it."""
    hints = typing.get_type_hints(cls)
    comments = {k: v for klass in reversed(cls.__mro__) if dataclasses.is_dataclass(klass)
                for k, v in field_comments(klass).items()}  # a subclass's comment wins
    root = getattr(parser, "_option_string_actions", {})
    taken = {a.dest for a in getattr(parser, "_actions", [])}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or f.name in taken or (only is not None and f.name not in only):
            continue
        flag = (flags or {}).get(f.name) or f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if flag in root:
            continue
        text = (help or {}).get(f.name) or f.metadata.get("help") or comments.get(f.name) or COMMON_HELP.get(flag, "")
        kind, _ = _unwrap(hints[f.name])
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else (
            f.default if f.default is not dataclasses.MISSING else None)
        kwargs: dict[str, Any] = {"dest": f.name, "help": _escape(text) if text else None}  # None: a test flags it
        pick = (choices or {}).get(f.name) or f.metadata.get("choices")
        if kind is bool and flag.startswith("--no-") and default is False:  # a field that names the switch-off
            kwargs.update(action="store_true", default=False)
        elif kind is bool:
            kwargs.update(action=argparse.BooleanOptionalAction, default=default)
        elif typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind) or (str,)
            kwargs.update(action="append", type=item, default=default if default is not None else [])
        elif kind in (int, float, str):
            kwargs.update(type=kind, default=default)
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for type {kind!r}; add it by hand before this call")
        if pick is not None:
            kwargs["choices"] = list(pick)
        if not has_default:
            kwargs.update(required=True, default=None)
        if "metavar" in f.metadata:
            kwargs["metavar"] = f.metadata["metavar"]
        parser.add_argument(flag, **kwargs)


def from_args(cls: type, args: argparse.Namespace, only: tuple[str, ...] | None = None, **values: Any):
    """`cls` built from the parsed options that are its fields (`only`: just these; the rest keep their defaults).
    A command whose config nests dataclasses (`GenerateConfig.sampling`) builds each level with this; `values`
    give the other fields or override."""
    taken = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if f.init and f.name not in values and hasattr(args, f.name) and (only is None or f.name in only)}
    return cls(**taken, **values)


# ----------------------------------------------------------------------------------------- the finishing pass
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default (not for switches, unset values or empty lists, nor where the help
    text already says its default). Descriptions keep their own line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or (isinstance(default, (list, tuple, str)) and not default)
        if (not action.option_strings or unset or default is argparse.SUPPRESS
                or isinstance(action, (argparse._StoreConstAction, argparse._HelpAction))
                or "default" in text.lower()):
            return text
        shown = ", ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})" if text else f"default: {shown}"


def finish(parser: argparse.ArgumentParser) -> None:
    """What every prefsmith parser gets once its options are added: canonical aliases, shared help, `--config`."""
    if parser.formatter_class in (argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter):
        parser.formatter_class = HelpFormatter  # a command that asked for raw descriptions keeps them
    actions = parser._option_string_actions
    for canonical, older in ALIASES.items():
        if canonical in actions:
            continue
        for old in older:
            if old in actions:
                action = actions[old]
                action.option_strings.insert(0, canonical)
                actions[canonical] = action
                break
    for action in parser._actions:
        if not action.help and action.option_strings:
            text = next((COMMON_HELP[s] for s in action.option_strings if s in COMMON_HELP), "")
            if text:
                action.help = _escape(text)
    if "--config" not in actions:
        parser.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS, help=CONFIG_HELP)


# ----------------------------------------------------------------------------------------- --config FILE.yaml
def _flag_of(parser: argparse.ArgumentParser, key: str) -> tuple[str, argparse.Action] | None:
    """The option a config key names: its flag spelling (`max_new_tokens`, `max-new-tokens`, `--max-new-tokens`)
    or its destination (`rewards` for `--reward`)."""
    flag = "--" + str(key).lstrip("-").replace("_", "-")
    actions = parser._option_string_actions
    if flag in actions:
        return flag, actions[flag]
    for action in parser._actions:
        if action.option_strings and action.dest == key:
            return action.option_strings[0], action
    return None


def value_argv(flag: str, value: Any, action: argparse.Action | None = None) -> list[str]:
    """One option's value as command-line words: a list repeats the flag, a mapping gives KEY=VALUE items,
    `true` a bare switch, `false` its `--no-` form (or nothing), null nothing."""
    if value is None:
        return []
    if isinstance(value, bool):
        if isinstance(action, argparse.BooleanOptionalAction):
            return [flag if value else "--no-" + flag[2:]]
        if action is None or action.nargs == 0:
            return [flag] if value else []
    if isinstance(value, dict):
        value = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in value.items()]
    if isinstance(value, list):
        return [w for v in value for w in (flag, str(v))]
    return [flag, str(value)]


def switch_words(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`--switch=true|false` (what a pipeline file's `key: true|false` becomes) as the switch's own words:
    `--x` / `--no-x` for an `--x/--no-x` pair, `--x` or nothing for a plain switch. Any other word is left as it
    is, so a misspelled key is still an unknown option."""
    out = []
    for word in argv:
        flag, eq, value = word.partition("=")
        action = parser._option_string_actions.get(flag) if eq and flag.startswith("--") else None
        if action is None or action.nargs != 0 or value.lower() not in ("true", "false"):
            out.append(word)
        elif isinstance(action, argparse.BooleanOptionalAction):
            opposite = "--" + flag[5:] if flag.startswith("--no-") else "--no-" + flag[2:]
            out.append(flag if value.lower() == "true" else opposite)
        elif value.lower() == "true":
            out.append(flag)
    return out


def read_config(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except yaml.YAMLError as e:
        raise UserError(f"--config {path}: not valid YAML ({' '.join(str(e).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")
    return data


def config_argv(parser: argparse.ArgumentParser, argv: list[str], passthrough: bool = False) -> list[str]:
    """`argv` with its `--config FILE.yaml` replaced by the file's options, put first so that the flags given on
    the command line win (a repeatable flag given there replaces the file's list). An unknown key is a UsageError
    naming the file, unless `passthrough` (a parser that hands its unknown options to another one)."""
    where = [i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config=")]
    if not where:
        return argv
    if len(where) > 1:
        raise UsageError(f"--config is given {len(where)} times; give one file")
    i = where[0]
    if argv[i] == "--config":
        if i + 1 >= len(argv):
            raise UsageError("--config needs a FILE.yaml")
        path, rest = argv[i + 1], argv[:i] + argv[i + 2:]
    else:
        path, rest = argv[i].partition("=")[2], argv[:i] + argv[i + 1:]
    given = {a.split("=")[0] for a in rest if a.startswith("--")}
    words: list[str] = []
    for key, value in read_config(path).items():
        found = _flag_of(parser, key)
        if found is None:
            if passthrough:
                words += value_argv("--" + str(key).replace("_", "-"), value)
                continue
            known = [f[2:] for f in parser._option_string_actions if f.startswith("--")]
            close = difflib.get_close_matches(str(key).replace("_", "-"), known, 1, 0.75)
            hint = f"; did you mean {close[0].replace('-', '_')}?" if close else ""
            raise UsageError(f"--config {path}: unknown key {key!r}{hint} (see `{parser.prog} --help`)")
        flag, action = found
        if given & set(action.option_strings):
            continue  # the command line says it
        words += value_argv(flag, value, action)
    return words + rest
