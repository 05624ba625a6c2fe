"""Constitutional AI's critique-revise loop (Bai et al. 2022, "Constitutional AI", the supervised stage).

For each prompt: a response (the row's own, or the model's first answer), then `rounds` times: draw one
principle of the constitution, ask the model to critique its last response against it, then to revise the
response given that critique. The conversation grows as in the paper:

    [prompt...] -> assistant: response -> user: critique request -> assistant: critique
                -> user: revision request -> assistant: revision      (the next round continues from here)

Simplifications: no few-shot examples in the context (the paper used some); the principle for round r of a
row is drawn with `random.Random(f"{seed}:{row_key}:{r}")`, so a row's trace depends only on it and the seed
(resume reproduces it with a cached model). Each round is two `chat` calls over the whole batch.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rewards.chat import as_messages

from .protocol import ChatModel, as_reply

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "data" / "constitutions"
CRITIQUE_SUFFIX = "\nWrite only the critique."
REVISION_SUFFIX = "\nWrite only the revised response, with no preamble and no mention of the critique."


class ConstitutionError(ValueError):
    """A constitution file that cannot be used."""


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    revision: str


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "principles": [vars(p) for p in self.principles]}


def load_constitution(name_or_path: str = "default") -> Constitution:
    """A built-in constitution by name (`default`, in data/constitutions/) or a YAML file:
    `{name, principles: [{name, critique, revision}, ...]}`."""
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConstitutionError(f"no constitution {name_or_path!r}: pass a YAML file or `default`")
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConstitutionError(f"constitution {path}: cannot read it as YAML ({' '.join(str(err).split())})") from None
    items = data.get("principles") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ConstitutionError(f"constitution {path}: needs a non-empty `principles` list")
    principles = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or not all(isinstance(item.get(f), str) and item[f].strip()
                                                 for f in ("critique", "revision")):
            raise ConstitutionError(f"constitution {path}: principle {k + 1} needs `critique` and `revision` text")
        principles.append(Principle(str(item.get("name") or f"principle_{k + 1}"), item["critique"].strip(),
                                    item["revision"].strip()))
    return Constitution(str(data.get("name") or path.stem), tuple(principles))


@dataclass(frozen=True)
class CritiqueConfig:
    rounds: int = 1  # critique + revision rounds per prompt
    temperature: float = 0.7
    max_new_tokens: int = 512
    seed: int = 0


@dataclass
class Revised:
    """One prompt's outcome: the original response, the final revision and each round's step. `error`: the
    model refused a request of this row's loop (Reply.error, e.g. `too_long: ...` once the conversation outgrew
    its context): the loop stopped there, `final` is the last revision it got (the original if none)."""
    original: str
    final: str
    trace: list[dict] = field(default_factory=list)  # {round, principle, critique, revision}
    error: str | None = None


def draw_principle(constitution: Constitution, seed: int, row_key: str, round_: int) -> Principle:
    return random.Random(f"{seed}:{row_key}:{round_}").choice(constitution.principles)


def critique_revise(model: ChatModel, prompts: Sequence[Any], responses: Sequence[str | None],
                    row_keys: Sequence[str], constitution: Constitution,
                    cfg: CritiqueConfig = CritiqueConfig()) -> list[Revised]:
    """Run the loop for a batch. A response of None is first answered by `model`. A row whose request the
    model refuses stops its loop there (`Revised.error`); the others go on."""
    errors: dict[int, str] = {}

    def reply(rows: list[int], conversations: list[list[dict]], seed: int) -> dict[int, str]:
        """Each row's reply to its conversation; a refused row goes to `errors` and gets no reply."""
        if not rows:
            return {}
        out = model.chat([conversations[i] for i in rows], n=1, temperature=cfg.temperature,
                         max_new_tokens=cfg.max_new_tokens, seed=seed)
        got = {}
        for i, (r, *_) in zip(rows, out):
            r = as_reply(r)
            if r.error:
                errors[i] = r.error
            else:
                got[i] = str(r).strip()
        return got

    contexts = [as_messages(p, "user") for p in prompts]
    first = reply([i for i, r in enumerate(responses) if r is None], contexts, cfg.seed)
    current = [first.get(i, "") if r is None else str(r) for i, r in enumerate(responses)]
    results = [Revised(original=c, final=c) for c in current]
    for i, c in enumerate(current):
        contexts[i] = [*contexts[i], {"role": "assistant", "content": c}]
    for round_ in range(1, cfg.rounds + 1):
        drawn = [draw_principle(constitution, cfg.seed, key, round_) for key in row_keys]
        active = [i for i in range(len(prompts)) if i not in errors]
        for i in active:
            contexts[i] = [*contexts[i], {"role": "user", "content": drawn[i].critique + CRITIQUE_SUFFIX}]
        critiques = reply(active, contexts, cfg.seed + round_)
        for i, critique in critiques.items():
            contexts[i] = [*contexts[i], {"role": "assistant", "content": critique},
                           {"role": "user", "content": drawn[i].revision + REVISION_SUFFIX}]
        for i, rev in reply(list(critiques), contexts, cfg.seed + round_).items():
            contexts[i] = [*contexts[i], {"role": "assistant", "content": rev}]
            results[i].trace.append({"round": round_, "principle": drawn[i].name, "critique": critiques[i],
                                     "revision": rev})
            results[i].final = rev
    for i, e in errors.items():
        results[i].error = e
    return results
