"""distilabel's side of bench/judges.py, run by a Python that has `distilabel[openai]` (its own venv):

    /tmp/dlvenv/bin/python bench/judges_distilabel.py --base-url URL --model NAME --messages FILE --batch C --out F

One `ChatGeneration` step over the conversations in FILE (a JSON list of message lists) with `OpenAILLM`
pointed at the bench's loopback server, greedy, `input_batch_size` = C (distilabel sends one batch's requests
concurrently and batches one after another), its cache off. Writes the replies, in order, as a JSON list.
Imports nothing from prefsmith.
"""
from __future__ import annotations

import argparse
import json
import os


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--messages", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    os.environ.setdefault("DISTILABEL_LOG_LEVEL", "ERROR")

    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import ChatGeneration

    conversations = json.loads(open(args.messages).read())
    data = [{"messages": m, "idx": i} for i, m in enumerate(conversations)]
    with Pipeline(name="bench-judges") as pipeline:
        load = LoadDataFromDicts(data=data, batch_size=args.batch)
        llm = OpenAILLM(model=args.model, base_url=args.base_url, api_key="unused", max_retries=5,
                        generation_kwargs={"temperature": 0.0, "max_new_tokens": 512})
        chat = ChatGeneration(llm=llm, input_batch_size=args.batch)
        load >> chat
    distiset = pipeline.run(use_cache=False)
    rows = sorted(distiset["default"]["train"], key=lambda r: r["idx"])
    with open(args.out, "w") as f:
        json.dump([r["generation"] for r in rows], f)


if __name__ == "__main__":
    main()
