"""AI feedback: LLM judges (pointwise scores, pairwise preferences with the swap rule, reference-guided
rubrics) and the chat-model protocol they call. A leaf library: it imports no engine and nothing from
pipelines/ or trainers/; pipelines/engines/openai_client.py and pipelines/engines/chat.py provide models.
See docs/judges.md.
"""
