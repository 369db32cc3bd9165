"""Exercises of notebook 06 (streaming), checked against the course's definitions and tokenizer."""

from __future__ import annotations

import math

from . import attempt, verdict


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
                "your decode speed includes the wait for the first token: that is prompt "
                "reading, which TTFT already reports."
                if counted_all
                else "TTFT = first token time - call time; "
                "decode tok/s = (tokens - 1) / (last - first).",
            )
    return verdict(True, "the same definitions notebook 08's benchmark uses.", "")


def check_2(pieces, path=None) -> bool:
    """Exercise 2: `pieces(ids)` -> text deltas, one per token or fewer, whose join equals
    tok.decode(ids), with no piece holding a broken character."""
    from transformers import AutoTokenizer

    from course import models as course_models

    tok = AutoTokenizer.from_pretrained(path or course_models.model_path("hf"))
    for text in (
        "印刷术的历史始于中国。𠀀𪚥 ꙮ 🙂 Then English.",
        "Quantization: 4 bits, not 16.",
    ):  # 𠀀𪚥 ꙮ: byte tokens
        ids = tok(text, add_special_tokens=False)["input_ids"]
        got, error = attempt(pieces, list(ids))
        if error:
            return verdict(False, "", error)
        got = list(got)
        if "".join(got) != tok.decode(ids):
            return verdict(
                False,
                "",
                "the pieces do not join to the decoded text: decoding ids one by one "
                "loses the spaces and splits characters that take several tokens.",
            )
        if any("\ufffd" in p for p in got):
            return verdict(
                False,
                "",
                "a piece holds '\ufffd', half a character: hold text back until the "
                "decoded text no longer ends in it.",
            )
    return verdict(
        True, "decode the whole sequence so far, and hand over only what is new and complete.", ""
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
                or f"wrong for {text!r} with stops {stops}: cut at the earliest "
                "stop string of any of them, and keep everything when none occurs.",
            )
    return verdict(True, "what create_completion(stop=...) does for you in llama-cpp-python.", "")
