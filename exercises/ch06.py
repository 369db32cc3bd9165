"""Exercises of notebook 06 (streaming), checked against the course's definitions and tokenizer."""

from __future__ import annotations

import math

from . import attempt, say, verdict


def check_1(speeds) -> bool:
    """Exercise 1: `speeds(call_time, token_times, prompt_tokens)` -> (ttft_s, decode_tok_s), the
    course's definitions (helpers.timing.RunTiming): first token after the call, then tokens after
    the first over the time from the first to the last."""
    cases = [
        (10.0, [10.5, 10.6, 10.7, 10.9], 8),
        (0.0, [2.0, 2.25, 2.5], 300),
        (5.0, [5.1] + [5.1 + 0.05 * i for i in range(1, 33)], 12),
    ]
    for call, times, prompt in cases:
        ttft, decode = times[0] - call, (len(times) - 1) / (times[-1] - times[0])
        got, error = attempt(speeds, call, list(times), prompt)
        if error:
            return verdict(False, "", error)
        got = tuple(got)
        if len(got) != 2 or not all(
            math.isclose(g, t, rel_tol=1e-6) for g, t in zip(got, (ttft, decode), strict=True)
        ):
            counted_all = len(got) == 2 and math.isclose(
                got[1], len(times) / (times[-1] - call), rel_tol=1e-6
            )
            return verdict(
                False,
                "",
                say(
                    en="your decode speed includes the wait for the first token: that is prompt "
                    "reading, which TTFT already reports.",
                    zh="你的解码速度把等待首个 token 的时间也算进去了：那是读取提示词的时间，"
                    "TTFT 已经报告过了。",
                )
                if counted_all
                else say(
                    en="TTFT = first token time - call time; "
                    "decode tok/s = (tokens - 1) / (last - first).",
                    zh="TTFT = 首个 token 的时间 - 调用时间；"
                    "解码 tok/s = (token 数 - 1) / (最后一个 - 第一个)。",
                ),
            )
    return verdict(
        True,
        say(
            en="the same definitions notebook 08's benchmark uses.",
            zh="和 notebook 08 的基准测试用的定义相同。",
        ),
        "",
    )


def _streamed(pieces, ids: list[int]) -> list[tuple[str, int]]:
    """Run `pieces` on the ids given one at a time: [(piece, how many ids it had read when it
    yielded that piece)]."""
    read = 0

    def one_at_a_time():
        nonlocal read
        for n, token in enumerate(ids, 1):
            read = n  # how far the learner's function has got
            yield token

    return [(piece, read) for piece in pieces(one_at_a_time())]


def check_2(pieces, path=None) -> bool:
    """Exercise 2: `pieces(ids)` -> text pieces, yielded while the ids are read one at a time (as a
    streamer's put() receives them): their join equals tok.decode(ids), no piece holds a broken
    character, and there is about one piece per token that completes some text."""
    from transformers import AutoTokenizer

    from course import models as course_models

    tok = AutoTokenizer.from_pretrained(path or course_models.model_path("hf"))
    for text in (
        "印刷术的历史始于中国。𠀀𪚥 ꙮ 🙂 Then English.",
        "Quantization: 4 bits, not 16.",
    ):  # 𠀀𪚥 ꙮ: byte tokens
        ids = tok(text, add_special_tokens=False)["input_ids"]
        got, error = attempt(_streamed, pieces, list(ids))
        if error:
            return verdict(False, "", error)
        if not all(isinstance(p, str) for p, _ in got):
            return verdict(
                False,
                "",
                say(
                    en="each piece is a str: the text that is new since the last one.",
                    zh="每一段都是一个 str：自上一段以来新增的文本。",
                ),
            )
        if "".join(p for p, _ in got) != tok.decode(ids):
            return verdict(
                False,
                "",
                say(
                    en="the pieces do not join to the decoded text: decoding ids one by one "
                    "loses the spaces and splits characters that take several tokens.",
                    zh="这些片段拼起来不等于解码后的文本：一个一个地解码 id，会丢掉空格，"
                    "还会把占好几个 token 的字符拆开。",
                ),
            )
        if any("\ufffd" in p for p, _ in got):
            return verdict(
                False,
                "",
                say(
                    en="a piece holds '\ufffd', half a character: hold text back until the "
                    "decoded text no longer ends in it.",
                    zh="有一段里含有 '\ufffd'，也就是半个字符：先把文本留着，等解码结果不再以它"
                    "结尾时再交出去。",
                ),
            )
        # the text can grow at this many tokens: the ones after which it decodes longer and whole
        growing, shown = 0, ""
        for n in range(1, len(ids) + 1):
            decoded = tok.decode(ids[:n])
            if not decoded.endswith("\ufffd") and len(decoded) > len(shown):
                growing, shown = growing + 1, decoded
        if len(got) < 2 or 2 * len(got) < growing:
            return verdict(
                False,
                "",
                say(
                    en=f"{len(got)} piece{'s' * (len(got) != 1)} for {len(ids)} tokens: that is "
                    "not a stream. Hand over the new text after each token, as soon as it is "
                    "complete, not the whole text (or whole words) at once.",
                    zh=f"{len(ids)} 个 token 只给出了 {len(got)} 段：这不是流式输出。每个 token "
                    "之后，一旦新文本完整就立即交出，而不是一次交出全部文本（或整个单词）。",
                ),
            )
        early = sum(n < len(ids) for _, n in got)
        if 2 * early < len(got):
            return verdict(
                False,
                "",
                say(
                    en="your pieces come out only after the last id was read: a streamer gets the "
                    "ids one at a time and must hand over each piece before the next id arrives "
                    "(yield it, in a generator).",
                    zh="你的片段要等最后一个 id 读完才出来：streamer 一次收到一个 id，必须在下一个 "
                    "id 到来之前交出每一段（在生成器里用 yield）。",
                ),
            )
    return verdict(
        True,
        say(
            en="decode the whole sequence so far, and hand over only what is new and complete.",
            zh="每次解码到目前为止的整个序列，只交出新增且完整的部分。",
        ),
        "",
    )


def check_3(cut_at_stop) -> bool:
    """Exercise 3: `cut_at_stop(text, stops)` -> the text before the earliest stop string (all of it
    if none)."""
    cases = [
        ("Paris.\nUser: and", ["\nUser:"]),
        ("no stop here", ["\nUser:"]),
        ("a<end_of_turn>b\nUser:", ["\nUser:", "<end_of_turn>"]),
        ("", ["x"]),
        ("x\nUser:", []),
    ]
    for text, stops in cases:
        found = [text.find(s) for s in stops if s in text]
        want = text[: min(found)] if found else text
        got, error = attempt(cut_at_stop, text, list(stops))
        if error or got != want:
            return verdict(
                False,
                "",
                error
                or say(
                    en=f"wrong for {text!r} with stops {stops}: cut at the earliest "
                    "stop string of any of them, and keep everything when none occurs.",
                    zh=f"文本 {text!r}、停止字符串 {stops} 的结果不对：在它们之中最早出现的那个"
                    "停止字符串处截断；一个都没出现时保留全部文本。",
                ),
            )
    return verdict(
        True,
        say(
            en="what create_completion(stop=...) does for you in llama-cpp-python.",
            zh="这就是 llama-cpp-python 里 create_completion(stop=...) 替你做的事。",
        ),
        "",
    )
