"""Checks for the exercises at the end of the lessons: one module per notebook, `exercises.ch02` for
02.

    from exercises import ch02
    ch02.check_1(your_answer)     # prints ✓ or ✗ with the reason, and returns True or False

A check computes the right answer itself, from the course's own files or from the libraries'
constants, and never prints it: a wrong answer gets a hint. Worked solutions:
`solutions/<notebook>.ipynb`, which CI runs, so every solution is known to pass its check.

The checks speak the edition's language: Chinese when the notebook runs from a `zh-CN` folder (the
kernel's working directory is the notebook's folder, in JupyterLab, under nbmake and in
`tools/run_course.py`), English otherwise; `QLLM_LANG=zh-CN` or `QLLM_LANG=en` overrides that. The
two editions run the same code, so the language is read here, not passed in. Each message is written
once per language, side by side: `say(en=..., zh=...)`.
"""

from __future__ import annotations

import os
from pathlib import Path

from helpers.errors import CourseError

LANG_ENV = "QLLM_LANG"
ALIASES = {"en": "en", "zh-cn": "zh-CN", "zh": "zh-CN", "zh_cn": "zh-CN"}


def language() -> str:
    """ "zh-CN" or "en": `QLLM_LANG` if set, else "zh-CN" inside a zh-CN folder (the Chinese
    edition's notebooks run there), else "en"."""
    chosen = os.environ.get(LANG_ENV, "").strip()
    if chosen:
        if chosen.lower() not in ALIASES:
            raise CourseError(f"{LANG_ENV} must be zh-CN or en, not {chosen!r}.")
        return ALIASES[chosen.lower()]
    return "zh-CN" if "zh-CN" in Path.cwd().parts else "en"


def say(en: str, zh: str) -> str:
    """The message in the edition's language (language())."""
    return zh if language() == "zh-CN" else en


def verdict(ok: bool, right: str, hint: str) -> bool:
    """Print the outcome of a check; `hint` says what to look at again, never the answer."""
    if ok:
        print(say(en="✓ right: ", zh="✓ 正确：") + right)
    else:
        print(say(en="✗ not yet: ", zh="✗ 还不对：") + hint)
    return bool(ok)


def attempt(fn, *args, on: str = ""):
    """(fn(*args), None), or (None, a one-line message) when a learner's function raises: the check
    reports the error instead of a traceback from inside the check. `on` names the input it failed
    on, in that message."""
    try:
        return fn(*args), None
    except Exception as err:
        name = type(err).__name__
        return None, say(
            en=f"your function raised {name}{f' on {on}' if on else ''}: {err}",
            zh=f"你的函数抛出了 {name}{f'（输入 {on}）' if on else ''}：{err}",
        )


def learner_weight(dequantize, tensors: dict, shape, layout: str):
    """Call a learner's `dequantize(qweight, qzeros, scales, 128)`: (the weight as a float tensor,
    None), or (None, what is wrong: the error it raised, or a shape other than `shape`,
    [in, out])."""
    import torch

    got, error = attempt(dequantize, tensors["qweight"], tensors["qzeros"], tensors["scales"], 128)
    if error:
        return None, error
    got = torch.as_tensor(got).float()
    if tuple(got.shape) != tuple(shape):
        return None, say(
            en=f"the weight has shape {tuple(got.shape)}; "
            f"expected [in, out] = {tuple(shape)} ({layout})",
            zh=f"权重的形状是 {tuple(got.shape)}；应为 [in, out] = {tuple(shape)}（{layout}）",
        )
    return got, None


def close(answer, truth: float, rel: float) -> bool:
    """Is `answer` a number within `rel` (relative) of `truth`?"""
    try:
        return abs(float(answer) - truth) <= rel * abs(truth)
    except (TypeError, ValueError):
        return False
