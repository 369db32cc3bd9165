"""Exercises of notebook 08 (the comparison), checked against the results file the notebook
wrote and the course's GGUF files."""

from __future__ import annotations

import json
from pathlib import Path

from . import attempt, close, say, verdict

RESULTS = Path("build/08_results.json")  # the notebook's default, relative to the course folder


def _results(results=None) -> dict:
    path = Path(results or RESULTS)
    if not path.is_absolute():
        root = next(
            (p for p in [Path.cwd(), *Path.cwd().parents] if (p / path).exists()), Path.cwd()
        )
        path = root / path
    if not path.exists():
        raise FileNotFoundError(
            say(
                en=f"{path} is missing: run notebook 08 (or `python -m bench --out {path}`) first",
                zh=f"{path} 不存在：先运行 notebook 08（或 `python -m bench --out {path}`）",
            )
        )
    return json.loads(path.read_text(encoding="utf-8"))


def check_1(answer_tok_s, weight_bytes: float = 4.1e9, results=None) -> bool:
    """Exercise 1: the decode ceiling, in tokens/s, of a model that reads `weight_bytes` per token,
    on the machine that wrote the results (its best copy bandwidth)."""
    truth = _results(results)["bandwidth"]["cpu_Bps"] / weight_bytes
    return verdict(
        close(answer_tok_s, truth, 0.01),
        say(
            en="one token reads every weight once: bandwidth / bytes.",
            zh="每个 token 把每个权重读一次：带宽 / 字节数。",
        ),
        say(
            en="divide the machine's copy bandwidth (the results' `bandwidth`, best of its thread "
            "counts) by the bytes read per token.",
            zh="用机器的内存复制带宽（结果里的 `bandwidth`，取各线程数中最好的那个）除以每个 token "
            "读取的字节数。",
        ),
    )


def check_2(answer_bytes, fmt: str = "gptq", results=None) -> bool:
    """Exercise 2: bytes of weights `fmt` reads per generated token (the results'
    `bytes_per_token`)."""
    truth = next(r for r in _results(results)["results"] if r["format"] == fmt)["bytes_per_token"]
    return verdict(
        close(answer_bytes, truth, 0.01),
        say(
            en="every quantized linear, the norms, and the tied embedding once as the output "
            "layer.",
            zh="每个量化过的线性层、各个 norm，再加上作为输出层读一遍的共享嵌入层。",
        ),
        say(
            en="count every tensor a token passes through; the embedding table is looked up for "
            "one row, but Gemma ties it to the output layer, which multiplies by all of it.",
            zh="数一数一个 token 经过的每个张量；嵌入表只查一行，但 Gemma 把它和输出层共享，"
            "而输出层要乘上整张表。",
        ),
    )


def _next_token_logits(path, texts: list[str], positions: int) -> list:
    """llama.cpp's next-token logits [positions, vocab] of a GGUF file over the start of each of
    `texts`."""
    import numpy as np

    from helpers import loading

    llm = loading.new_llama(path, n_ctx=256, n_batch=256, logits_all=True)
    try:
        out = []
        for text in texts:
            ids = llm.tokenize(text.encode("utf-8"), add_bos=True)[:positions]
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        return out
    finally:
        llm.close()


LANGUAGE_ZH = {"English": "英文", "Chinese": "中文"}


def check_3(agreement, positions: int = 40) -> bool:
    """Exercise 3: `agreement(predicted, reference)` -> the top-1 agreement of two models, from
    their next-token logits at the same positions ([positions, vocab] arrays): the share of
    positions where both rank the same token first. Tried on the course's two Q4_K_M files (the
    one quantized from `hf` against the shipped one) over the start of each held-out text."""
    import numpy as np

    from course import models as course_models
    from helpers import quality

    languages = ("English", "Chinese")
    texts = [quality.heldout_text(language) for language in ("en", "zh")]
    references = _next_token_logits(course_models.model_path("gguf"), texts, positions)
    predictions = _next_token_logits(course_models.model_path("gguf-from-hf"), texts, positions)
    for language, predicted, reference in zip(languages, predictions, references, strict=True):
        truth = float((predicted.argmax(-1) == reference.argmax(-1)).mean())
        got, error = attempt(agreement, predicted.copy(), reference.copy())
        if error:
            return verdict(False, "", error)
        try:
            got = float(got)
        except (TypeError, ValueError):
            kind = type(got).__name__
            return verdict(
                False,
                "",
                say(
                    en=f"your function returned a {kind}: return one number.",
                    zh=f"你的函数返回了一个 {kind}：请返回一个数。",
                ),
            )
        if np.isclose(got, truth, rtol=0, atol=1e-6):
            continue
        if np.isclose(got, truth * len(reference), rtol=0, atol=1e-6) or np.isclose(
            got, truth * 100, rtol=0, atol=1e-4
        ):
            hint = say(
                en="the agreement is a share of the positions, 0 to 1: not a count, nor a "
                "percentage.",
                zh="一致率是位置所占的比例，在 0 到 1 之间：不是个数，也不是百分数。",
            )
        else:
            hint = say(
                en=f"wrong for the {language} text: each row is "
                "one position, each column one token of the vocabulary; at every position compare "
                "the two models' highest-scoring tokens, then take the share of positions where "
                "they are the same.",
                zh=f"{LANGUAGE_ZH[language]}文本算错了：每一行是一个位置，"
                "每一列是词表里的一个 token；在每个位置比较两个模型得分最高的 token，再算两者相同"
                "的位置所占的比例。",
            )
        return verdict(False, "", hint)
    return verdict(
        True,
        say(
            en="the share of positions where greedy decoding would pick the same token: section "
            "5's top-1 agreement.",
            zh="贪心解码会选出同一个 token 的位置所占的比例：即第 5 节的 top-1 一致率。",
        ),
        "",
    )
