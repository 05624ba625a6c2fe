"""`prefsmith kto`: labels, null rows, class-balance weights (KTO Eq. 8) on real Parquet/JSONL inputs."""
import json

import pytest

from pipelines.core import dataset as ds
from pipelines.cli import main
from pipelines.errors import UserError
from pipelines.builders.kto import KTOConfig, build_kto, kto_weights


def row(i, reward, reason="ok", prompt=None, judge=None):
    pid = f"p{i // 4}"
    r = {"id": f"{pid}-{i % 4}", "prompt_id": pid, "sample_idx": i % 4, "prompt": prompt or f"Q{pid}",
         "answer": "4", "completion": f"completion {i}", "rewards": {"math": reward}, "reward": reward,
         "reward_info": {"math": reason}}
    if judge is not None:
        r["judge_ok"] = judge
    return r


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def in_bound(w):
    ratio = w["desirable_weight"] * w["n_desirable"] / (w["undesirable_weight"] * w["n_undesirable"])
    return 1.0 <= ratio <= 4 / 3


def test_one_to_nine_imbalance_gives_exact_weights(tmp_path, capsys):
    rows = [row(i, 1.0 if i % 10 == 0 else 0.0) for i in range(100)]  # 10 desirable, 90 undesirable
    out = tmp_path / "kto"
    assert main(["kto", "--input", write_jsonl(tmp_path / "in.jsonl", rows), "--output", str(out)]) == 0
    kto = ds.read_manifest(out)["kto"]
    assert kto == {"desirable_weight": 9.0, "undesirable_weight": 1.0, "n_desirable": 10, "n_undesirable": 90}
    assert in_bound(kto)
    printed = capsys.readouterr().out
    assert "desirable: 10 (10.0%)" in printed and "desirable_weight=9" in printed
    got = ds.load_rows(out)
    assert len(got) == 100 and sum(r["label"] for r in got) == 10
    assert got[0] == {"prompt": "Qp0", "completion": "completion 0", "label": True, "id": "p0-0",
                      "prompt_id": "p0", "reward": 1.0, "answer": "4"}


def test_weight_rule_majority_and_balanced():
    w = kto_weights(90, 10)  # desirable majority: the upper end, closest to 1
    assert w.desirable_weight == pytest.approx(4 / 3 * 10 / 90) and w.undesirable_weight == 1.0
    assert in_bound(vars(w))
    assert kto_weights(50, 50).desirable_weight == 1.0
    assert kto_weights(55, 50).desirable_weight == 1.0  # 1.1 already in [1, 4/3]: keep the default
    assert kto_weights(3, 7).desirable_weight == pytest.approx(7 / 3)
    assert kto_weights(0, 5).warning and kto_weights(0, 5).desirable_weight == 1.0
    for n_d in range(1, 60):  # exactly inside the bound, float rounding included
        for n_u in range(1, 60):
            assert in_bound(vars(kto_weights(n_d, n_u))), (n_d, n_u)
    assert kto_weights(7, 61).desirable_weight == pytest.approx(61 / 7, rel=1e-15)


def test_threshold_and_null_rows(tmp_path):
    rewards = [0.2, 0.5, 0.7, None, 1.0, None, 0.49, 0.0]
    rows = [row(i, r, "timeout" if r is None else "ok") for i, r in enumerate(rewards)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    fields = build_kto(src, str(tmp_path / "a"), progress=False)
    got = ds.load_rows(tmp_path / "a")
    assert [r["id"] for r in got] == ["p0-0", "p0-1", "p0-2", "p1-0", "p1-2", "p1-3"]
    assert [r["label"] for r in got] == [False, True, True, True, False, False]
    assert fields["summary"]["null_rows_skipped"] == 2
    assert fields["summary"]["null_reasons"] == {"math: timeout": 2}
    assert sorted(r["id"] for r in ds.load_rows(tmp_path / "a" / "skipped")) == ["p0-3", "p1-1"]

    build_kto(src, str(tmp_path / "b"), KTOConfig(threshold=0.7), progress=False)
    assert [r["label"] for r in ds.load_rows(tmp_path / "b")] == [False, False, True, True, False, False]
    assert ds.read_manifest(tmp_path / "b")["kto"]["n_desirable"] == 2


def test_label_column_boolean_judge_and_chat_format(tmp_path):
    from trl.data_utils import is_conversational

    msgs = [{"role": "user", "content": "Say hi"}]
    rows = [row(0, 0.0, prompt=msgs, judge=True), row(1, 1.0, prompt=msgs, judge=False),
            row(2, 1.0, prompt=msgs, judge=None)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    fields = build_kto(src, str(tmp_path / "o"), KTOConfig(label_column="judge_ok"), progress=False)
    got = ds.load_rows(tmp_path / "o")
    assert [r["label"] for r in got] == [True, False]  # the judge's column, not the reward
    assert got[0]["completion"] == [{"role": "assistant", "content": "completion 0"}]
    assert is_conversational({k: got[0][k] for k in ("prompt", "completion")})
    assert fields["summary"]["null_reasons"] == {"judge_ok is null": 1}


def test_rerun_noop_and_missing_column(tmp_path, capsys):
    rows = [row(i, float(i % 2)) for i in range(6)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "kto"
    assert main(["kto", "--input", src, "--output", str(out)]) == 0
    manifest = (out / "manifest.json").read_text()
    assert main(["kto", "--input", src, "--output", str(out)]) == 0
    assert (out / "manifest.json").read_text() == manifest
    assert "already complete" in capsys.readouterr().err

    bad = write_jsonl(tmp_path / "bad.jsonl", [{k: v for k, v in r.items() if k != "reward"} for r in rows])
    assert main(["kto", "--input", bad, "--output", str(tmp_path / "x")]) == 2
    assert "missing column(s) 'reward'" in capsys.readouterr().err
    with pytest.raises(UserError, match="'judge'"):
        build_kto(src, str(tmp_path / "y"), KTOConfig(label_column="judge"))


def test_trl_kto_trainer_accepts_rows_and_weights(tmp_path, tiny_model, caplog):
    """TRL's KTOTrainer takes our rows, and our 1:9 weights keep its Eq. 8 imbalance warning quiet."""
    import logging

    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig as TRLKTOConfig, KTOTrainer

    rows = [row(i, 1.0 if i % 10 == 0 else 0.0) for i in range(40)]  # 4 desirable, 36 undesirable
    out = tmp_path / "kto"
    kto = build_kto(write_jsonl(tmp_path / "in.jsonl", rows), str(out), progress=False)["kto"]
    assert (kto["desirable_weight"], kto["undesirable_weight"]) == (9.0, 1.0)
    data = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)

    def warnings_for(desirable, undesirable):
        caplog.clear()
        args = TRLKTOConfig(output_dir=str(tmp_path / "t"), per_device_train_batch_size=4, report_to=[],
                            use_cpu=True, desirable_weight=desirable, undesirable_weight=undesirable)
        with caplog.at_level(logging.WARNING):
            KTOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        return [r.getMessage() for r in caplog.records if "ideal range" in r.getMessage()]

    assert warnings_for(1.0, 1.0)  # control: the unweighted imbalance is flagged
    assert warnings_for(kto["desirable_weight"], kto["undesirable_weight"]) == []
