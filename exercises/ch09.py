"""Exercises of notebook 09 (serving), checked against the OpenAI-compatible request and stream
formats, and against a server of the course's GGUF."""

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


QUESTIONS = ("What is the capital of Italy?", "英国的首都是哪里？")  # none among the examples


def _post(base_url: str, route: str, body: dict) -> dict:
    import urllib.request

    request = urllib.request.Request(
        f"{base_url}/{route}",
        method="POST",
        headers={"Content-Type": "application/json"},
        data=json.dumps(body).encode(),
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def check_3(ask, base_url: str | None = None, path=None) -> bool:
    """Exercise 3: `ask(base_url, question)` -> the text of the course model's reply to `question`
    from the server at `base_url`, asked the way section 3 found a base model answers best, greedy,
    at most 24 new tokens, and no more than the answer to that question. The check starts a server
    of its own (or uses `base_url`) and asks it each question that way itself."""
    import contextlib

    from course import models as course_models
    from helpers import serving
    from helpers import templates

    with contextlib.ExitStack() as stack:
        if base_url is None:
            server = stack.enter_context(
                serving.llama_server(
                    path or course_models.model_path("gguf"), chat_format="gemma", n_ctx=1024
                )
            )
            base_url = server.base_url
        for question in QUESTIONS:
            messages = [{"role": "user", "content": question}]
            transcript = templates.render_completion(messages, examples=templates.FEW_SHOT_EXAMPLES)
            want = _post(
                base_url,
                "completions",
                {"prompt": transcript, "max_tokens": 24, "temperature": 0, "stop": ["\nUser:"]},
            )["choices"][0]["text"].strip()
            got, error = attempt(ask, base_url, question)
            if error:
                return verdict(False, "", error)
            if not isinstance(got, str):
                return verdict(
                    False,
                    "",
                    f"your function returned a {type(got).__name__}: return the reply's text, "
                    "a str.",
                )
            if got.strip() == want:
                continue
            if got.strip().startswith(want) and "User:" in got:
                hint = (
                    "your reply runs on into the next question: the model continues the "
                    "transcript and writes the next 'User:' line itself. Which request parameter "
                    "ends the reply there?"
                )
            elif (
                got.strip()
                == (
                    _post(
                        base_url,
                        "chat/completions",
                        {"messages": messages, "max_tokens": 24, "temperature": 0},
                    )["choices"][0]["message"]["content"]
                    or ""
                ).strip()
            ):
                hint = (
                    "that is the chat endpoint's reply: it renders your question with a chat "
                    "format first, which this base model never learned. Section 3 asked it "
                    "another way, with a transcript of its own."
                )
            else:
                hint = (
                    f"not the reply section 3's way of asking gives for {question!r}: the few-shot "
                    "transcript (templates.render_completion with templates.FEW_SHOT_EXAMPLES), "
                    "sent as it is, greedy (temperature 0), at most 24 new tokens, cut before the "
                    "next question."
                )
            return verdict(False, "", hint)
    return verdict(
        True,
        "your own text goes in unchanged, and `stop` ends the reply before the next 'User:'.",
        "",
    )
