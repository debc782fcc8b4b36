"""Understanding: from what a person wrote to an intent, or a question back.

The catalog's rules (``intents``), the LLM that may only propose (``llm``), the order they are
tried in (``interpret``), and asking instead of guessing (``clarify``). It imports the rooms below
it: ``infra``, ``language``, ``record`` and ``policy``.
"""
