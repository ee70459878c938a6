"""Render a model's Jinja chat template (the one stored in its GGUF or reported by its server)."""

from __future__ import annotations

import json


def render_chat(
    template: str,
    messages: list[dict],
    *,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool,
    tokenizer_adds_bos: bool,
) -> str:
    """The prompt text for `messages`, transformers-style (llama-cpp-python's Jinja2 renderer).

    When the tokenizer adds BOS itself, a BOS the template writes is dropped so it is not doubled.
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(
        template, eos_token=eos_token, bos_token=bos_token, add_generation_prompt=add_generation_prompt
    )
    prompt = formatter(messages=messages).prompt
    if tokenizer_adds_bos and bos_token and prompt.startswith(bos_token):
        prompt = prompt[len(bos_token) :]
    return prompt


def message_list(text: str) -> list[dict] | None:
    """The messages of a chat-mode prompt, else None. A server engine in chat mode (the OpenAI
    backend with a /v1/chat/completions URL) lets the server apply its template, so its
    `apply_chat_template` returns the messages as a JSON list of objects with a "role"; nothing can
    be appended to that text (an assistant prefix or an opening `<think>` would turn it into one
    user message holding the JSON)."""
    if not text.startswith("[{"):
        return None
    try:
        messages = json.loads(text)
    except ValueError:
        return None
    if isinstance(messages, list) and all(isinstance(m, dict) and "role" in m for m in messages):
        return messages
    return None
