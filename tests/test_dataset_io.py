"""Dataset format and input validation: one clear error naming file, line/row and column, before any work."""
import json
import subprocess
import sys

import datasets
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.core import dataset as ds
from pipelines.cli import main as cli
from pipelines.errors import UserError
from pipelines.core.runner import run_stage


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_missing_required_column_names_file_and_column(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"question": "1+1?"}])
    with pytest.raises(UserError, match=r"p\.jsonl: missing required column\(s\) 'prompt'; found question"):
        ds.load_table(src, required=["prompt"])


def test_malformed_jsonl_line_names_line_and_column(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",,}\n')
    with pytest.raises(UserError, match=r"p\.jsonl:3: malformed JSON at column 16: Expecting property name"):
        ds.load_table(src)


def test_non_utf8_byte_names_line_and_byte(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"p\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 16\)"):
        ds.load_table(src)


def test_empty_inputs(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="empty input"):
        ds.load_table(tmp_path / "empty.jsonl")
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(UserError, match=r"empty\.parquet: empty input \(0 rows\)"):
        ds.load_table(tmp_path / "empty.parquet")


def test_null_in_required_column_names_row(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": None}])
    with pytest.raises(UserError, match=r"row 1: column 'prompt' is null"):
        ds.load_table(src, required=["prompt"])


def test_non_object_line_and_missing_path(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "a"}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"p\.jsonl:2: each line must be a JSON object"):
        ds.load_table(src)
    with pytest.raises(UserError, match="no such file"):
        ds.load_table(str(tmp_path / "nope.jsonl"))


def test_bad_input_fails_before_any_work_through_the_cli(tmp_path, capsys, tiny_model):
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "a"}\n{"prompt": \n')
    out = tmp_path / "out"
    status = cli(["generate", "--model", str(tiny_model), "--input", str(src), "--output", str(out)])
    assert status == 2
    err = capsys.readouterr().err
    assert "p.jsonl:2: malformed JSON" in err and "Traceback" not in err
    assert not (out / "data").exists()


def test_output_loads_with_datasets_polars_and_our_reader(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}", "n": i} for i in range(7)])

    def process(rows, shard):
        # shard 0 has only null scores: its column type is null until the runner unifies the schemas
        return [dict(r, score=None if shard.index == 0 else float(r["n"]), info={"k": "v"}) for r in rows]

    run_stage("t", process, {}, str(src), str(tmp_path / "out"), shard_size=3, progress=False)
    hf = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out" / "data"), split="train")
    assert hf.num_rows == 7 and hf.features["score"].dtype == "float64"
    assert pl.scan_parquet(str(tmp_path / "out" / "data" / "*.parquet")).collect()["score"].to_list() == [None] * 3 + [3.0, 4.0, 5.0, 6.0]
    assert [r["n"] for r in ds.load_rows(tmp_path / "out")] == list(range(7))


def test_export_writes_every_row(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "x": [1, 2]}, {"prompt": "b", "x": [3]}])
    out = tmp_path / "o.jsonl"
    assert cli(["export", str(src), str(out)]) == 0
    assert [json.loads(l) for l in out.read_text().splitlines()] == [{"prompt": "a", "x": [1, 2]}, {"prompt": "b", "x": [3]}]


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True)
    assert "generate" in out.stdout and "decontaminate" in out.stdout


def test_mixed_string_and_message_prompts_are_one_column_of_messages(tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "b"}]
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "completion": "x"},
                                             {"prompt": msgs, "completion": [{"role": "assistant", "content": "y"}]}])
    rows = ds.load_table(src, required=["prompt"]).to_pylist()
    assert rows[0]["prompt"] == [{"role": "user", "content": "a"}]
    assert rows[0]["completion"] == [{"role": "assistant", "content": "x"}]
    assert rows[1]["prompt"] == msgs
    # the same across Parquet shards of one folder (e.g. two prompt files written as shards)
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([{"prompt": "a"}]), folder / "a.parquet")
    pq.write_table(pa.Table.from_pylist([{"prompt": msgs}]), folder / "b.parquet")
    assert [r["prompt"] for r in ds.load_table(str(folder)).to_pylist()] == [[{"role": "user", "content": "a"}], msgs]
    # a column that is plain strings everywhere is left alone; a real type clash names file, line and column
    assert ds.load_table(write_jsonl(tmp_path / "s.jsonl", [{"prompt": "a"}, {"prompt": "b"}])).column("prompt").to_pylist() == ["a", "b"]
    with pytest.raises(UserError, match=r"n\.jsonl:2: column 'prompt' is an object here but a string on line 1"):
        ds.load_table(write_jsonl(tmp_path / "n.jsonl", [{"prompt": "a"}, {"prompt": {"x": 1}}]))
