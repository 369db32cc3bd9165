"""Exercises of notebook 09 (serving), checked against the OpenAI-compatible request and stream
formats."""

from __future__ import annotations

import json

from . import attempt, verdict


def check_1(body: dict) -> bool:
    """Exercise 1: the JSON body of a streamed, greedy /v1/chat/completions request: a system
    message "Answer briefly.", the user message "What is GGUF?", at most 32 new tokens."""
    if not isinstance(body, dict):
        return verdict(False, "", "the body is a dict (json.dumps makes the request text of it).")
    problems = []
    messages = body.get("messages")
    if messages != [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is GGUF?"},
    ]:
        problems.append("messages: a list of {'role', 'content'} dicts, system first")
    if body.get("max_tokens") != 32:
        problems.append("the limit on new tokens is called max_tokens")
    if body.get("temperature") not in (0, 0.0):
        problems.append("greedy decoding is temperature 0")
    if body.get("stream") is not True:
        problems.append("streaming is asked for with stream: true")
    if "prompt" in body:
        problems.append("'prompt' belongs to /v1/completions, not to the chat endpoint")
    try:
        json.dumps(body)
    except (TypeError, ValueError):
        problems.append("everything in it must be JSON-serialisable")
    return verdict(
        not problems, "the server's chat endpoint accepts exactly this.", "; ".join(problems)
    )


def check_2(collect) -> bool:
    """Exercise 2: `collect(lines)` -> the text of a streamed chat completion, from its
    server-sent-event lines."""

    def event(content=None, finish=None):
        delta = {} if content is None else {"content": content}
        return "data: " + json.dumps(
            {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            },
            ensure_ascii=False,
        )

    lines = [
        event(None),
        "",
        event("长城"),
        "",
        event("是"),
        ": keep-alive",
        event(" a wall"),
        "",
        event(None, "stop"),
        "",
        "data: [DONE]",
        "",
    ]
    got, error = attempt(collect, list(lines))
    if error:
        return verdict(False, "", error)
    return verdict(
        got == "长城是 a wall",
        "read `data:` lines, stop at [DONE], join the deltas' content.",
        "keep only lines that start with 'data: ', stop at 'data: [DONE]', parse the JSON and add "
        "choices[0]['delta'].get('content') when it is there (the first and last deltas have "
        "none).",
    )


def check_3(answer: str) -> bool:
    """Exercise 3: which endpoint gives a base model its few-shot transcript with a stop string:
    "chat" (/v1/chat/completions) or "completions" (/v1/completions)?"""
    return verdict(
        answer == "completions",
        "the text goes in as it is, and `stop` cuts the reply at the next 'User:'.",
        "the chat endpoint renders its messages with a chat template first; which endpoint takes "
        "your own text unchanged?",
    )
