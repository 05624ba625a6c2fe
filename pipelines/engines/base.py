"""The one interface every generation engine implements.

Prompts are either plain strings (sent as-is), chat message lists (rendered with the model's own chat
template exactly once, by the engine or by the server; `rewards.chat.prompt_ids`), or token ids to continue
as they are (a prefix of an assistant turn: `prefsmith prm-label`; the openai engine sends them to
`completions`, which accepts token arrays). For each prompt an engine returns `n` samples.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, Union

from pipelines.errors import UserError
from rewards.chat import prompt_ids, render_chat

Prompt = Union[str, list[dict[str, Any]], list[int]]


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    # strings that end a sample as soon as its decoded text contains one (an environment's `stop`); the sample
    # keeps its tokens up to and including the one that completed the string, finish_reason `stop_string`
    stop: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The settings as a dict; `stop` only when set, so configs made before it keep their fingerprint."""
        out = asdict(self)
        if self.stop:
            out["stop"] = list(self.stop)
        else:
            del out["stop"]
        return out


@dataclass
class Sample:
    text: str
    token_ids: list[int] | None
    # log-prob of each sampled token under the distribution it was sampled from (after temperature and top-p);
    # None when the backend does not return them (e.g. `transformers serve`).
    logprobs: list[float] | None
    # "stop" (a stop token, kept as the last id) | "length" | "stop_string" (the text reached one of
    # `SamplingConfig.stop`; the last id is the token that completed it, no end-of-turn token follows) |
    # "too_long" (the prompt fills the context: not sampled) | "error:<why>"
    finish_reason: str
    # the prompt's token ids the engine continued from, as it rendered them (None where the engine does not know
    # them, e.g. a served model without a local tokenizer): rows record them without rendering the prompt again
    prompt_ids: list[int] | None = None
    # the log-prob of each sampled token under the model's own distribution (temperature 1, no top-p): what an
    # off-policy correction compares a later policy against (the asynchronous trainers). Only when asked: the hf
    # engine with `policy_logprobs = True`, the vLLM policy engine with `behaviour_logprobs=True`; else None
    policy_logprobs: list[float] | None = None


def with_prompt_ids(out: list[list[Sample]], ids: list[list[int]]) -> list[list[Sample]]:
    """Each prompt's samples, marked with the ids that prompt was rendered to."""
    for samples, prompt in zip(out, ids):
        for s in samples:
            s.prompt_ids = prompt
    return out


TOO_LONG = "too_long"


def too_long(n: int) -> list[Sample]:
    """The `n` samples of a prompt that leaves the model no room to generate: empty, never sampled, and marked so
    (`label` scores them null with reason `too_long`, the generate summary counts them)."""
    return [Sample(text="", token_ids=[], logprobs=[], finish_reason=TOO_LONG) for _ in range(n)]


def fits(prompt_len: int, context: int | None) -> bool:
    """Whether a prompt of `prompt_len` tokens leaves room for at least one new token in `context` positions."""
    return context is None or prompt_len < context


class Engine(Protocol):
    name: str
    model: str

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig, seeds: Sequence[int],
                 on_prompt_done: Callable[[int], None] | None = None) -> list[list[Sample]]:
        """Return, for each prompt, `sampling.n` samples. `seeds[i]` seeds prompt i, so a prompt's samples do
        not depend on which other prompts share its batch (this is what makes kill-and-resume reproduce an
        uninterrupted run exactly). `on_prompt_done(i)`, when given, is called once per prompt as soon as all
        its samples are done (progress bars: `generate` advances per prompt, not per batch)."""
        ...

    def prompt_ids(self, prompt: Prompt) -> list[int] | None:
        """The token ids generation continues from for `prompt` (`render_prompt_ids`); None when the engine
        cannot know them (a server's own template and no local tokenizer)."""
        ...

    def close(self) -> None: ...


class EngineError(UserError, RuntimeError):
    """A problem the user can fix (wrong model path, unreachable server); raised before any work starts."""


def prompt_seed(seed: int, prompt_id: str) -> int:
    """The seed of the prompt whose id is `prompt_id` in a run seeded `seed`: its samples do not depend on batching
    or on where a killed run resumed (`generate`, its multi-turn rollouts, `prm-label`)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:4], "little")


def derive_seed(seed: int, sample_idx: int) -> int:
    """Seed for sample `sample_idx` of a prompt seeded `seed`, when samples must be drawn one request at a
    time (servers that ignore `n`). Sample 0 keeps the prompt's seed; the others get stable, distinct seeds."""
    if sample_idx == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def render_prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids the model sees for `prompt`: `rewards.chat.prompt_ids`, the trainers' rendering too, with an
    EngineError for a prompt that gives the model nothing to continue."""
    if not isinstance(prompt, str) and not prompt:
        raise EngineError("empty chat prompt (no messages): give at least one {role, content} message")
    if not isinstance(prompt, str) and all(isinstance(t, int) for t in prompt):
        return list(prompt)  # already the ids to continue from
    ids = prompt_ids(tokenizer, prompt)
    if not ids:
        raise EngineError("empty prompt string (no tokens, and the tokenizer adds no BOS): drop or fill that row")
    return ids


_SENTINEL = "PREFSMITH_END_OF_TURN_PROBE"


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template writes right after an assistant message (e.g. `<|im_end|>`,
    `<|eot_id|>`), or None when there is no template or no such token."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = render_chat(tokenizer, messages)
    except Exception:  # templates may reject this probe (e.g. require a system turn); then there is none to add
        return None
    tail = text.split(_SENTINEL, 1)[-1]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    if ids and ids[0] in set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {})):
        return int(ids[0])
    return None


def stop_token_ids(tokenizer: Any, generation_eos: int | list[int] | None = None) -> list[int]:
    """Every token that ends a completion: the generation config's eos ids, the tokenizer's eos and the chat
    template's end-of-turn token."""
    ids: list[int] = []
    for value in (generation_eos, tokenizer.eos_token_id, end_of_turn_id(tokenizer)):
        for tid in value if isinstance(value, (list, tuple)) else [value]:
            if tid is not None and int(tid) not in ids:
                ids.append(int(tid))
    return ids


def resolve_model_path(model: str) -> str:
    """Return `model` as a usable string: an existing local folder (expanded; a `prefsmith train` run directory
    stands for its OUTPUT/model, `rewards.rm.model_folder`) or a hub name. A string that is clearly a path but
    does not exist, or a folder without config.json, raises EngineError."""
    from rewards.rm import model_folder

    path = Path(model_folder(model)).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise EngineError(
                f"model folder {path} has no config.json: point --model at a folder written by save_pretrained "
                "(for the default policy run `prefsmith models fetch-default`)"
            )
        return str(path)
    looks_like_path = model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model
    if looks_like_path:
        raise EngineError(
            f"model folder {path} does not exist: pass an existing local folder "
            "(for the default policy run `prefsmith models fetch-default`) or a hub name like org/name"
        )
    return model


def load_tokenizer(model: str, chat_template: str | None = None) -> Any:
    """The model's tokenizer, or EngineError saying which model could not be loaded and what to do.
    `chat_template`: a Jinja file (`--chat-template`) that replaces the model's chat template."""
    from transformers import AutoTokenizer

    template = read_chat_template(chat_template)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except Exception as err:  # offline hub name, corrupt folder: one message instead of a deep stack trace
        raise EngineError(
            f"cannot load the tokenizer of model {model!r} ({type(err).__name__}: {err}). Pass a local folder "
            "written by save_pretrained (for the default policy run `prefsmith models fetch-default`)"
        ) from err
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def read_chat_template(path: str | None) -> str | None:
    """The text of a `--chat-template` file (None: keep the model's), checked to be a Jinja template that parses."""
    if path is None:
        return None
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, IsADirectoryError):
        raise EngineError(f"--chat-template {path}: no such file") from None
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise EngineError(f"--chat-template {path}: line {e.lineno}: not a valid Jinja template ({e.message})") from None
    return text


def completion_text(tokenizer: Any, token_ids: list[int], finish_reason: str) -> str:
    """The completion's text: its tokens decoded without special tokens, the final stop token left out. Every
    engine that has the token ids decodes them this same way, so equal ids give equal text."""
    body = token_ids[:-1] if finish_reason == "stop" and token_ids else token_ids
    return tokenizer.decode(body, skip_special_tokens=True)


STOP_STRING = "stop_string"


class StopStrings:
    """Whether a growing completion's text now contains one of `stop` (`SamplingConfig.stop`), decoding only the
    tail of its tokens: a string of L characters is at most 4L UTF-8 bytes and every token adds at least a byte,
    so the tokens spelling it, the one that completed it and one more fit in the last 4L + 2. Called after every
    new token, it finds the string at the token that completed it. Engines that check stop strings themselves
    (hf) use it; vLLM and servers check their own."""

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.window = 4 * max(map(len, self.stop)) + 2 if self.stop else 0

    def __bool__(self) -> bool:
        return bool(self.stop)

    def hit(self, tokens: Sequence[int]) -> bool:
        tail = self.tokenizer.decode(list(tokens[-self.window:]), skip_special_tokens=True)
        return any(s in tail for s in self.stop)


def per_prompt_seeds(n_prompts: int, sampling: SamplingConfig, seeds: Sequence[int] | None) -> list[int]:
    """`seeds` checked to hold one seed per prompt; when None, `sampling.seed + i` (batch-position dependent)."""
    if seeds is None:
        return [sampling.seed + i for i in range(n_prompts)]
    if len(seeds) != n_prompts:
        raise ValueError(f"got {n_prompts} prompts but {len(seeds)} seeds: give one seed per prompt")
    return [int(s) for s in seeds]
