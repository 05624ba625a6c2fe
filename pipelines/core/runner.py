"""The stage runner: shards, progress, atomic shard writes, resume, fingerprints, manifest.

A stage is a function from the rows of one shard to output rows. The runner owns everything else:

- the input is read and validated before any work starts;
- rows are cut into shards of `shard_size` input rows (never splitting a `group_by` group);
- each finished shard is written atomically (temp file + rename), then recorded in `manifest.json`;
- a rerun skips shards already on disk when the fingerprint (stage + config + input content) matches, so a
  run killed with SIGKILL at any moment continues where it stopped and ends with exactly the rows an
  uninterrupted run gives; a finished stage is a no-op;
- a changed config or input refuses to mix with old shards unless `overwrite=True`;
- a failure of the infrastructure under a stage (`rewards.pool.PoolError`: a worker pool that died or could not
  start) stops the run with one line; the shard it hit is never written, so a rerun redoes it.

A stage may also return side rows (e.g. the duplicates dedup removed) as `{"rows": [...], "removed": [...]}`;
those go to `OUTPUT/removed/data/` with the same shard numbering, written before the main shard. A shard is
complete when its marker `OUTPUT/.shards/part-NNNNN.done` exists; the marker is made after the shard's files
are renamed into place (a shard with no output rows writes no Parquet file, only the marker).
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core import card
from pipelines.core import dataset as ds
from pipelines.core.files import ensure_writable_dir, fingerprint_json
from pipelines.core.stage import Shard, ShardTask  # Shard: the stages import it from here too
from pipelines.errors import UserError
from pipelines.executors import make_executor
from rewards.pool import PoolError

FORMAT_VERSION = 1
MARKERS = ".shards"


Process = Callable[[list[dict], Shard], "list[dict] | dict[str, list[dict]]"]


@dataclass
class StageResult:
    output: Path
    manifest: dict
    skipped: bool = False  # True when everything was already done
    shards_run: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def config_fingerprint(stage: str, config: dict, input_fp: str, shard_size: int, group_by: str | None) -> str:
    return fingerprint_json({"stage": stage, "config": config, "input": input_fp, "shard_size": shard_size,
                             "group_by": group_by, "format": FORMAT_VERSION})


def plan_shards(table: pa.Table, shard_size: int, group_by: str | None) -> list[tuple[int, int]]:
    """[start, end) row ranges. With `group_by`, a group's rows must be contiguous and never split."""
    n = table.num_rows
    if not group_by:
        return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
    keys = table.column(group_by).to_pylist()
    seen, bounds, start = set(), [], 0
    for i in range(n):
        if i > 0 and keys[i] != keys[i - 1]:
            if keys[i] in seen:
                raise UserError(f"rows of {group_by}={keys[i]!r} are not contiguous (row {i}); sort the input by {group_by}")
            seen.add(keys[i - 1])
            if i - start >= shard_size:
                bounds.append((start, i))
                start = i
    bounds.append((start, n))
    return bounds


def _describe_change(old: dict, new: dict, extra_keys: Sequence[str]) -> str:
    changes = []
    if old.get("input", {}).get("fingerprint") != new["input"]["fingerprint"]:
        changes.append("input content")
    oc, nc = old.get("config", {}), new["config"]
    for k in sorted(set(oc) | set(nc)):
        if oc.get(k) != nc.get(k):
            changes.append(f"{k}: {oc.get(k)!r} -> {nc.get(k)!r}")
    for k in extra_keys:
        if old.get(k) != new.get(k):
            changes.append(f"{k}: {old.get(k)!r} -> {new.get(k)!r}")
    return "; ".join(changes) or "format version"


def open_output(out: Path, manifest: dict, overwrite: bool, extra_keys: Sequence[str] = ()) -> dict | None:
    """Make `out` ready for a run described by `manifest` (with its `fingerprint`). Returns the old manifest
    when it has the same fingerprint (the caller resumes or finds the work done); otherwise starts from an
    empty directory. Refuses, naming what changed, to replace output of another config or input unless
    `overwrite`, and refuses a non-empty folder that is not a prefsmith dataset, or one it cannot write to."""
    ensure_writable_dir(out)
    old = ds.read_manifest(out)
    if old is not None and old.get("fingerprint") != manifest["fingerprint"]:
        if not overwrite:
            raise UserError(f"{out} already holds {old.get('stage')} output made with a different config or input "
                            f"({_describe_change(old, manifest, extra_keys)}). Use --overwrite to replace it, "
                            "or another --output.")
        old = None
    users_readme = None
    # a folder holding only the user's own README.md is an empty output folder
    if old is None and out.exists() and any(p.name != card.README or card.is_ours(p) for p in out.iterdir()):
        if not overwrite and not (out / ds.MANIFEST).exists():
            raise UserError(f"{out} exists and is not a prefsmith dataset directory; pass --overwrite or another --output")
        readme = out / card.README
        users_readme = readme.read_bytes() if readme.is_file() and not card.is_ours(readme) else None
        shutil.rmtree(out)
    ensure_writable_dir(out)
    if users_readme is not None:  # a README.md the user wrote outlives the output it described (docs/hub.md)
        ds.atomic_write_bytes(out / card.README, users_readme)
    for stale in out.rglob(".*.tmp"):  # left by a kill mid-write
        stale.unlink()
    return old


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for pkg in ("prefsmith", "torch", "transformers", "vllm", "datasets", "pyarrow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def run_stage(
    stage: str,
    process: Process,
    config: dict,
    input: str,
    output: str,
    *,
    required: Sequence[str] = (),
    present: Sequence[str] = (),
    shard_size: int = 256,
    group_by: str | None = None,
    overwrite: bool = False,
    limit: int | None = None,
    progress: bool = True,
    executor: Any = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> StageResult:
    """Run `process` over `input` shard by shard into the dataset directory `output` (see module docstring).

    `executor` (pipelines/executors: an Executor, an ExecutorConfig, or "local"/"ray") decides where shards run;
    everything written, and when, is decided here, the same for every executor."""
    t0 = time.time()
    out = Path(output)
    table = ds.load_table(input, required, present)
    if limit is not None:
        table = table.slice(0, limit)
        config = {**config, "limit": limit}
    input_fp = ds.fingerprint(input)
    fp = config_fingerprint(stage, config, input_fp, shard_size, group_by)
    bounds = plan_shards(table, shard_size, group_by)
    manifest = {
        "stage": stage,
        "fingerprint": fp,
        "config": config,
        "input": {"source": str(input), "fingerprint": input_fp, "rows": table.num_rows},
        "shard_size": shard_size,
        "group_by": group_by,
        "num_shards": len(bounds),
        "completed_shards": [],
        "shards": {},
        "rows_in": table.num_rows,
        "rows_out": None,
        "complete": False,
        "versions": versions(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    old = open_output(out, manifest, overwrite, extra_keys=("shard_size", "group_by"))

    done: set[int] = set()
    if old is not None:
        manifest.update({k: old[k] for k in ("shards", "started_at") if k in old})
        # the marker is the truth, even if the kill came before the manifest recorded the shard
        done = {int(p.name.split("-")[1].split(".")[0]) for p in (out / MARKERS).glob("part-*.done")}
        done &= set(range(len(bounds)))
        if len(done) == len(bounds) and old.get("complete"):
            log(f"[{stage}] {out} is already complete ({old.get('rows_out')} rows); nothing to do")
            return StageResult(out, old, skipped=True, seconds=time.time() - t0)
        if done:
            log(f"[{stage}] resuming {out}: {len(done)}/{len(bounds)} shards already done")
    manifest["completed_shards"] = sorted(done)
    manifest["stats"] = sum_stats(manifest["shards"].values())
    ds.write_manifest(out, manifest)

    bar = _progress(stage, table.num_rows, sum(e - s for i, (s, e) in enumerate(bounds) if i in done), progress)
    own_executor = executor is None or not hasattr(executor, "map")
    runner = make_executor(executor) if own_executor else executor
    tasks = [ShardTask(index=i, start=s, table=table.slice(s, e - s)) for i, (s, e) in enumerate(bounds) if i not in done]
    shards_run, run_stats = 0, []
    try:
        for task, result, seconds in runner.map(process, tasks, bar.update):
            i, (start, end) = task.index, bounds[task.index]
            main_rows, side = (result.pop("rows"), result) if isinstance(result, dict) else (result, {})
            stats = side.pop("stats", None) or {}
            name = f"part-{i:05d}.parquet"
            for side_name, side_rows in side.items():
                if len(side_rows):
                    ds.write_parquet_atomic(_as_table(side_rows), out / side_name / ds.DATA / name)
            if len(main_rows):
                ds.write_parquet_atomic(_as_table(main_rows), out / ds.DATA / name)
            ds.atomic_write_bytes(out / MARKERS / f"part-{i:05d}.done", b"")
            shards_run += 1
            run_stats.append({"stats": stats})
            manifest["shards"][str(i)] = {"rows_in": end - start, "rows_out": len(main_rows),
                                          "seconds": round(seconds, 3),
                                          **{f"{k}_rows": len(v) for k, v in side.items()},
                                          **({"stats": stats} if stats else {})}
            done.add(i)
            manifest["completed_shards"] = sorted(done)
            manifest["stats"] = sum_stats(manifest["shards"].values())
            ds.write_manifest(out, manifest)
            check = getattr(process, "check", None)
            if check is not None:  # with this run's counts: a stage may stop the run (label --max-errors)
                check(sum_stats(run_stats))
    except PoolError as e:  # infrastructure, not data: the shard it hit is not written, so a rerun redoes it
        raise UserError(f"stopped: {e}. {len(done)} of {len(bounds)} shards are finished and kept; rerun the same "
                        "command to continue") from None
    finally:
        bar.close()
        if own_executor:
            runner.close()

    for d in [out, *(p for p in out.iterdir() if p.is_dir() and (p / ds.DATA).is_dir())]:
        ds.unify_shards(d)
    # Counts come from the data, not from the manifest's record of each shard: a kill between a shard's
    # marker and the manifest update leaves a done shard the manifest never heard of.
    on_disk = [_rows_on_disk(out / ds.DATA, i) for i in range(len(bounds))]
    for i, (start, end) in enumerate(bounds):
        if str(i) not in manifest["shards"]:
            manifest["shards"][str(i)] = {"rows_in": end - start, "rows_out": on_disk[i], "seconds": None,
                                          "recovered_from_marker": True}
    manifest["rows_out"] = sum(on_disk)
    manifest["complete"] = True
    manifest["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    manifest["seconds"] = round(sum(s["seconds"] or 0.0 for s in manifest["shards"].values()), 3)
    manifest["executor"] = runner.name
    ds.write_manifest(out, manifest)
    return StageResult(out, manifest, shards_run=shards_run, seconds=time.time() - t0,
                       extra={"run_stats": sum_stats(run_stats)})


def execute(stage: Any, input: str, output: str, *, executor: Any = None, overwrite: bool = False,
        limit: int | None = None, shard_size: int | None = None, progress: bool = True) -> StageResult:
    """Run a Stage object (pipelines/core/stage.py): its name, config, columns, shard size and grouping."""
    return run_stage(stage.name, stage, stage.config(), input, output, required=stage.required(),
                     present=stage.present(), shard_size=shard_size or stage.shard_size, group_by=stage.group_by,
                     overwrite=overwrite, limit=limit, progress=progress, executor=executor)


def sum_stats(shards: Any) -> dict[str, float]:
    """Per-shard `stats` summed over shards (a stage's counters: tokens, seconds, rows that errored)."""
    total: dict[str, float] = {}
    for entry in shards:
        for k, v in (entry.get("stats") or {}).items():
            total[k] = total.get(k, 0) + v
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in total.items()}


def _as_table(rows: Any) -> pa.Table:
    return rows if isinstance(rows, pa.Table) else ds.rows_to_table(rows)


def _rows_on_disk(data_dir: Path, index: int) -> int:
    """Rows in shard `index`'s Parquet file (from its footer); 0 when the shard wrote no file."""
    f = data_dir / f"part-{index:05d}.parquet"
    return pq.ParquetFile(f).metadata.num_rows if f.exists() else 0


def written(result: StageResult, count: int, what: str) -> str:
    """A command's last line: what it wrote, or that the output was already complete and left as it was."""
    if result.skipped:
        return f"skipped (already complete): {result.output} holds {count} {what}"
    return f"wrote {count} {what} to {result.output}"


def update_manifest(output: str | Path, **fields: Any) -> dict:
    """Add stage-specific results (a summary, KTO weights...) to a finished dataset's manifest."""
    manifest = ds.read_manifest(output) or {}
    manifest.update(fields)
    ds.write_manifest(output, manifest)
    return manifest


def _progress(stage: str, total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=stage, unit="row", disable=not enabled, dynamic_ncols=True)
