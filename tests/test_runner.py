"""Stage runner: resume, no-op reruns, fingerprints, side datasets, groups."""
import json

import pytest

from pipelines.core import dataset as ds
from pipelines.errors import UserError
from pipelines.core.runner import plan_shards, run_stage


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"p{i}", "g": i // 3}) + "\n" for i in range(10)))
    return str(path)


def double(rows, shard):
    return [dict(r, y=r["prompt"] * 2) for r in rows]


def test_crash_midway_then_rerun_gives_exactly_the_uninterrupted_rows(tmp_path, src):
    calls = []

    def flaky(rows, shard):
        calls.append(shard.index)
        if shard.index == 2 and calls.count(2) == 1:
            raise RuntimeError("boom")
        return double(rows, shard)

    out = str(tmp_path / "out")
    with pytest.raises(RuntimeError):
        run_stage("t", flaky, {"a": 1}, src, out, shard_size=3, progress=False)
    assert ds.read_manifest(out)["completed_shards"] == [0, 1]
    result = run_stage("t", flaky, {"a": 1}, src, out, shard_size=3, progress=False)
    assert calls == [0, 1, 2, 2, 3]  # finished shards are not redone
    assert result.shards_run == 2
    clean = run_stage("t", double, {"a": 1}, src, str(tmp_path / "clean"), shard_size=3, progress=False)
    assert ds.load_rows(out) == ds.load_rows(clean.output)
    assert result.manifest["rows_out"] == 10 and result.manifest["complete"]


def test_finished_stage_is_a_noop(tmp_path, src, capsys):
    out = str(tmp_path / "out")
    run_stage("t", double, {}, src, out, shard_size=4, progress=False)

    def must_not_run(rows, shard):
        raise AssertionError("a finished stage ran again")

    result = run_stage("t", must_not_run, {}, src, out, shard_size=4, progress=False)
    assert result.skipped
    assert "already complete (10 rows); nothing to do" in capsys.readouterr().err


def test_changed_config_or_input_refuses_to_mix(tmp_path, src):
    out = str(tmp_path / "out")
    run_stage("t", double, {"temperature": 1.0}, src, out, shard_size=4, progress=False)
    with pytest.raises(UserError, match=r"different config or input \(temperature: 1\.0 -> 0\.5\).*--overwrite"):
        run_stage("t", double, {"temperature": 0.5}, src, out, shard_size=4, progress=False)
    with open(src, "a") as f:
        f.write(json.dumps({"id": "r10", "prompt": "p10", "g": 9}) + "\n")
    with pytest.raises(UserError, match="input content"):
        run_stage("t", double, {"temperature": 1.0}, src, out, shard_size=4, progress=False)
    result = run_stage("t", double, {"temperature": 0.5}, src, out, shard_size=4, overwrite=True, progress=False)
    assert result.manifest["rows_out"] == 11 and len(ds.load_rows(out)) == 11


def test_refuses_a_foreign_non_empty_directory(tmp_path, src):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a prefsmith dataset directory"):
        run_stage("t", double, {}, src, str(out), progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_side_dataset_and_empty_shards(tmp_path, src):
    def split(rows, shard):
        return {"rows": [r for r in rows if r["g"] != 1], "removed": [dict(r, why="g1") for r in rows if r["g"] == 1]}

    out = str(tmp_path / "out")
    result = run_stage("t", split, {}, src, out, shard_size=3, progress=False)
    assert [r["id"] for r in ds.load_rows(out)] == ["r0", "r1", "r2", "r6", "r7", "r8", "r9"]
    assert [r["id"] for r in ds.load_rows(tmp_path / "out" / "removed")] == ["r3", "r4", "r5"]
    assert result.manifest["shards"]["1"] == {"rows_in": 3, "rows_out": 0, "seconds": result.manifest["shards"]["1"]["seconds"], "removed_rows": 3}


def test_group_by_never_splits_a_group(tmp_path, src):
    table = ds.load_table(src)
    assert plan_shards(table, 2, "g") == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert plan_shards(table, 4, "g") == [(0, 6), (6, 10)]
    assert plan_shards(table, 4, None) == [(0, 4), (4, 8), (8, 10)]


class Killed(BaseException):
    """Stands for SIGKILL at one exact point: nothing after it runs, no handler sees it."""


def test_kill_between_marker_and_manifest_update_counts_rows_from_the_data(tmp_path, src, monkeypatch):
    out = str(tmp_path / "out")
    real_write = ds.write_manifest

    def dies_after_shard_1_marker(directory, manifest):
        if 1 in manifest.get("completed_shards", []):  # shard 1's marker is on disk, its manifest entry is not
            raise Killed()
        real_write(directory, manifest)

    monkeypatch.setattr(ds, "write_manifest", dies_after_shard_1_marker)
    with pytest.raises(Killed):
        run_stage("t", double, {}, src, out, shard_size=3, progress=False)
    monkeypatch.setattr(ds, "write_manifest", real_write)
    assert (tmp_path / "out" / ".shards" / "part-00001.done").exists()
    assert "1" not in ds.read_manifest(out)["shards"]

    result = run_stage("t", double, {}, src, out, shard_size=3, progress=False)
    assert result.shards_run == 2  # shards 2 and 3; shard 1 is trusted from its marker
    assert result.manifest["rows_out"] == len(ds.load_rows(out)) == 10
    assert result.manifest["shards"]["1"]["rows_out"] == 3
    assert ds.read_manifest(out)["rows_out"] == 10
