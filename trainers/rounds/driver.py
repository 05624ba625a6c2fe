"""Rounds: sample with the current policy, label, clean, build a training set, train, evaluate; repeat.

One driver (`run_rounds`) serves both recipes; a recipe (`Recipe`) says only what differs:

    iterative-dpo  build = `pairs` (best-worst by default); train = DPO; the policy starts from the previous
                   round's model, the reference is the initial model (`--ref initial`, RLHFlow) or the
                   previous round's (`--ref previous`)
    rft            build = `select` (every distinct correct completion by default), accumulated over the
                   rounds; train = SFT from the initial model (`--from initial`, expert iteration / ReST-EM)
                   or from the previous round's (`--from previous`)

A round, top to bottom (`RoundRun.run`), each step a stage of its own directory under DIR/round-NNN/:

    prompts    a seeded slice of the prompt set (`--prompts-per-round`; a new slice each round)
    rollouts   the `generate` stage with the round's policy (round 0: --model; round r: round r-1's model)
    labeled    the `label` stage (the same --reward specs `prefsmith label` takes)
    deduped    the `dedup` stage on prompt+completion against every earlier round (`--index DIR/dedup-index`)
    decontaminated   the `decontaminate` stage, with --decontaminate-against only
    pairs | selected (+ sft, the accumulated set)   the recipe's builder
    train      `trainers.offline.loop.train`, checkpointing every --save-every steps; the round's model in train/model
    eval/SET   `prefsmith eval` of the round's model on each --eval-prompts set, greedy: held-out accuracy

then DIR/round-NNN/round.json (written last: the round is done), and DIR/model links to the newest round's model
(where every trainer leaves its final model). Every step resumes by itself (a stage by its
shard markers and manifest, training from its newest checkpoint, eval by its manifest), so a run killed
anywhere, rerun with the same command, continues at the exact step of the exact round and ends with the rows and
weights of an uninterrupted run. DIR/rounds.json records the settings; a rerun with other settings is refused
(--overwrite starts over), except --rounds, which may grow to run more rounds. docs/recipes.md has the rest.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from pipelines.core import dataset as ds
from pipelines.core.columns import standard_rows
from pipelines.core.files import atomic_path, atomic_write_json, atomic_write_text, fingerprint_json
from pipelines.errors import UserError
from trainers.offline.config import TrainConfig

SETTINGS = "rounds.json"
ROUNDS_LOG = "rounds.jsonl"
INDEX = "dedup-index"
INITIAL_EVAL = "eval-initial"


@dataclass
class RoundsConfig:
    recipe: str  # a name in RECIPES
    model: str
    prompts: str
    output: str
    rewards: list[str]
    train: TrainConfig  # the per-round training run's settings (model, data, output, reference: set per round)
    weights: list[str] = field(default_factory=list)
    rounds: int = 3
    # sampling
    n: int = 4
    prompts_per_round: int | None = None  # None: every prompt every round
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    template: str | None = None
    system: str | None = None
    chat: str = "auto"
    engine: str = "hf"
    gen_batch_size: int = 8
    prompt_column: str = "prompt"  # the prompts' column: a string or messages (pipelines/core/columns.py)
    gold_column: str = "answer"  # the rewards' gold-answer column
    seed: int = 0  # prompt slices and sampling (round r samples with seed + r)
    # cleaning
    dedup_field: str = "prompt+completion"
    dedup_threshold: float = 0.8
    decontaminate_against: list[str] = field(default_factory=list)
    decontaminate_ngram: int = 13
    # building
    strategy: str = "best-worst"  # iterative-dpo
    min_margin: float = 0.0
    keep: str = "all-correct"  # rft
    min_reward: float = 1.0
    # whom training starts from and is regularised towards
    ref: str = "initial"  # iterative-dpo: initial | previous
    start: str | None = None  # training starts from: initial | previous (--from; default rft initial, dpo previous)
    # evaluation
    eval_prompts: list[str] = field(default_factory=list)
    eval_max_new_tokens: int | None = None  # default: max_new_tokens
    eval_batch_size: int = 64
    eval_limit: int | None = None
    # how it runs (not part of the identity)
    overwrite: bool = False
    progress: bool = True
    executor: Any = None

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise UserError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        if not self.rewards:
            raise UserError("give at least one --reward (e.g. --reward math)")
        for name in ("rounds", "n", "max_new_tokens", "gen_batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.prompts_per_round is not None and self.prompts_per_round < 1:
            raise UserError(f"--prompts-per-round must be >= 1, got {self.prompts_per_round}")
        if self.ref not in ("initial", "previous"):
            raise UserError(f"--ref must be initial or previous, got {self.ref!r}")
        if self.start is None:
            self.start = "initial" if self.recipe == "rft" else "previous"
        if self.start not in ("initial", "previous"):
            raise UserError(f"--from must be initial or previous, got {self.start!r}")

    def identity(self) -> dict:
        """What a rerun must not change: everything that decides a round's rows or weights. --rounds may grow,
        and where or how verbosely it runs does not matter."""
        skip = {"rounds", "output", "train", "overwrite", "progress", "executor", "eval_batch_size"}
        # options added later are left out at their defaults, so a run made before them continues
        later = {"prompt_column": "prompt", "gold_column": "answer", "chat_template": None, "warmup_steps": None}
        own = {k: v for k, v in dataclasses.asdict(self).items()
               if k not in skip and not (k in later and v == later[k])}
        run_only = {"model", "data", "output", "ref_model", "resume", "progress", "plots", "logging_every",
                    "save_every", "save_total_limit", "ref_cache_dir", "threads", "report_to"}
        train = {k: v for k, v in dataclasses.asdict(self.train).items()
                 if k not in run_only and not (k in later and v == later[k])}
        return {**own, "train": train}


# ------------------------------------------------------------------------------------------------ recipes
class Recipe:
    """What one recipe adds to the shared round: its training algorithm, its builder, and whom training starts
    from and is regularised towards."""

    name: ClassVar[str]
    algorithm: ClassVar[str]  # trainers/offline/algorithms.py
    built: ClassVar[str]  # the figure the builder reports (pairs, selected)

    def build(self, run: "RoundRun", cleaned: Path) -> tuple[Path | None, dict]:
        """The round's training set from its cleaned rollouts (which may be empty): (its directory, or None
        when there is nothing to train on; figures for round.json). Records what it writes with `run.record`."""
        raise NotImplementedError

    def start_and_reference(self, cfg: RoundsConfig, previous: str) -> tuple[str, str | None]:
        """(the model training starts from, the reference model or None) for a round whose policy is `previous`."""
        raise NotImplementedError


class IterativeDPO(Recipe):
    name, algorithm, built = "iterative-dpo", "dpo", "pairs"

    def build(self, run: "RoundRun", cleaned: Path) -> tuple[Path | None, dict]:
        from pipelines.builders.pairs import PairsConfig, build_pairs

        cfg = run.cfg
        if not _rows(cleaned):
            return None, {"pairs": 0}
        out = run.dir / "pairs"
        summary = build_pairs(str(cleaned), str(out), PairsConfig(strategy=cfg.strategy, min_margin=cfg.min_margin,
                              seed=cfg.seed), progress=cfg.progress, executor=cfg.executor)
        figures = {"pairs": summary["pairs"], "prompts_with_pairs": summary["prompts_with_pairs"]}
        return run.record("pairs", out), figures

    def start_and_reference(self, cfg: RoundsConfig, previous: str) -> tuple[str, str | None]:
        start = previous if cfg.start == "previous" else cfg.model
        return start, (cfg.model if cfg.ref == "initial" else previous)


class RFT(Recipe):
    name, algorithm, built = "rft", "sft", "selected"

    def build(self, run: "RoundRun", cleaned: Path) -> tuple[Path | None, dict]:
        from pipelines.builders.rft import SelectConfig, build_select

        cfg = run.cfg
        figures = {"selected": 0}
        if _rows(cleaned):
            out = run.dir / "selected"
            summary = build_select(str(cleaned), str(out), SelectConfig(keep=cfg.keep, min_reward=cfg.min_reward),
                                   progress=cfg.progress, executor=cfg.executor)
            run.record("selected", out)
            figures = {"selected": summary["selected"], "prompts_with_correct": summary["prompts_with_correct"]}
        # the training set: every round's selection so far, in round order (dedup already removed the samples
        # an earlier round had)
        parts = [run.root / round_name(r) / "selected" for r in range(run.r + 1)]
        sft = run.record("sft", _concat_datasets(parts, run.dir / "sft", "rft-accumulate"))
        return sft, {**figures, "sft_rows": _rows(sft)}

    def start_and_reference(self, cfg: RoundsConfig, previous: str) -> tuple[str, str | None]:
        return (cfg.model if cfg.start == "initial" else previous), None


RECIPES: dict[str, type[Recipe]] = {r.name: r for r in (IterativeDPO, RFT)}


# ------------------------------------------------------------------------------------------------ helpers
def round_name(r: int) -> str:
    return f"round-{r:03d}"


def _log(msg: str) -> None:
    print(f"prefsmith rounds: {msg}", file=sys.stderr, flush=True)


def _rows(path: Path) -> int:
    manifest = ds.read_manifest(path) or {}
    return int(manifest.get("rows_out") or 0)


def _complete(path: Path) -> bool:
    return bool((ds.read_manifest(path) or {}).get("complete"))


def data_record(path: Path, root: Path) -> dict:
    """A stage output as round.json records it: where, how many rows, and the content fingerprint of its shards
    (pipelines/core/dataset.py `fingerprint`), which two runs share exactly when their rows are the same."""
    manifest = ds.read_manifest(path) or {}
    return {"path": str(path.relative_to(root)), "rows": int(manifest.get("rows_out") or 0),
            "fingerprint": ds.fingerprint(path), "stage_fingerprint": manifest.get("fingerprint")}


def _write_once(path: Path, stage: str, config: dict, make: Callable[[], tuple[list[dict], dict]]) -> Path:
    """A small dataset written whole (prompts, an accumulated set, eval rows): kept when its manifest already
    says complete with this config's fingerprint, else (re)written, the manifest (with `make`'s extra fields)
    last."""
    fp = fingerprint_json({"stage": stage, "config": config})
    old = ds.read_manifest(path)
    if old is not None and old.get("complete") and old.get("fingerprint") == fp:
        return path
    shutil.rmtree(path, ignore_errors=True)
    rows, extra = make()
    manifest = {"stage": stage, "fingerprint": fp, "config": config, **extra}
    if rows:
        ds.write_dataset(rows, path, manifest)
    else:  # an empty dataset is its manifest alone (as the runner writes an empty shard)
        ds.write_manifest(path, {**manifest, "rows_out": 0, "complete": True, "completed_shards": [], "num_shards": 0})
    return path


def _concat_datasets(parts: list[Path], out: Path, stage: str) -> Path:
    non_empty = [p for p in parts if _rows(p)]
    config = {"parts": [{"path": str(p), "fingerprint": ds.fingerprint(p)} for p in non_empty]}
    return _write_once(out, stage, config, lambda: (
        ds.concat([ds.load_table(str(p)) for p in non_empty]).to_pylist() if non_empty else [], {}))


def round_prompts(n_prompts: int, per_round: int | None, seed: int, r: int) -> list[int]:
    """Round r's prompt indices, sorted: the r-th block of `per_round` in a seeded order that reshuffles each
    time the set is used up (trainers.online.grpo.PromptSampler), so rounds see different prompts while there are
    enough; every prompt when `per_round` is None or covers the set."""
    from trainers.online.grpo import PromptSampler

    if per_round is None or per_round >= n_prompts:
        return list(range(n_prompts))
    sampler = PromptSampler(n_prompts, seed)
    for _ in range(r):
        sampler.take(per_round)
    return sorted(sampler.take(per_round))


# ------------------------------------------------------------------------------------------------ a round
class RoundRun:
    """Round `r` of a run in `root`; `run()` does (or finishes) it and returns its round.json record."""

    def __init__(self, cfg: RoundsConfig, recipe: Recipe, r: int, policy: str, prompts: list[dict]):
        self.cfg, self.recipe, self.r, self.policy, self.all_prompts = cfg, recipe, r, policy, prompts
        self.root = Path(cfg.output)
        self.dir = self.root / round_name(r)
        self.data: dict[str, dict] = {}
        self.figures: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}

    def _step(self, name: str, fn: Callable[[], Any]) -> Any:
        _log(f"round {self.r}: {name}")
        t0 = time.time()
        out = fn()
        self.seconds[name] = round(time.time() - t0, 3)
        return out

    def record(self, name: str, path: Path) -> Path:
        self.data[name] = data_record(path, self.root)
        return path

    def run(self) -> dict:
        cfg = self.cfg
        prompts = self.record("prompts", self._step("prompts", self.prompts))
        rollouts = self.record("rollouts", self._step("generate", lambda: self.generate(prompts)))
        labeled = self.record("labeled", self._step("label", lambda: self.label(rollouts)))
        cleaned = self.record("deduped", self._step("dedup", lambda: self.dedup(labeled)))
        if cfg.decontaminate_against and _rows(cleaned):
            cleaned = self.record("decontaminated", self._step("decontaminate", lambda: self.decontaminate(cleaned)))
        summary = (ds.read_manifest(labeled) or {}).get("summary", {})
        self.figures.update({"prompts": _rows(prompts), "rollouts": _rows(rollouts),
                             "mean_reward": summary.get("reward", {}).get("mean"), "kept": _rows(cleaned)})
        train_set, built = self._step(self.recipe.built, lambda: self.recipe.build(self, cleaned))
        self.figures.update(built)
        start, reference = self.recipe.start_and_reference(cfg, self.policy)
        model, trained = self._step("train", lambda: self.train(train_set, start, reference))
        ev = self._step("eval", lambda: evaluate(cfg, model, self.dir / "eval"))
        if ev is not None:
            for name, path in ev["dirs"].items():
                self.record(f"eval/{name}", path)
            self.figures.update(ev["summary"])
        record = {"round": self.r, "recipe": cfg.recipe, "sampled_with": self.policy, "trained_from": start,
                  "reference": reference, "model": model, "trained": trained, "data": self.data,
                  "figures": self.figures, "seconds": self.seconds,
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(self.dir / "round.json", record)  # last: the round is done
        shutil.rmtree(self.dir / "train" / "checkpoints", ignore_errors=True)  # the final weights are saved
        return record

    # ---------------------------------------------------------------------------------------- the steps
    def prompts(self) -> Path:
        from pipelines.stages.generate import prompt_ids

        cfg, rows = self.cfg, self.all_prompts
        picked = round_prompts(len(rows), cfg.prompts_per_round, cfg.seed, self.r)
        ids = prompt_ids(rows, 0)  # the prompt's id in the whole set, so rollout ids never repeat across rounds
        config = {"source": cfg.prompts, "fingerprint": ds.fingerprint(cfg.prompts), "rows": picked}
        return _write_once(self.dir / "prompts", "round-prompts", config,
                           lambda: ([{**rows[i], "id": ids[i]} for i in picked], {}))

    def generate(self, prompts: Path) -> Path:
        from pipelines.engines.base import SamplingConfig
        from pipelines.stages.generate import GenerateConfig, generate

        cfg = self.cfg
        gen = GenerateConfig(model=self.policy, engine=cfg.engine, template=cfg.template, chat=cfg.chat,
                             system=cfg.system, batch_size=cfg.gen_batch_size, threads=cfg.train.threads,
                             chat_template=cfg.train.chat_template,
                             sampling=SamplingConfig(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                                                     max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + self.r))
        out = self.dir / "rollouts"
        generate(gen, str(prompts), str(out), progress=cfg.progress, executor=cfg.executor)
        return out

    def label(self, rollouts: Path) -> Path:
        from pipelines.stages.label import LabelConfig, label

        out = self.dir / "labeled"
        label(str(rollouts), str(out), LabelConfig(rewards=list(self.cfg.rewards), weights=list(self.cfg.weights),
                                                   threads=self.cfg.train.threads),
              progress=self.cfg.progress, out=sys.stderr, executor=self.cfg.executor)
        return out

    def dedup(self, labeled: Path) -> Path:
        from pipelines.hygiene.dedup import DedupConfig, dedup

        out = self.dir / "deduped"
        r = dedup(str(labeled), str(out), DedupConfig(field=self.cfg.dedup_field, threshold=self.cfg.dedup_threshold),
                  index=str(self.root / INDEX), progress=self.cfg.progress, executor=self.cfg.executor, log=_log)
        self.figures["removed_by_earlier_rounds"] = r.removed_by_index
        return out

    def decontaminate(self, cleaned: Path) -> Path:
        from pipelines.hygiene.decontaminate import decontaminate

        out = self.dir / "decontaminated"
        s = decontaminate(str(cleaned), str(out), list(self.cfg.decontaminate_against),
                          ngram=self.cfg.decontaminate_ngram, progress=self.cfg.progress, executor=self.cfg.executor)
        self.figures["contaminated"] = s["removed"]
        return out

    def train(self, data: Path | None, start: str, reference: str | None) -> tuple[str, bool]:
        """Train the round's model (a run in DIR/round-NNN/train, its model in train/model), resuming from its
        newest checkpoint; returns (the round's model, whether it trained). A round with no training rows keeps the
        model it started from."""
        out = self.dir / "train"
        if data is None or not _rows(data):
            _log(f"round {self.r}: no training rows; the round's model is the one it started from ({start})")
            return start, False
        done = out / "train_result.json"  # written after the final weights
        if not done.exists():
            from trainers.core import checkpoint as ckpt
            from trainers.offline.loop import train

            train(dataclasses.replace(self.cfg.train, algorithm=self.recipe.algorithm, model=start, data=str(data),
                                      output=str(out), resume=bool(ckpt.list_checkpoints(out)),
                                      ref_model=None if reference in (None, start) else reference))
        result = json.loads(done.read_text())
        self.figures.update({"steps": result["steps"], "train_loss": result["train"].get("loss")})
        return str(out / "model"), True


# ------------------------------------------------------------------------------------------------ eval
def eval_sets(cfg: RoundsConfig) -> dict[str, str]:
    """--eval-prompts by name (the file's stem; a repeated stem gets the set's position appended)."""
    sets: dict[str, str] = {}
    for path in cfg.eval_prompts:
        name = Path(path.rstrip("/")).stem
        sets[name if name not in sets else f"{name}{len(sets)}"] = path
    return sets


def evaluate(cfg: RoundsConfig, model: str, out: Path) -> dict | None:
    """Greedy accuracy of `model` on every --eval-prompts set: `prefsmith eval` (pipelines/reports/evaluate.py,
    one completion per prompt at temperature 0, the run's rewards; correct = the `math` reward when given, else
    the first, >= 1) into `out/<set>/`. Returns {accuracy (the first set's), accuracy_<set> each, ...} and the
    sets' directories; None without --eval-prompts. A finished set is not sampled again."""
    if not cfg.eval_prompts:
        return None
    from pipelines.engines.base import SamplingConfig
    from pipelines.reports.evaluate import EvalConfig, evaluate as run_eval
    from pipelines.stages.generate import GenerateConfig
    from pipelines.stages.label import LabelConfig

    gen = GenerateConfig(model=model, engine="hf", template=cfg.template, chat=cfg.chat, system=cfg.system,
                         batch_size=cfg.eval_batch_size, threads=cfg.train.threads, chat_template=cfg.train.chat_template,
                         prompt_column=cfg.prompt_column,
                         sampling=SamplingConfig(n=1, temperature=0.0, max_new_tokens=cfg.eval_max_new_tokens or
                                                 cfg.max_new_tokens, seed=0))
    ecfg = EvalConfig(generate=gen, label=LabelConfig(rewards=list(cfg.rewards), weights=list(cfg.weights),
                                                      threads=cfg.train.threads, gold_column=cfg.gold_column))
    figures: dict[str, Any] = {}
    dirs = {}
    for k, (name, path) in enumerate(eval_sets(cfg).items()):
        dirs[name] = out / name
        overall = run_eval(ecfg, path, str(out / name), limit=cfg.eval_limit, progress=cfg.progress,
                           executor=cfg.executor, out=sys.stderr).summary["overall"]
        rec = {"accuracy": overall["accuracy"], "eval_mean_reward": overall["reward"]["mean"],
               "eval_null": overall["null"]["completions"]}
        figures.update({**(rec if k == 0 else {}), **{f"{key}_{name}": v for key, v in rec.items()}})
    return {"summary": figures, "dirs": dirs}


# ------------------------------------------------------------------------------------------------ the run
def _check_settings(cfg: RoundsConfig) -> None:
    """Refuse a rerun whose settings differ from the run in DIR (naming what changed), unless --overwrite,
    which starts over; refuse a non-empty DIR that is not a rounds run."""
    root = Path(cfg.output)
    path = root / SETTINGS
    identity = json.loads(json.dumps(cfg.identity(), default=str))
    if path.exists():
        saved = json.loads(path.read_text())
        old = saved.get("identity", {})
        if old != identity and not cfg.overwrite:
            changed = _describe(old, identity)
            raise UserError(f"{root} holds a {saved.get('recipe')} run made with other settings ({changed}); rerun "
                            "with the original ones to continue it, pass --overwrite to start over, or use another "
                            "--output")
        if old == identity:
            return
    elif root.exists() and any(root.iterdir()) and not cfg.overwrite:
        raise UserError(f"{root} exists and is not a rounds run directory (no {SETTINGS}); use another --output "
                        "or --overwrite")
    if root.exists() and cfg.overwrite:
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"recipe": cfg.recipe, "identity": identity})


def _describe(old: dict, new: dict, prefix: str = "") -> str:
    changes = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _describe(a, b, f"{prefix}{k}.")
            changes += [inner] if inner else []
        elif a != b:
            changes.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return "; ".join(changes)


def run_rounds(cfg: RoundsConfig) -> list[dict]:
    """Run (or continue) rounds 0..R-1 in cfg.output; returns every round's record (also DIR/rounds.jsonl),
    prints the rounds table and draws DIR/rounds.png."""
    from pipelines.core.threads import apply_threads

    _check_settings(cfg)
    apply_threads(cfg.train.threads)  # sampling, labels, training and evaluation share this process
    root = Path(cfg.output)
    if "trackio" in cfg.train.report_to:  # one trackio store for every round's run (docs/tracking.md)
        os.environ.setdefault("TRACKIO_DIR", str((root / "trackio").resolve()))
    recipe = RECIPES[cfg.recipe]()
    # `prompt` and `answer` from --prompt-column / --gold-column: every stage of a round reads those
    prompts = standard_rows(ds.load_rows(cfg.prompts, required=[cfg.prompt_column]), cfg.prompt_column,
                            cfg.gold_column, cfg.prompts)
    initial = None
    if cfg.eval_prompts:
        _log("evaluating the initial model")
        initial = evaluate(cfg, cfg.model, root / INITIAL_EVAL)["summary"]
    records, policy = [], cfg.model
    for r in range(cfg.rounds):
        done = root / round_name(r) / "round.json"
        if done.exists():
            record = json.loads(done.read_text())
            _log(f"round {r}: already done")
        else:
            record = RoundRun(cfg, recipe, r, policy, prompts).run()
        records.append(record)
        policy = record["model"]
        _link(root / "model", Path(policy))
        atomic_write_text(root / ROUNDS_LOG, "".join(json.dumps(row_of(rec)) + "\n" for rec in records))
    print(format_table(records, recipe, initial), file=sys.stdout)
    plot_rounds(records, recipe, initial, root / "rounds.png")
    if cfg.train.report_to:  # each round's training logged itself; rounds.jsonl's figures are one more run
        from pipelines.core.tracking import Trackers

        trackers = Trackers(cfg.train.report_to, root, {"recipe": cfg.recipe, **cfg.identity()})
        for rec in records:
            trackers.log({"split": "rounds", "step": rec["round"], **row_of(rec)})
        trackers.finish()
    return records


def _link(link: Path, model: Path) -> None:
    """DIR/model: a link to the newest round's model (relative, so the run directory can move), replaced atomically."""
    tmp = link.with_name(".model.link.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(model.resolve(), link.parent.resolve()), target_is_directory=True)
    os.replace(tmp, link)


def row_of(record: dict) -> dict:
    """One line of rounds.jsonl: the round, its model and its figures."""
    return {"round": record["round"], "model": record["model"], "reference": record["reference"], **record["figures"]}


def format_table(records: list[dict], recipe: Recipe, initial: dict | None) -> str:
    cols = [("round", "round"), ("prompts", "prompts"), ("rollouts", "rollouts"), ("mean_reward", "mean reward"),
            ("kept", "kept"), (recipe.built, recipe.built)]
    if recipe.name == "rft":
        cols.append(("sft_rows", "sft rows"))
    cols += [("steps", "steps"), ("train_loss", "train loss"), ("accuracy", "held-out acc")]
    rows = [{"round": "init", "accuracy": initial.get("accuracy")}] if initial else []
    rows += [{"round": str(rec["round"]), **rec["figures"]} for rec in records]

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    widths = [max(len(title), *(len(cell(r.get(k))) for r in rows)) for k, title in cols]
    lines = ["  ".join(f"{title:>{w}}" for (_, title), w in zip(cols, widths))]
    lines += ["  ".join(f"{cell(r.get(k)):>{w}}" for (k, _), w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)


def plot_rounds(records: list[dict], recipe: Recipe, initial: dict | None, path: Path) -> Path:
    """Held-out accuracy, training-set size and mean sampled reward per round (the initial model's accuracy
    at `init`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [rec["round"] for rec in records]
    panels = [("held-out accuracy", "accuracy"), (recipe.built, recipe.built), ("mean reward (samples)", "mean_reward")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, (title, key) in zip(axes, panels):
        pts = [(x, rec["figures"].get(key)) for x, rec in zip(xs, records) if rec["figures"].get(key) is not None]
        if key == "accuracy" and initial and initial.get("accuracy") is not None:
            pts = [(-1, initial["accuracy"]), *pts]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", markersize=4)
        ax.set_xticks([-1, *xs] if key == "accuracy" and initial else xs)
        ax.set_xticklabels(["init", *map(str, xs)] if key == "accuracy" and initial else list(map(str, xs)))
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{recipe.name}: {len(records)} rounds")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path
