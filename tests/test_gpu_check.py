"""bench/gpu_check.py, the prepared GPU check, as its --cpu dry run: every row is there and every check passes, so
the one short GPU session it is written for spends its minutes on the GPU and not on a broken script."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _module():
    if "gpu_check" in sys.modules:
        return sys.modules["gpu_check"]
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _expected_rows() -> set[str]:
    """From the registries themselves, so a loss type added later without a row here fails this test. Read in a
    fresh process, as the script reads them: other tests register toy loss types in this one."""
    code = ("import json; from trainers.offline.algorithms import DPO_LOSSES; "
            "from trainers.online.rl_objectives import AGGREGATIONS, SURROGATES; "
            "print(json.dumps([list(DPO_LOSSES), list(AGGREGATIONS), list(SURROGATES)]))")
    DPO_LOSSES, AGGREGATIONS, SURROGATES = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                                                                     capture_output=True, text=True,
                                                                     check=True).stdout)
    names = {"sft", "kto", "rm", "prm/hard", "prm/soft", "ppo/value_loss", "ppo/gae"}
    names |= {f"dpo/{n}" for n in DPO_LOSSES}
    names |= {f"grpo/{a}/{s}/{lvl}" for a in AGGREGATIONS for s in SURROGATES for lvl in ("token", "sequence")}
    names |= {"grpo/dapo/clip/token/k1", "grpo/dapo/clip/token/k2"}
    names |= {"loop/sft", "loop/dpo", "fsdp2/1proc", "grpo/135m", "ppo/135m", "grpo/0.5b", "ppo/0.5b",
              "memory/full", "memory/lora", "memory/grad_ckpt", "grpo-async/135m"}
    return names


def _run(tmp_path: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--shapes", "tiny", "--json", str(out),
                           "--workdir", str(tmp_path / "work"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    rows = json.loads(out.read_text()) if out.is_file() else []
    return proc, rows


@pytest.mark.slow
def test_cpu_dry_run_has_every_row_and_passes(tmp_path):
    proc, rows = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == _expected_rows()
    assert all(r["status"] == "PASS" for r in rows), [(r["name"], r["note"]) for r in rows if r["status"] != "PASS"]
    # the printed table carries every row with its verdict, and the summary line
    table = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines() if len(line.split()) > 1}
    assert all(table.get(name) == "PASS" for name in by_name)
    assert f"{len(rows)} passed, 0 failed, 0 skipped" in proc.stdout
    # the values a reader relies on: measured differences, within the stated tolerances
    for name, r in by_name.items():
        v = r["values"]
        if r["section"] == "objectives":
            assert v["fp32_loss"] <= 1e-4 and v["bf16_loss"] <= 2e-2, name
            if name != "ppo/gae":
                assert v["grad_norm"] > 0 and v["fp32_grad"] <= 1e-4 and 0 < v["bf16_grad"] <= 1e-1, name
    assert by_name["fsdp2/1proc"]["values"]["generate"] == "same"
    assert by_name["fsdp2/1proc"]["values"]["backend"] == "gloo"
    for name in ("loop/sft", "loop/dpo", "grpo/135m", "ppo/135m"):
        assert by_name[name]["values"]["device"] == "cpu" and by_name[name]["values"]["steps"] >= 1, name
    assert by_name["memory/lora"]["values"]["trainable"] != "100.0%"
    assert by_name["grpo-async/135m"]["values"]["steps"] >= 1 and by_name["grpo-async/135m"]["values"]["sync_step_s"] > 0


def test_budget_skips_the_remaining_parts(tmp_path):
    proc, rows = _run(tmp_path, "--budget-s", "0", "--only", "online", "--only", "memory", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {r["name"] for r in rows} == {"grpo/135m", "ppo/135m", "grpo/0.5b", "ppo/0.5b", "memory/full",
                                         "memory/lora", "memory/grad_ckpt"}
    assert all(r["status"] == "SKIPPED" and "budget" in r["note"] for r in rows)
    assert "0 passed, 0 failed, 7 skipped" in proc.stdout


def test_a_failing_check_is_one_row_and_the_others_go_on(tmp_path):
    gpu_check = _module()
    import torch

    with pytest.raises(gpu_check.CheckError, match="config has no field no_such_field"):
        from trainers.offline.config import TrainConfig

        gpu_check.make_config(TrainConfig, algorithm="sft", model=".", data=".", output=".", no_such_field=1)
    plan = gpu_check.PLANS["tiny"]
    row = gpu_check.check_offline("sft", plan, torch.device("cpu"), "fp32", tmp_path / "missing_model", tmp_path)
    assert row.status == "FAIL" and row.note and "\n" not in row.note
    row = gpu_check.check_online("grpo", "135m", plan, torch.device("cpu"), "fp32", tmp_path / "missing_model",
                                 tmp_path)
    assert row.status == "FAIL" and row.note
