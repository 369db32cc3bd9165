"""Exercises of notebook 07 (chat), checked against the course's own chat helpers."""

from __future__ import annotations

import re

from . import attempt, say, verdict


def _words(messages) -> int:
    return sum(len(m["content"].split()) + 2 for m in messages)  # a stand-in for a tokenizer


def _history(pairs: int, system: bool = True) -> list[dict]:
    messages = [{"role": "system", "content": "Be brief."}] if system else []
    for i in range(pairs):
        messages += [
            {"role": "user", "content": f"question {i} " + "word " * i},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    return messages + [{"role": "user", "content": "the last question"}]


def check_1(trim) -> bool:
    """Exercise 1: `trim(messages, count_tokens, budget)` -> the messages to send (oldest pairs
    dropped whole)."""
    from helpers import chat

    cases = [
        (_history(4), 60),
        (_history(4), 1000),
        (_history(6, system=False), 40),
        (_history(3), 22),
    ]
    for messages, budget in cases:
        want = chat.trim_history(messages, _words, budget).messages
        got, error = attempt(trim, [dict(m) for m in messages], _words, budget)
        if error:
            return verdict(
                False, "", say(en=f"{error} (budget {budget})", zh=f"{error}（预算 {budget}）")
            )
        if got != want:
            return verdict(
                False,
                "",
                say(
                    en=f"wrong for {len(messages)} messages and a budget of {budget}: keep the "
                    "system message and the last user message, drop user/assistant pairs whole, "
                    "oldest first, and no more than needed.",
                    zh=f"{len(messages)} 条消息、预算 {budget} 时结果不对：保留系统消息和最后一条"
                    "用户消息，成对地丢弃用户/助手消息，从最旧的开始，只丢必要的那么多。",
                ),
            )
    try:
        trim(_history(2), _words, 3)
    except Exception:
        return verdict(
            True,
            say(
                en="the fewest oldest exchanges dropped, and an error when nothing fits.",
                zh="只丢掉最少的、最旧的几轮对话，什么都放不下时报错。",
            ),
            "",
        )
    return verdict(
        False,
        "",
        say(
            en="when even the system message and the last question exceed the budget, raise an "
            "error: sending the prompt anyway would overflow the window.",
            zh="如果连系统消息和最后一个问题都超出预算，就抛出错误：硬把提示词发出去会撑破上下文"
            "窗口。",
        ),
    )


def check_2(save) -> bool:
    """Exercise 2: `save(text, path)` writes a file so that a crash mid-write never leaves it
    half-written."""
    import os
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="qllm-ex07-"))
    target = folder / "chat.json"

    def after_a_crash() -> str | None:
        """What the file holds after a save that crashes at its last step; None when a plain save
        already leaves the wrong text."""
        save('{"messages": []}', target)
        if target.read_text(encoding="utf-8") != '{"messages": []}':
            return None
        original_replace, original_rename = os.replace, os.rename

        def crash(*args, **kwargs):
            raise OSError("the machine lost power here")

        os.replace = os.rename = crash  # a crash at the last step: the old file must survive whole
        try:
            save('{"messages": ["new"]}', target)
        except OSError:
            pass
        finally:
            os.replace, os.rename = original_replace, original_rename
        return target.read_text(encoding="utf-8")

    held, error = attempt(after_a_crash)
    if error:
        return verdict(False, "", error)
    if held is None:
        return verdict(
            False,
            "",
            say(
                en="the file does not hold the text afterwards.",
                zh="保存之后，文件里并没有这段文本。",
            ),
        )
    return verdict(
        held == '{"messages": []}',
        say(
            en="write a temporary file next to it, then replace the old one in one step.",
            zh="先在旁边写一个临时文件，再一步替换掉旧文件。",
        ),
        say(
            en="the old file was changed before the new one was complete: write the new text to "
            "a temporary file in the same folder, then os.replace() it over the old one.",
            zh="新文件还没写完，旧文件就已经被改了：先把新文本写到同一文件夹里的临时文件，"
            "再用 os.replace() 覆盖旧文件。",
        ),
    )


def check_3(score) -> bool:
    """Exercise 3: `score(replies, questions)` -> how many replies match their question's regular
    expression."""
    questions = [
        ("What is the capital of France?", r"paris"),
        ("法国的首都是哪里？", r"巴黎"),
        ("How many legs does a spider have?", r"\b(8|eight)\b"),
    ]
    cases = [
        ["Paris.", "巴黎。", "Eight."],
        ["PARIS, of course", "是北京", "It has 8 legs"],
        ["Lyon", "巴黎", "eighteen"],
        ["", "", ""],
    ]
    truth = [
        sum(
            bool(re.search(p, r, re.IGNORECASE))
            for (_, p), r in zip(questions, replies, strict=True)
        )
        for replies in cases
    ]
    got, error = attempt(lambda: [score(replies, questions) for replies in cases])
    if error:
        return verdict(False, "", error)
    return verdict(
        got == truth,
        say(
            en="a regular expression per question, searched case-insensitively in the reply.",
            zh="每个问题一个正则表达式，在回答里不区分大小写地查找。",
        ),
        say(
            en="search each question's pattern anywhere in its reply (re.search), ignoring case; "
            '"eighteen" must not count as eight.',
            zh="在每个回答的任意位置查找对应问题的模式（re.search），忽略大小写；"
            "“eighteen” 不能算作 eight。",
        ),
    )
