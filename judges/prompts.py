"""The judge's prompts: one system message, and a user message that states the rubric, shows the question (and
the reference answer for a reference-guided rubric), the response(s), and asks for a structured verdict.

A verdict ends with a JSON object on its own line (`{"score": 7}`, `{"winner": "A"}`); judges/verdicts.py also
accepts `Score: 7` / `Winner: A` and MT-Bench's `[[A]]`, since small judges often answer that way.
"""
from __future__ import annotations

from typing import Any

from rewards.chat import completion_text, is_messages, message_text

from .rubrics import Rubric

SYSTEM = ("You are a careful, impartial judge of AI assistant responses. Apply the rubric you are given, and "
          "only it. Do not let a response's length, its position, or its tone sway you beyond what the rubric "
          "asks. Reply with a short justification, then the verdict in exactly the format requested.")


def question_text(prompt: Any) -> str:
    """What the judge reads as the question: a string as is; a chat's single user message as its content; a
    longer chat as a transcript, one `role: content` paragraph per message (the judge must see who said what,
    which `rewards.chat.conversation_text` leaves out)."""
    if not is_messages(prompt):
        return str(prompt)
    if len(prompt) == 1:
        return message_text(prompt[0])
    return "\n\n".join(f"{m['role']}: {message_text(m)}" for m in prompt)


def _header(rubric: Rubric, prompt: Any, reference: Any) -> str:
    parts = [f"Rubric: {rubric.name}\n{rubric.criteria}", f"[Question]\n{question_text(prompt)}"]
    if rubric.reference:
        parts.append(f"[Reference answer]\n{reference}")
    return "\n\n".join(parts)


def _number(x: float) -> str:
    return f"{x:g}"


def pointwise_messages(rubric: Rubric, prompt: Any, completion: Any, reference: Any = None) -> list[dict]:
    lo, hi = rubric.scale
    ask = (f"Rate the response on a scale from {_number(lo)} to {_number(hi)}, where {_number(hi)} is best. "
           f"Explain your rating in a few sentences, then end with a JSON object on its own line: "
           f'{{"score": N}} with N a number from {_number(lo)} to {_number(hi)}.')
    user = f"{_header(rubric, prompt, reference)}\n\n[Response]\n{completion_text(completion)}\n\n{ask}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def pairwise_messages(rubric: Rubric, prompt: Any, a: Any, b: Any, reference: Any = None) -> list[dict]:
    options = '{"winner": "A"} or {"winner": "B"}' + (' or {"winner": "tie"}' if rubric.ties else "")
    ask = ("Compare the two responses by the rubric. Explain your comparison in a few sentences, then end with "
           f"a JSON object on its own line: {options}."
           + ("" if rubric.ties else " You must pick one; a tie is not allowed."))
    user = (f"{_header(rubric, prompt, reference)}\n\n[Response A]\n{completion_text(a)}\n\n"
            f"[Response B]\n{completion_text(b)}\n\n{ask}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
