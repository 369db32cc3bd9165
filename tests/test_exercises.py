"""The exercises: every lesson ends with a recap and 3-5 exercises, each with a check; every check
has a solution in solutions/ that asserts it (nbmake runs those); a wrong answer gets a hint, never
the answer."""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
RECAP = re.compile(r"^## (Recap|What to remember|Summary)\b", re.M)


def cells(path: Path, kind: str) -> list[str]:
    return [
        "".join(c["source"])
        for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
        if c["cell_type"] == kind
    ]


def chapter(lesson: Path) -> str:
    return "ch" + lesson.name.split("_", 1)[0]


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_every_lesson_ends_with_a_recap_and_checked_exercises(lesson):
    markdown = cells(lesson, "markdown")
    assert any(RECAP.search(text) for text in markdown), f"{lesson.name}: no recap"
    exercises = next(text for text in markdown if text.startswith("## Exercises"))
    items = re.findall(r"^(\d+)\. (.+?)(?=^\d+\. |^\*\*Going further|\Z)", exercises, re.M | re.S)
    assert 3 <= len(items) <= 5, f"{lesson.name}: {len(items)} exercises"
    for number, text in items:  # each exercise names its own check
        assert re.search(rf"{chapter(lesson)}\.check_{number}\(", text), (
            f"{lesson.name}: exercise {number} has no check"
        )
    module = importlib.import_module(f"exercises.{chapter(lesson)}")
    checks = sorted(
        name
        for name, _ in inspect.getmembers(module, inspect.isfunction)
        if name.startswith("check_")
    )
    named = sorted(set(re.findall(rf"{chapter(lesson)}\.(check_\d)\(", exercises)))
    assert named == checks and len(checks) >= 3, (
        f"{lesson.name}: exercises name {named}, the module has {checks}"
    )
    assert "exercises" in cells(lesson, "code")[-1], (
        f"{lesson.name}: the last code cell imports the checks"
    )


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_every_check_is_asserted_by_a_solution(lesson):
    solution = ROOT / "solutions" / lesson.name
    assert solution.exists(), f"no solutions/{lesson.name}"
    code = "\n".join(cells(solution, "code"))
    module = importlib.import_module(f"exercises.{chapter(lesson)}")
    for name, _ in inspect.getmembers(module, inspect.isfunction):
        if name.startswith("check_"):
            assert re.search(rf"^assert {chapter(lesson)}\.{name}\(", code, re.M), (
                f"{solution.name}: {name} not asserted"
            )
    assert not [c for c in json.loads(solution.read_text())["cells"] if c.get("outputs")], (
        "commit with outputs cleared"
    )


def test_helpers_never_import_exercises():
    for path in (ROOT / "helpers").glob("*.py"):
        assert not re.search(r"^\s*(from|import) exercises\b", path.read_text(), re.M), path.name


WRONG = [  # (module, check, a wrong answer, a hint word, the truth that must not be printed)
    ("ch00", "check_1", {("avx2 laptop", "batch"): "bfloat16"}, "memory-bound", None),
    ("ch00", "check_2", {"reading a 300-token prompt": "decode"}, "how many rows", None),
    ("ch01", "check_1", 494_000_000, "within 1%", "494032768"),
    ("ch01", "check_1", 400_000_000, "tied", None),
    ("ch01", "check_2", lambda path: "0" * 64, "binary mode", None),
    (
        "ch01",
        "check_3",
        lambda paths, pattern: [p for p in paths if pattern.lower() in p.lower()],
        "fnmatch",
        None,
    ),
    ("ch03", "check_3", lambda w, s: w / s, "Llama", None),
    (
        "ch04",
        "check_1",
        {"Q4_0": 4.0, "Q5_0": 5.0, "Q8_0": 8.0, "Q4_K": 4.0, "Q6_K": 6.0},
        "GGML_QUANT_SIZES",
        "4.5",
    ),
    ("ch04", "check_3", lambda requested: requested, "section 3", None),
    ("ch04b", "check_1", lambda width: width % 32 == 0, "block", None),
    (
        "ch06",
        "check_1",
        lambda call, times, prompt: (times[0] - call, len(times) / (times[-1] - call)),
        "TTFT already",
        None,
    ),
    (
        "ch06",
        "check_3",
        lambda text, stops: text.split(stops[0])[0] if stops else text,
        "earliest",
        None,
    ),
    (
        "ch07",
        "check_1",
        lambda messages, count, budget: messages[-1:],
        "drop user/assistant pairs whole",
        None,
    ),
    (
        "ch07",
        "check_2",
        lambda text, path: Path(path).write_text(text, encoding="utf-8"),
        "os.replace",
        None,
    ),
    (
        "ch07",
        "check_3",
        lambda replies, questions: sum(
            p in r for (_, p), r in zip(questions, replies, strict=False)
        ),
        "re.search",
        None,
    ),
    ("ch09", "check_1", {"prompt": "What is GGUF?", "max_new_tokens": 32}, "max_tokens", None),
    ("ch09", "check_2", lambda lines: "".join(lines), "[DONE]", None),
    ("ch09", "check_3", "chat", "unchanged", "completions"),
    ("ch03b", "check_2", lambda config: config.get("quant_method", "hf"), "quant_method", None),
]


@pytest.mark.parametrize(
    "module, check, answer, hint, truth", WRONG, ids=[f"{m}.{c}" for m, c, *_ in WRONG]
)
def test_a_wrong_answer_gets_a_hint_not_the_answer(module, check, answer, hint, truth, capsys):
    assert getattr(importlib.import_module(f"exercises.{module}"), check)(answer) is False
    printed = capsys.readouterr().out
    assert printed.startswith("✗ not yet:") and hint in printed, printed
    assert truth is None or truth not in printed.replace(",", ""), printed


def test_a_learners_error_is_reported_not_raised(capsys):
    from exercises import ch07

    def broken(*args):
        raise KeyError("role")

    assert ch07.check_1(broken) is False
    assert "your function raised KeyError" in capsys.readouterr().out


RAISED = [  # (module, check, what a learner's function that raises KeyError("role") is told)
    ("ch01", "check_2", "your function raised KeyError on empty.bin: 'role'"),
    ("ch01", "check_3", "your function raised KeyError: 'role'"),
    ("ch04", "check_3", "your function raised KeyError: 'role'"),
    ("ch04b", "check_1", "your function raised KeyError: 'role'"),
    ("ch07", "check_1", "your function raised KeyError: 'role' (budget 60)"),
    ("ch07", "check_2", "your function raised KeyError: 'role'"),
    ("ch07", "check_3", "your function raised KeyError: 'role'"),
    ("ch09", "check_2", "your function raised KeyError: 'role'"),
]


@pytest.mark.parametrize("module, check, told", RAISED, ids=[f"{m}.{c}" for m, c, _ in RAISED])
def test_every_check_reports_a_learners_error_in_the_same_words(module, check, told, capsys):
    def broken(*args):
        raise KeyError("role")

    assert getattr(importlib.import_module(f"exercises.{module}"), check)(broken) is False
    assert capsys.readouterr().out == f"✗ not yet: {told}\n"


def test_gptq_checks_on_the_course_model(course_cache, capsys):
    """The checks that read the course's GPTQ file: a forgotten +1 on the zero points is named as
    such, and a size off by one tensor is rejected without printing the right size."""
    import torch

    from helpers import quantize
    from exercises import ch02

    def without_the_one(qweight, qzeros, scales, group_size):
        q = quantize.unpack_int4(qweight, dim=0).float()
        zeros = quantize.unpack_int4(qzeros, dim=1).float()
        group = torch.arange(q.shape[0]) // group_size
        return (q - zeros[group]) * scales.float()[group]

    assert ch02.check_3(without_the_one) is False
    assert "off by one" in capsys.readouterr().out
    qweight = ch02._tensors()["qweight"]
    n_in, n_out = qweight.shape[0] * 8, qweight.shape[1]
    no_g_idx = n_in * n_out // 2 + (n_in // 64) * n_out // 2 + (n_in // 64) * n_out * 2
    assert ch02.check_1(no_g_idx) is False
    assert str(no_g_idx + n_in * 4) not in capsys.readouterr().out
