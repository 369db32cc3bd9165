"""Exercises of notebook 09 (serving), checked against the OpenAI-compatible request and stream
formats, and against a server of the course's GGUF."""

from __future__ import annotations

import json

from . import attempt, say, verdict


def check_1(body: dict) -> bool:
    """Exercise 1: the JSON body of a streamed, greedy /v1/chat/completions request: a system
    message "Answer briefly.", the user message "What is GGUF?", at most 32 new tokens."""
    if not isinstance(body, dict):
        return verdict(
            False,
            "",
            say(
                en="the body is a dict (json.dumps makes the request text of it).",
                zh="请求体是一个 dict（由 json.dumps 把它变成请求文本）。",
            ),
        )
    problems = []
    messages = body.get("messages")
    if messages != [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is GGUF?"},
    ]:
        problems.append(
            say(
                en="messages: a list of {'role', 'content'} dicts, system first",
                zh="messages：由 {'role', 'content'} dict 组成的列表，系统消息在前",
            )
        )
    if body.get("max_tokens") != 32:
        problems.append(
            say(
                en="the limit on new tokens is called max_tokens",
                zh="新 token 数的上限叫 max_tokens",
            )
        )
    if body.get("temperature") not in (0, 0.0):
        problems.append(say(en="greedy decoding is temperature 0", zh="贪心解码就是 temperature 0"))
    if body.get("stream") is not True:
        problems.append(
            say(
                en="streaming is asked for with stream: true",
                zh="流式输出要用 stream: true 来请求",
            )
        )
    if "prompt" in body:
        problems.append(
            say(
                en="'prompt' belongs to /v1/completions, not to the chat endpoint",
                zh="'prompt' 属于 /v1/completions，不属于聊天端点",
            )
        )
    try:
        json.dumps(body)
    except (TypeError, ValueError):
        problems.append(
            say(
                en="everything in it must be JSON-serialisable",
                zh="里面的一切都必须能序列化为 JSON",
            )
        )
    return verdict(
        not problems,
        say(
            en="the server's chat endpoint accepts exactly this.",
            zh="服务器的聊天端点接受的正是这样的请求。",
        ),
        say(en="; ", zh="；").join(problems),
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
        say(
            en="read `data:` lines, stop at [DONE], join the deltas' content.",
            zh="读取 `data:` 行，遇到 [DONE] 就停，把各个 delta 的 content 拼起来。",
        ),
        say(
            en="keep only lines that start with 'data: ', stop at 'data: [DONE]', parse the JSON "
            "and add choices[0]['delta'].get('content') when it is there (the first and last "
            "deltas have none).",
            zh="只保留以 'data: ' 开头的行，遇到 'data: [DONE]' 就停，解析 JSON，有 "
            "choices[0]['delta'].get('content') 时把它加上（第一个和最后一个 delta 没有）。",
        ),
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
                    say(
                        en=f"your function returned a {type(got).__name__}: return the reply's "
                        "text, a str.",
                        zh=f"你的函数返回了一个 {type(got).__name__}：请返回回答的文本，一个 str。",
                    ),
                )
            if got.strip() == want:
                continue
            if got.strip().startswith(want) and "User:" in got:
                hint = say(
                    en="your reply runs on into the next question: the model continues the "
                    "transcript and writes the next 'User:' line itself. Which request parameter "
                    "ends the reply there?",
                    zh="你的回答一直写到了下一个问题：模型会续写对话稿，自己写出下一行 'User:'。"
                    "哪个请求参数能让回答在那里结束？",
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
                hint = say(
                    en="that is the chat endpoint's reply: it renders your question with a chat "
                    "format first, which this base model never learned. Section 3 asked it "
                    "another way, with a transcript of its own.",
                    zh="这是聊天端点的回答：它先用一种对话格式渲染你的问题，而这个基座模型从没学过"
                    "这种格式。第 3 节换了一种问法，用的是自己写的对话稿。",
                )
            else:
                hint = say(
                    en=f"not the reply section 3's way of asking gives for {question!r}: the "
                    "few-shot transcript (templates.render_completion with "
                    "templates.FEW_SHOT_EXAMPLES), sent as it is, greedy (temperature 0), at most "
                    "24 new tokens, cut before the next question.",
                    zh=f"这不是按第 3 节的问法对 {question!r} 得到的回答：few-shot 对话稿"
                    "（templates.render_completion 加 templates.FEW_SHOT_EXAMPLES），原样发送，"
                    "贪心解码（temperature 0），最多 24 个新 token，在下一个问题之前截断。",
                )
            return verdict(False, "", hint)
    return verdict(
        True,
        say(
            en="your own text goes in unchanged, and `stop` ends the reply before the next "
            "'User:'.",
            zh="你自己的文本原样送进去，`stop` 让回答在下一个 'User:' 之前结束。",
        ),
        "",
    )
