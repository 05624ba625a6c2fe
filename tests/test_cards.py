"""Cards and `--push-to-hub` (docs/hub.md).

Every dataset and model folder gets a README.md with the Hub's YAML metadata. The cards are read back here with
huggingface_hub's own card classes (`DatasetCard`, `ModelCard`: the parser the Hub's client uses), their numbers are
compared with the manifests and metrics.jsonl they were written from, and `datasets.load_dataset(DIR)` is pointed at
a dataset folder so the card's `configs` decide which files it reads, as they would on the Hub.

No hub is reachable here. `--push-to-hub` is checked before any work starts (the repo id's form, HF_HUB_OFFLINE,
a token) and fails with one line; the upload runs through huggingface_hub's real client against `FakeHub`, a
loopback server these tests start as HF_ENDPOINT, which records what arrives (docs/hub.md says what that does not
show). Every subprocess that may dial gets a loopback HF_ENDPOINT, so nothing could leave the machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard

from pipelines.cli import main
from pipelines.core import dataset as ds
from pipelines.core import hub
from pipelines.core.card import MARKER, is_ours
from pipelines.core.runner import update_manifest
from pipelines.errors import UserError
from trainers.core.card import DEFAULT_HUB_ID, RunInfo, final_model_dir, hub_model_id, model_card
from trainers.core.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).parent


def check_cells(text: str, heading: str, records: list[dict]) -> None:
    """The table under `heading` has one row per record, and each cell is that record's value (6 digits)."""
    lines = [x for x in section(text, heading).splitlines() if x.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    rows = table_rows(text, heading)
    assert [int(r[0]) for r in rows] == [r["step"] for r in records]
    for row, rec in zip(rows, records):
        for name, value in zip(header[1:], row[1:]):
            if rec.get(name) is None:
                assert value == "–", name
            else:
                assert float(value) == pytest.approx(rec[name], rel=1e-5), name


def section(text: str, heading: str) -> str:
    """The markdown under `## heading`, up to the next `## `."""
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first markdown table under `## heading`, as lists of cell strings."""
    lines = [x for x in section(text, heading).splitlines() if x.startswith("|")]
    return [[c.strip() for c in x.strip("|").split(" | ")] for x in lines[2:]]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_model) -> dict[str, Path]:
    """generate (the tiny model) -> label -> dedup -> pairs, each through the CLI."""
    tmp = tmp_path_factory.mktemp("chain")
    prompts = write_jsonl(tmp / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"Say a number {i}"} for i in range(3)])
    d = {name: tmp / name for name in ("rollouts", "labeled", "clean", "pairs")}
    assert main(["generate", "--model", str(tiny_model), "--input", str(prompts), "--output", str(d["rollouts"]),
                 "--n", "4", "--max-new-tokens", "8", "--temperature", "0.9", "--seed", "3"]) == 0
    assert main(["label", "--input", str(d["rollouts"]), "--output", str(d["labeled"]), "--no-progress",
                 "--reward", "plugin_rewards:length_reward", "--reward", f"{HERE / 'plugin_rewards.py'}:ids_length",
                 "--weight", "ids_length=0.5"]) == 0
    assert main(["dedup", "--input", str(d["labeled"]), "--output", str(d["clean"]), "--field", "completion",
                 "--no-progress"]) == 0
    assert main(["pairs", "--input", str(d["clean"]), "--output", str(d["pairs"])]) == 0
    return d


def test_every_stage_writes_a_card_the_hub_client_reads(chain, tiny_model):
    for name, folder in chain.items():
        manifest = ds.read_manifest(folder)
        card = DatasetCard.load(folder / "README.md", ignore_metadata_errors=False)
        meta = card.data.to_dict()
        rows = manifest["rows_out"]
        assert rows == len(ds.load_rows(folder)), name
        assert meta["size_categories"] == ["n<1K"] and meta["task_categories"] == ["text-generation"]
        assert meta["configs"][0] == {"config_name": "default",
                                      "data_files": [{"split": "train", "path": "data/*.parquet"}]}
        assert "prefsmith" in meta["tags"] and MARKER in card.text
        assert f"**{rows} rows** from {manifest['rows_in']} input rows" in card.text
        counts = dict((r[0], r[1]) for r in table_rows(card.text, "Row counts"))
        assert counts["input"] == str(manifest["rows_in"]) and counts["output (`data/`)"] == str(rows)
        fps = dict((r[0], r[1]) for r in table_rows(card.text, "Fingerprints and versions"))
        assert fps["config fingerprint"] == manifest["fingerprint"]
        assert fps["input fingerprint"] == manifest["input"]["fingerprint"]
        columns = [r[0] for r in table_rows(card.text, "Columns")]
        assert columns == ds.open_input(str(folder)).columns
        # the policy and its sampling, from `generate`'s manifest, on every card down the chain
        policy = dict((r[0], r[1]) for r in table_rows(card.text, "Policy and sampling"))
        assert policy["model"] == str(tiny_model) and policy["engine"] == "hf"
        assert policy["n"] == "4" and policy["temperature"] == "0.9" and policy["max_new_tokens"] == "8"
        assert policy["seed"] == "3"
    tags = lambda f: DatasetCard.load(chain[f] / "README.md").data.tags  # noqa: E731
    assert {"rollouts", "synthetic"} <= set(tags("rollouts"))
    assert {"rewards", "rl"} <= set(tags("labeled"))
    assert {"deduplicated", "rl"} <= set(tags("clean"))
    assert {"dpo", "preference", "deduplicated"} <= set(tags("pairs"))


def test_rewards_hygiene_and_lineage_follow_the_chain(chain):
    text = DatasetCard.load(chain["pairs"] / "README.md").text
    labeled = ds.read_manifest(chain["labeled"])
    rewards = {r[0]: r for r in table_rows(text, "Rewards")}
    assert set(rewards) == {"length_reward", "ids_length"}
    assert rewards["length_reward"][1:3] == ["plugin_rewards:length_reward", "1"]
    assert rewards["ids_length"][1:3] == [f"{HERE / 'plugin_rewards.py'}:ids_length", "0.5"]
    mean = labeled["summary"]["rewards"]["length_reward"]["mean"]
    assert float(rewards["length_reward"][3]) == pytest.approx(mean, rel=1e-5)
    clean = ds.read_manifest(chain["clean"])
    (step,) = table_rows(text, "Hygiene")
    assert step[:5] == ["dedup", str(chain["clean"]), str(clean["rows_in"]), str(clean["rows_out"]),
                        str(clean["rows_in"] - clean["rows_out"])]
    lineage = table_rows(text, "Lineage")
    assert [r[1] for r in lineage] == ["pairs", "dedup", "label", "generate"]
    assert [r[2] for r in lineage[1:]] == [str(chain["clean"]), str(chain["labeled"]), str(chain["rollouts"])]
    for row, folder in zip(lineage, [chain["pairs"], chain["clean"], chain["labeled"], chain["rollouts"]]):
        m = ds.read_manifest(folder)
        assert row[5:] == [m["fingerprint"], m["input"]["fingerprint"]]
    assert "summary:" in section(text, "Results")  # what pairs recorded when it finished


def test_load_dataset_finds_the_shards_through_the_card(chain, tmp_path):
    """`datasets.load_dataset(DIR)` reads the card's `configs`: the Parquet shards, not manifest.json."""
    from datasets import load_dataset

    for folder in (chain["rollouts"], chain["pairs"]):
        loaded = load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
        assert loaded.num_rows == ds.read_manifest(folder)["rows_out"]
        assert loaded.column_names == ds.open_input(str(folder)).columns


def test_side_dataset_is_a_second_config(tmp_path):
    from datasets import load_dataset

    rows = [{"id": i, "prompt": "the same question about cards" if i % 2 else f"question number {i} here"}
            for i in range(6)]
    out = tmp_path / "dedup"
    assert main(["dedup", "--input", str(write_jsonl(tmp_path / "p.jsonl", rows)), "--output", str(out),
                 "--field", "prompt", "--no-progress"]) == 0
    meta = DatasetCard.load(out / "README.md").data.to_dict()
    assert meta["configs"][1] == {"config_name": "removed",
                                  "data_files": [{"split": "train", "path": "removed/data/*.parquet"}]}
    removed = load_dataset(str(out), "removed", split="train", cache_dir=str(tmp_path / "cache"))
    kept = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert (kept.num_rows, removed.num_rows) == (4, 2)
    counts = dict((r[0], r[1]) for r in table_rows(DatasetCard.load(out / "README.md").text, "Row counts"))
    assert counts["removed (`removed/data/`)"] == "2"


def test_a_users_own_readme_is_never_replaced(chain, tmp_path):
    folder = tmp_path / "pairs"
    assert main(["pairs", "--input", str(chain["clean"]), "--output", str(folder)]) == 0
    assert is_ours(folder / "README.md")
    (folder / "README.md").write_text("# My pairs\n\nNotes I wrote.\n")
    update_manifest(folder, note="more results")  # a manifest write that would refresh our card
    assert ds.write_card(folder) is False
    assert (folder / "README.md").read_text() == "# My pairs\n\nNotes I wrote.\n"
    (folder / "README.md").unlink()
    assert ds.write_card(folder) is True and is_ours(folder / "README.md")
    assert "## Results" in DatasetCard.load(folder / "README.md").text
    # a README.md written before the run, and one kept across --overwrite with another config
    own = tmp_path / "own"
    own.mkdir()
    (own / "README.md").write_text("# Mine\n")
    assert main(["pairs", "--input", str(chain["clean"]), "--output", str(own)]) == 0
    assert (own / "README.md").read_text() == "# Mine\n" and ds.read_manifest(own)["complete"]
    assert main(["pairs", "--input", str(chain["clean"]), "--output", str(own), "--strategy", "random",
                 "--overwrite"]) == 0
    assert (own / "README.md").read_text() == "# Mine\n" and ds.read_manifest(own)["config"]["strategy"] == "random"


@pytest.fixture
def pref(tmp_path) -> Path:
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1} maybe"} for i in range(16)]
    return ds.write_dataset(rows, tmp_path / "pref", {"stage": "pairs"})


def test_model_card_of_a_dpo_run(tiny_model, pref, tmp_path):
    out = tmp_path / "dpo"
    assert main(["train", "dpo", "--model", str(tiny_model), "--data", str(pref), "--output", str(out),
                 "--max-steps", "2", "--batch-size", "4", "--eval-split", "0.25", "--eval-every", "1", "--lr", "1e-3",
                 "--no-progress", "--no-plots", "--ref-cache-dir", str(tmp_path / "refcache")]) == 0
    model_dir = final_model_dir(out)  # OUTPUT/model, where every trainer leaves its final weights
    card = ModelCard.load(model_dir / "README.md", ignore_metadata_errors=False)  # the card is beside them
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.base_model is None  # a local folder has no Hub id; the body names it
    assert {"prefsmith", "dpo"} <= set(card.data.tags)
    training = dict((r[0], r[1]) for r in table_rows(card.text, "Training"))
    assert training["base model"] == str(tiny_model) and training["training data"] == str(pref)
    assert training["steps"] == "2" and training["architecture"] == "LlamaForCausalLM"
    (data,) = table_rows(card.text, "Datasets")
    assert data[:3] == [str(pref), "pairs", "16"]
    records = read_metrics(out)
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 1, 2] and "eval/loss" in evals[0]
    check_cells(card.text, "Held-out results", evals)
    last = [r for r in records if r["split"] == "train"][-1]
    final = dict((r[0], r[1]) for r in table_rows(card.text, "Final training metrics"))
    assert float(final["loss"]) == pytest.approx(last["loss"], rel=1e-5)
    assert "lr: 0.001" in section(card.text, "Training configuration")
    # a base model with a Hub id goes into the metadata (the Hub links the two)
    text = model_card(model_dir, RunInfo(algorithm="dpo", base_model="HuggingFaceTB/SmolLM2-135M-Instruct", config={},
                                   datasets=["trl-lib/ultrafeedback_binarized", str(pref)]))
    data = ModelCard(text, ignore_metadata_errors=False).data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data.datasets == ["trl-lib/ultrafeedback_binarized"]


def test_model_card_of_a_grpo_run(tiny_model, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"id": f"q{i}", "prompt": f"say something {i}", "answer": str(i)} for i in range(4)])
    out = tmp_path / "grpo"
    assert main(["train", "grpo", "--model", str(tiny_model), "--prompts", str(prompts), "--output", str(out),
                 "--reward", "plugin_rewards:first_char_reward", "--num-generations", "2", "--prompts-per-step", "2",
                 "--max-new-tokens", "4", "--max-steps", "1", "--save-every", "0", "--no-dynamic-sampling",
                 "--eval-prompts", str(prompts), "--eval-limit", "2", "--threads", "1"]) == 0
    card = ModelCard.load(out / "model" / "README.md", ignore_metadata_errors=False)
    assert {"prefsmith", "grpo"} <= set(card.data.tags) and card.data.library_name == "transformers"
    evals = [r for r in read_metrics(out) if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [0, 1] and "accuracy" in evals[0]
    check_cells(card.text, "Held-out results", evals)
    assert "training data" in card.text and str(prompts) in card.text


def test_hub_model_ids(tiny_model, tmp_path, monkeypatch):
    assert hub_model_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_model_id(str(tiny_model)) is None
    assert hub_model_id("not//an id") is None
    monkeypatch.setenv("PREFSMITH_HOME", str(tmp_path))
    (tmp_path / "models" / "smollm2-135m-instruct").mkdir(parents=True)
    assert hub_model_id(str(tmp_path / "models" / "smollm2-135m-instruct")) == DEFAULT_HUB_ID


# ----------------------------------------------------------------------------------------------- --push-to-hub
def test_push_to_hub_is_checked_before_any_work(chain, tmp_path, capsys):
    out = tmp_path / "pairs"
    assert main(["pairs", "--input", str(chain["labeled"]), "--output", str(out), "--push-to-hub", "me//pairs"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--push-to-hub 'me//pairs': not a Hub repo id" in err
    assert not out.exists()
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests/conftest.py, the Makefile
    assert main(["pairs", "--input", str(chain["labeled"]), "--output", str(out), "--push-to-hub", "me/pairs"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("prefsmith pairs: error: --push-to-hub me/pairs: HF_HUB_OFFLINE is set, so nothing can be "
                   "uploaded; unset it to push, or leave out --push-to-hub")
    assert not out.exists()


def test_train_push_to_hub_is_checked_before_training(tiny_model, pref, tmp_path, capsys):
    out = tmp_path / "dpo"
    assert main(["train", "dpo", "--model", str(tiny_model), "--data", str(pref), "--output", str(out),
                 "--max-steps", "1", "--push-to-hub", "me/dpo", "--hub-private"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "HF_HUB_OFFLINE is set" in err
    assert not out.exists()
    assert main(["train", "dpo", "--model", str(tiny_model), "--data", str(pref), "--output", str(out),
                 "--hub-private"]) == 2
    assert "--hub-private is for --push-to-hub REPO" in capsys.readouterr().err
    help_text = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", "dpo", "--help"], cwd=ROOT,
                               capture_output=True, text=True).stdout
    assert "--push-to-hub REPO" in help_text and "--hub-private" in help_text


def test_split_argv():
    assert hub.split_argv(["dpo", "--output", "o"]) == (["dpo", "--output", "o"], None)
    with pytest.raises(UserError, match="needs a repo id"):
        hub.split_argv(["dpo", "--push-to-hub", "--output", "o"])
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        hub.split_argv(["dpo", "--push-to-hub=me/x", "--output", "o"])


def test_no_token_is_one_line_before_any_work(chain, tmp_path):
    """Online mode but no token: HF_HOME is empty, HF_TOKEN unset, and the endpoint a closed loopback port."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
    env.update(HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_HOME=str(tmp_path / "hf"),
               HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(ROOT))
    out = tmp_path / "pairs"
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "pairs", "--input", str(chain["labeled"]),
                           "--output", str(out), "--push-to-hub", "me/pairs"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("prefsmith pairs: error: --push-to-hub me/pairs: no Hugging Face token; set "
                                   "HF_TOKEN or run `hf auth login`")
    assert not out.exists()


def test_pipeline_file_and_config_file(chain, pref, tiny_model, tmp_path, capsys):
    """`push_to_hub:` in a pipeline file is checked for every stage before the first one runs; for `prefsmith
    train` the flags belong on the command line, and a --config file holding them is one clear line."""
    f = tmp_path / "p.yaml"
    f.write_text(f"workdir: {tmp_path / 'wd'}\nstages:\n"
                 f"  - {{name: pairs, command: pairs, args: {{input: {chain['labeled']}}}}}\n"
                 f"  - {{name: more, command: pairs, args: {{input: {chain['labeled']}, push_to_hub: me/pairs}}}}\n")
    assert main(["run", str(f)]) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert not (tmp_path / "wd" / "pairs").exists()  # the first stage did not run
    config = tmp_path / "train.yaml"
    config.write_text("push_to_hub: me/dpo\nmax_steps: 1\n")
    out = tmp_path / "dpo"
    assert main(["train", "dpo", "--model", str(tiny_model), "--data", str(pref), "--output", str(out),
                 "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--push-to-hub: give it on the command line" in err
    assert not out.exists()


def test_final_model_dir_of_each_trainer(tmp_path):
    (tmp_path / "dpo" / "model").mkdir(parents=True)
    (tmp_path / "dpo" / "model" / "config.json").write_text("{}")
    assert final_model_dir(tmp_path / "dpo") == tmp_path / "dpo" / "model"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text("{}")  # a run saved in OUTPUT itself
    assert final_model_dir(tmp_path / "old") == tmp_path / "old"
    rounds = tmp_path / "idpo"
    rounds.mkdir()
    (rounds / "rounds.jsonl").write_text("".join(json.dumps({"round": r, "model": str(rounds / f"round-00{r}" / "model")})
                                                 + "\n" for r in range(2)))
    assert final_model_dir(rounds) == rounds / "round-001" / "model"  # the last round's policy


class FakeHub:
    """The few Hub API calls `create_repo` + `upload_folder` make when every file is a regular (non-LFS) upload,
    on a loopback port this test starts: it records what the client sent. Not the Hub: it checks nothing the Hub
    would (auth, sizes, LFS), so this shows what prefsmith hands huggingface_hub, not that the Hub accepts it."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hub = self
        self.created: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.auth: set[str] = set()
        self.other: list[str] = []
        self.validated: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                import base64

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.auth.add(self.headers.get("authorization", ""))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:3] == ["api", "repos", "create"]:
                    hub.created.append(json.loads(body))
                    kind = json.loads(body).get("type", "model")
                    prefix = "" if kind == "model" else f"{kind}s/"
                    return self.reply({"url": f"{hub.url}/{prefix}{hub.created[-1]['organization']}/"
                                              f"{hub.created[-1]['name']}"})
                if parts == ["api", "validate-yaml"]:  # the Hub's card check, which the client asks for first
                    hub.validated.append(json.loads(body))
                    return self.reply({})
                if len(parts) == 6 and parts[0] == "api" and parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    return self.reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                  "oid": None} for f in files]})
                if len(parts) == 6 and parts[0] == "api" and parts[4] == "commit":
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    return self.reply({"commitUrl": f"{hub.url}/{parts[1]}/{parts[2]}/{parts[3]}/commit/0123",
                                       "commitOid": "0123"})
                hub.other.append(self.path)
                self.send_response(404)
                self.end_headers()

            def do_GET(self):
                hub.other.append("GET " + self.path)
                self.send_response(404)
                self.end_headers()

            def reply(self, obj):
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def hub_env(hub: "FakeHub", tmp_path: Path) -> dict[str, str]:
    """A subprocess's environment that sends huggingface_hub to the loopback fake hub with a test token."""
    env = {k: v for k, v in os.environ.items() if k not in ("HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
    env.update(HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub.url,
               HF_TOKEN="hf_loopbacktoken", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=str(ROOT))
    return env


def test_push_hands_the_folder_to_huggingface_hub(chain, tmp_path):
    """`pairs --push-to-hub` in a subprocess whose HF_ENDPOINT is a loopback fake hub: the repo is created private,
    one commit holds the dataset folder (card, manifest, shards; not the completion markers), and the token only
    travels in the library's Authorization header: it is in no file of the folder."""
    hub = FakeHub()
    try:
        env = hub_env(hub, tmp_path)
        out = tmp_path / "pairs"
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "pairs", "--input", str(chain["clean"]),
                               "--output", str(out), "--push-to-hub", "me/pairs", "--hub-private"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        hub.close()
    assert proc.returncode == 0, (proc.stderr, hub.other, hub.created, list(hub.files))
    assert hub.created == [{"name": "pairs", "organization": "me", "visibility": "private", "type": "dataset"}]
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    sent = hub.files
    assert set(sent) == {k for k in local if not k.startswith(".shards/")}
    assert all(sent[k] == local[k] for k in sent) and "README.md" in sent and "manifest.json" in sent
    assert hub.validated == [{"content": local["README.md"].decode(), "repoType": "dataset"}]  # the card, checked
    # besides the upload, the client only GETs (it asks the endpoint for its agent-harness list); all on loopback
    assert hub.auth == {"Bearer hf_loopbacktoken"} and all(o.startswith("GET ") for o in hub.other)
    assert not any(b"hf_loopbacktoken" in v for v in local.values())
    assert "pushed" in proc.stderr and f"{hub.url}/datasets/me/pairs/commit/0123" in proc.stderr


def test_train_push_hands_the_model_folder_to_huggingface_hub(tiny_model, pref, tmp_path):
    """`train dpo --push-to-hub` through the same loopback fake hub: a model repo, one commit of OUTPUT/model with
    its card, after training."""
    hub = FakeHub()
    try:
        env = hub_env(hub, tmp_path)
        out = tmp_path / "dpo"
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", "dpo", "--model", str(tiny_model),
                               "--data", str(pref), "--output", str(out), "--max-steps", "1", "--batch-size", "4",
                               "--no-progress", "--no-plots", "--ref-cache-dir", str(tmp_path / "refcache"),
                               "--push-to-hub", "me/dpo"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
        hub.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert hub.created == [{"name": "dpo", "organization": "me", "type": "model"}]
    model_dir = final_model_dir(out)
    local = {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    assert set(hub.files) == set(local) and all(hub.files[k] == local[k] for k in local)
    assert {"README.md", "config.json", "model.safetensors"} <= set(hub.files)
    assert ModelCard(hub.files["README.md"].decode()).data.tags == ["prefsmith", "dpo"]
