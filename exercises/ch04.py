"""Exercises of notebook 04 (the GGUF file and llama.cpp), checked against `gguf`'s constants and
the course's file."""

from __future__ import annotations

from . import attempt, close, say, verdict

TYPES = ("Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q6_K")


def _bits_per_weight(name: str) -> float:
    import gguf

    block, type_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
    return type_bytes * 8 / block


def check_1(answer: dict) -> bool:
    """Exercise 1: {type name: bits per weight} for each of `TYPES`, scales and minimums
    included."""
    answer = answer if isinstance(answer, dict) else {}
    wrong = [t for t in TYPES if not close(answer.get(t), _bits_per_weight(t), 0.001)]
    return verdict(
        not wrong,
        say(
            en="bytes per block x 8 / weights per block, for every type.",
            zh="每种类型都是：每块字节数 x 8 / 每块权重数。",
        ),
        say(
            en=f"check {', '.join(wrong)}: gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.NAME] "
            "gives (weights per block, bytes per block).",
            zh=f"检查 {'、'.join(wrong)}：gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.NAME] "
            "给出（每块权重数, 每块字节数）。",
        ),
    )


def check_2(answer: dict, path=None) -> bool:
    """Exercise 2: {type name: share of the file's tensor bytes} for the course's Q4_K_M file."""
    from course import models as course_models
    from helpers import gguf_tools

    by_type = gguf_tools.bytes_by_type(
        gguf_tools.validate_gguf(path or course_models.model_path("gguf"))
    )
    total = sum(by_type.values())
    answer = answer if isinstance(answer, dict) else {}
    wrong = sorted(set(by_type) | set(answer))
    wrong = [
        t
        for t in wrong
        if not (t in answer and abs(float(answer[t]) - by_type.get(t, 0) / total) <= 0.005)
    ]
    return verdict(
        not wrong,
        say(
            en='a "Q4_K_M" file whose rows are 640 wide is mostly other types (section 1).',
            zh="行宽为 640 的 “Q4_K_M” 文件，大部分其实是别的类型（第 1 节）。",
        ),
        say(
            en=f"check {', '.join(wrong)}: every tensor type in the header, "
            "with its bytes over all tensor bytes.",
            zh=f"检查 {'、'.join(wrong)}：文件头里的每种张量类型，用它的字节数除以所有张量的"
            "总字节数。",
        ),
    )


def check_3(allocated_n_ctx) -> bool:
    """Exercise 3: `allocated_n_ctx(requested)` -> the context llama.cpp allocates when asked for
    `requested`."""
    cases = [200, 256, 257, 512, 1000, 2048, 2049, 4095]
    wrong, error = attempt(lambda: [n for n in cases if allocated_n_ctx(n) != -(-n // 256) * 256])
    if error:
        return verdict(False, "", error)
    return verdict(
        not wrong,
        say(
            en="llama.cpp pads the window up to the next multiple of 256 (and n_ctx() reports "
            "that).",
            zh="llama.cpp 把窗口向上补齐到 256 的下一个倍数（n_ctx() 报告的也是它）。",
        ),
        say(
            en=f"wrong for {wrong}: section 3 shows what n_ctx() reports for a window of 200.",
            zh=f"{wrong} 不对：第 3 节展示了窗口为 200 时 n_ctx() 报告的值。",
        ),
    )
