"""Checks for the exercises at the end of the lessons: one module per notebook, `exercises.ch02` for
02.

    from exercises import ch02
    ch02.check_1(your_answer)     # prints ✓ or ✗ with the reason, and returns True or False

A check computes the right answer itself, from the course's own files or from the libraries'
constants, and never prints it: a wrong answer gets a hint. Worked solutions:
`solutions/<notebook>.ipynb`, which CI runs, so every solution is known to pass its check.
"""

from __future__ import annotations


def verdict(ok: bool, right: str, hint: str) -> bool:
    """Print the outcome of a check; `hint` says what to look at again, never the answer."""
    print(("✓ right: " + right) if ok else ("✗ not yet: " + hint))
    return bool(ok)


def attempt(fn, *args, on: str = ""):
    """(fn(*args), None), or (None, a one-line message) when a learner's function raises: the check
    reports the error instead of a traceback from inside the check. `on` names the input it failed
    on, in that message."""
    try:
        return fn(*args), None
    except Exception as err:
        return None, f"your function raised {type(err).__name__}{f' on {on}' if on else ''}: {err}"


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
        return (
            None,
            f"the weight has shape {tuple(got.shape)}; "
            f"expected [in, out] = {tuple(shape)} ({layout})",
        )
    return got, None


def close(answer, truth: float, rel: float) -> bool:
    """Is `answer` a number within `rel` (relative) of `truth`?"""
    try:
        return abs(float(answer) - truth) <= rel * abs(truth)
    except (TypeError, ValueError):
        return False
