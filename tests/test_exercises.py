"""The exercises: every lesson ends with a recap and 3-5 exercises, each with a check; every check
has a solution in solutions/ that asserts it (nbmake runs those); a wrong answer gets a hint, never
the answer. The checks speak the edition's language: every message is written in English and in
Chinese (`say(en=..., zh=...)`), and in the Chinese edition (a zh-CN folder, or QLLM_LANG=zh-CN)
every check answers in Chinese, for a right answer and for a wrong one."""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import os
import inspect
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
RECAP = re.compile(r"^## (Recap|What to remember|Summary)\b", re.M)
CJK = re.compile(r"[\u4e00-\u9fff]")
CHINESE_TEXT = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")  # with its punctuation


@pytest.fixture(autouse=True)
def english_unless_asked(monkeypatch):
    """The checks answer in English here (the tests run from the course folder), whatever the
    caller's QLLM_LANG; the Chinese tests set it themselves."""
    monkeypatch.delenv("QLLM_LANG", raising=False)


@pytest.fixture
def chinese(monkeypatch):
    monkeypatch.setenv("QLLM_LANG", "zh-CN")


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


# Wrong answers to the checks that read the course's own files (or run its models): each is worked
# out from those files the way a learner's mistake would be, so it is wrong by exactly that mistake.


@functools.cache
def _tokenizer():
    from transformers import AutoTokenizer

    from course import models as course_models

    return AutoTokenizer.from_pretrained(course_models.model_path("hf"))


def _safetensors(fmt: str, prefix: str = "") -> dict:
    """{name: tensor} of a course model's safetensors files, only the names starting with
    `prefix`."""
    from safetensors import safe_open

    from course import models as course_models

    found = {}
    for file in sorted(course_models.model_path(fmt).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for name in f.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                if name.startswith(prefix):
                    found[name] = f.get_tensor(name)
    return found


def _bytes(tensors: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _decode_ceilings_swapped():  # 4 bytes per bf16 weight and 2 per fp32 one
    params = sum(t.numel() for t in _safetensors("hf").values())
    return {"bfloat16": 20e9 / (4 * params), "float32": 20e9 / (2 * params)}


def _gptq_bits_without_g_idx():  # the group indices forgotten
    t = _safetensors("gptq", "model.layers.0.mlp.down_proj.")
    weights = t["model.layers.0.mlp.down_proj.qweight"].numel() * 8
    kept = {k: v for k, v in t.items() if not k.endswith("g_idx")}
    return _bytes(kept) * 8 / weights


def _layer_bytes(fmt: str) -> int:
    return _bytes(_safetensors(fmt, "model.layers.0.mlp.down_proj."))


def _awq_in_plain_order(qweight, qzeros, scales, group_size):  # AWQ's interleaving forgotten
    import torch

    from helpers.quantize import unpack_int4

    q, z = unpack_int4(qweight, dim=1).float(), unpack_int4(qzeros, dim=1).float()
    group = torch.arange(q.shape[0]) // group_size
    return (q - z[group]) * scales.float()[group]


def _awq_with_gptq_plus_one(qweight, qzeros, scales, group_size):  # GPTQ's +1 on the zero points
    from exercises.ch03 import AWQ_ORDER, _unpack

    import torch

    q, z = _unpack(qweight, AWQ_ORDER).float(), _unpack(qzeros, AWQ_ORDER).float() + 1
    group = torch.arange(q.shape[0]) // group_size
    return (q - z[group]) * scales.float()[group]


def _ct_bytes_fp32_scales():  # the scales counted as float32, not bf16
    out_features, in_features = _safetensors("hf", "model.layers.0.mlp.down_proj.weight")[
        "model.layers.0.mlp.down_proj.weight"
    ].shape
    return out_features * in_features // 2 + out_features * (in_features // 128) * 4 + 2 * 8


def _gguf_shares_by_weights():  # each type's share of the weights, not of the bytes
    from collections import Counter

    from course import models as course_models
    from helpers import gguf_tools

    header = gguf_tools.read_gguf(course_models.model_path("gguf"))
    weights = Counter()
    for t in header.tensors:
        weights[t.type_name] += t.n_elements
    return {name: n / header.n_params for name, n in weights.items()}


def _fell_back(wrong: str):
    from helpers import gguf_tools

    def fell_back(path):
        tensors = gguf_tools.read_gguf(path).tensors
        if wrong == "last dimension":  # PyTorch's order: the row length last
            return [t.name for t in tensors if len(t.shape) == 2 and t.shape[-1] % 256]
        return [t.name for t in tensors if t.shape[0] % 256]  # the norms counted as matrices

    return fell_back


def _pieces_once_all_ids_are_in(ids):  # the right pieces, but only once every id has come
    ids, pieces, sent = list(ids), [], ""
    for n in range(1, len(ids) + 1):
        text = _tokenizer().decode(ids[:n])
        if not text.endswith("\ufffd") and len(text) > len(sent):
            pieces.append(text[len(sent) :])
            sent = text
    return pieces


def _system_as_its_own_turn(messages):  # Gemma has no system turn
    text = "<bos>"
    for m in messages:
        role = "model" if m["role"] == "assistant" else m["role"]
        text += f"<start_of_turn>{role}\n{m['content'].strip()}<end_of_turn>\n"
    return text + "<start_of_turn>model\n"


def _few_shot(endpoint: str):
    """A learner's `ask(base_url, question)` for ch09.check_3: by the chat endpoint, or by the
    few-shot transcript without a stop string."""
    import openai

    from helpers import templates

    def ask(base_url, question):
        client = openai.OpenAI(base_url=base_url, api_key="not-needed-locally")
        messages = [{"role": "user", "content": question}]
        if endpoint == "chat":
            reply = client.chat.completions.create(
                model="course", messages=messages, temperature=0, max_tokens=24
            )
            return reply.choices[0].message.content
        prompt = templates.render_completion(messages, examples=templates.FEW_SHOT_EXAMPLES)
        reply = client.completions.create(
            model="course", prompt=prompt, temperature=0, max_tokens=24
        )
        return reply.choices[0].text

    return ask


COURSE_WRONG = [  # (module, check, a wrong answer (made when the test runs), a hint word)
    ("ch00", "check_3", _decode_ceilings_swapped, "2 bytes in bf16"),
    ("ch02", "check_2", lambda: 4.0, "a little above 4"),
    ("ch02", "check_2", _gptq_bits_without_g_idx, "all four tensors"),
    ("ch03", "check_1", lambda: 0, "hold the same number of bits"),
    ("ch03", "check_1", lambda: _layer_bytes("awq") - _layer_bytes("gptq"), "list the tensors"),
    ("ch03", "check_2", lambda: _awq_in_plain_order, "wrong columns"),
    ("ch03", "check_2", lambda: _awq_with_gptq_plus_one, "with no +1"),
    ("ch03b", "check_1", _ct_bytes_fp32_scales, "a bf16 scale"),
    (
        "ch03b",
        "check_3",
        lambda: lambda w, g: w.reshape(len(w), -1, g).abs().amax(-1) / 7,
        "-8 to 7",
    ),
    (
        "ch03b",
        "check_3",
        lambda: lambda w, g: w.reshape(len(w), -1, g).amax(-1) / 7.5,
        "largest weight is negative",
    ),
    ("ch03b", "check_3", lambda: lambda w, g: w.abs().amax(-1) / 7.5, "expected one per output"),
    ("ch04", "check_2", _gguf_shares_by_weights, "with its bytes over all tensor bytes"),
    ("ch04b", "check_3", lambda: _fell_back("last dimension"), "the wrong dimension"),
    ("ch04b", "check_3", lambda: _fell_back("norms"), "only matrices are quantized"),
    ("ch05", "check_1", lambda: _system_as_its_own_turn, "where does Gemma's template put it?"),
    (
        "ch05",
        "check_1",
        lambda: lambda messages: _tokenizer().apply_chat_template(messages, tokenize=False),
        "character by character",
    ),
    ("ch05", "check_2", lambda: lambda text: _tokenizer()(text)["input_ids"], "two <bos>"),
    (
        "ch05",
        "check_3",
        lambda: lambda text: _tokenizer()(text, add_special_tokens=False)["input_ids"],
        "a control token id is in your ids",
    ),
    ("ch06", "check_2", lambda: lambda ids: [_tokenizer().decode(list(ids))], "not a stream"),
    (
        "ch06",
        "check_2",
        lambda: lambda ids: [_tokenizer().decode([i]) for i in ids],
        "loses the spaces",
    ),
    ("ch06", "check_2", lambda: _pieces_once_all_ids_are_in, "after the last id was read"),
    (
        "ch08",
        "check_3",
        lambda: (
            lambda predicted, reference: float((predicted.argmax(0) == reference.argmax(0)).mean())
        ),
        "each row is one position",
    ),
    (
        "ch08",
        "check_3",
        lambda: (
            lambda predicted, reference: int((predicted.argmax(-1) == reference.argmax(-1)).sum())
        ),
        "not a count",
    ),
    ("ch09", "check_3", lambda: _few_shot("chat"), "the chat endpoint's reply"),
    ("ch09", "check_3", lambda: _few_shot("no stop"), "runs on into the next question"),
]


@pytest.mark.parametrize(
    "module, check, make_answer, hint", COURSE_WRONG, ids=[f"{m}.{c}" for m, c, *_ in COURSE_WRONG]
)
def test_a_wrong_answer_on_the_course_models_gets_a_hint(
    module, check, make_answer, hint, course_cache, capsys
):
    assert getattr(importlib.import_module(f"exercises.{module}"), check)(make_answer()) is False
    printed = capsys.readouterr().out
    assert printed.startswith("✗ not yet:") and hint in printed, printed


def test_a_wrong_bits_per_weight_of_a_gguf_file_gets_a_hint(course_cache, capsys):
    """ch04b.check_2 on the course's Q4_K_M file (the Q4_0 file needs llama.cpp's converter): its
    main type's own 4.5 bits are not the file's average."""
    from course import models as course_models
    from exercises import ch04b

    assert ch04b.check_2(4.5, path=course_models.model_path("gguf")) is False
    printed = capsys.readouterr().out
    assert printed.startswith("✗ not yet:") and "n_bytes" in printed, printed


def test_wrong_answers_from_the_results_file_get_a_hint(tmp_path, course_cache, capsys):
    """ch08's checks 1 and 2 on a results file whose GPTQ row reads what the GPTQ file holds: the
    bandwidth of one thread, and the tied embedding counted as one row looked up, are wrong."""
    from exercises import ch08

    gptq = _safetensors("gptq")
    per_token = _bytes(gptq)
    embedding = gptq["model.embed_tokens.weight"]
    results = tmp_path / "08_results.json"
    results.write_text(
        json.dumps(
            {
                "bandwidth": {"copy_1_thread_Bps": 9e9, "cpu_Bps": 21e9},
                "results": [{"format": "gptq", "bytes_per_token": per_token}],
            }
        )
    )
    one_row = embedding[0].numel() * embedding.element_size()
    cases = [
        (ch08.check_1, 9e9 / 4.1e9, "best of its thread counts"),
        (ch08.check_2, per_token - _bytes({"e": embedding}) + one_row, "Gemma ties it"),
    ]
    for check, answer, hint in cases:
        assert check(answer, results=results) is False
        printed = capsys.readouterr().out
        assert printed.startswith("✗ not yet:") and hint in printed, printed
    assert ch08.check_1(21e9 / 4.1e9, results=results) and ch08.check_2(per_token, results=results)


# checks whose wrong answers are fed by the tests above that need more than one answer per call
WRONG_ELSEWHERE = {
    ("ch02", "check_1"),
    ("ch02", "check_3"),
    ("ch04b", "check_2"),
    ("ch08", "check_1"),
    ("ch08", "check_2"),
}


def test_every_check_is_fed_a_wrong_answer():
    covered = {(m, c) for m, c, *_ in WRONG + COURSE_WRONG} | WRONG_ELSEWHERE
    missing = [
        f"{chapter(lesson)}.{name}"
        for lesson in LESSONS
        for name, _ in inspect.getmembers(
            importlib.import_module(f"exercises.{chapter(lesson)}"), inspect.isfunction
        )
        if name.startswith("check_") and (chapter(lesson), name) not in covered
    ]
    assert not missing, f"no test gives these checks a wrong answer: {missing}"


# ---- the Chinese edition's checks answer in Chinese ------------------------------------------


def test_the_language_follows_the_notebooks_folder(tmp_path, monkeypatch):
    from exercises import language, verdict

    (tmp_path / "notebooks" / "zh-CN").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "notebooks" / "zh-CN")  # where the kernel of a zh-CN notebook runs
    assert language() == "zh-CN"
    monkeypatch.chdir(tmp_path / "notebooks")
    assert language() == "en"
    monkeypatch.setenv("QLLM_LANG", "zh-CN")  # the override, anywhere
    assert language() == "zh-CN"
    monkeypatch.chdir(tmp_path / "notebooks" / "zh-CN")
    monkeypatch.setenv("QLLM_LANG", "en")
    assert language() == "en"
    monkeypatch.setenv("QLLM_LANG", "fr")
    from helpers.errors import CourseError

    with pytest.raises(CourseError, match="QLLM_LANG must be zh-CN or en, not 'fr'"):
        verdict(True, "", "")


def _bilingual(node) -> bool:
    """A message argument of verdict(): empty, a say(en=, zh=) call, a variable (set from one), or
    a choice between those."""
    if isinstance(node, ast.Constant):
        return node.value == ""
    if isinstance(node, ast.Name):
        return True
    if isinstance(node, ast.IfExp):
        return _bilingual(node.body) and _bilingual(node.orelse)
    if isinstance(node, ast.BoolOp):
        return all(_bilingual(v) for v in node.values)
    if isinstance(node, ast.Call):
        func = node.func
        joined = isinstance(func, ast.Attribute) and func.attr == "join"
        return _is_say(func.value if joined else node)
    return False


def _is_say(node) -> bool:
    return isinstance(node, ast.Call) and getattr(node.func, "id", None) == "say"


def _strings(node) -> str:
    return "".join(
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    )


@pytest.mark.parametrize("path", sorted((ROOT / "exercises").glob("ch*.py")), ids=lambda p: p.stem)
def test_every_message_is_written_in_english_and_in_chinese(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "verdict":
            for message in node.args[1:]:
                assert _bilingual(message), f"{path.name}:{message.lineno}: not say(en=, zh=)"
        if _is_say(node):
            words = {k.arg: k.value for k in node.keywords}
            assert set(words) == {"en", "zh"} and not node.args, f"{path.name}:{node.lineno}"
            zh, en = _strings(words["zh"]), _strings(words["en"])
            assert CHINESE_TEXT.search(zh), f"{path.name}:{node.lineno}: zh not Chinese"
            assert not CHINESE_TEXT.search(en), f"{path.name}:{node.lineno}: en has Chinese"


def _told(printed: str) -> str:
    return printed.split("：", 1)[-1]


@pytest.mark.parametrize(
    "module, check, answer, hint, truth", WRONG, ids=[f"{m}.{c}" for m, c, *_ in WRONG]
)
def test_a_wrong_answer_gets_a_chinese_hint_in_the_chinese_edition(
    module, check, answer, hint, truth, chinese, capsys
):
    assert getattr(importlib.import_module(f"exercises.{module}"), check)(answer) is False
    printed = capsys.readouterr().out
    assert printed.startswith("✗ 还不对：") and CJK.search(_told(printed)), printed
    assert truth is None or truth not in printed.replace(",", ""), printed


@pytest.mark.parametrize("module, check, told", RAISED, ids=[f"{m}.{c}" for m, c, _ in RAISED])
def test_a_learners_error_is_reported_in_chinese(module, check, told, chinese, capsys):
    def broken(*args):
        raise KeyError("role")

    assert getattr(importlib.import_module(f"exercises.{module}"), check)(broken) is False
    printed = capsys.readouterr().out
    assert printed.startswith("✗ 还不对：你的函数抛出了 KeyError"), printed


@pytest.mark.parametrize(
    "module, check, make_answer, hint", COURSE_WRONG, ids=[f"{m}.{c}" for m, c, *_ in COURSE_WRONG]
)
def test_a_wrong_answer_on_the_course_models_gets_a_chinese_hint(
    module, check, make_answer, hint, course_cache, chinese, capsys
):
    assert getattr(importlib.import_module(f"exercises.{module}"), check)(make_answer()) is False
    printed = capsys.readouterr().out
    assert printed.startswith("✗ 还不对：") and CJK.search(_told(printed)), printed


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _pick(paths, pattern):
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(paths, allow_patterns=[pattern]))


def _save(text, path):
    import tempfile

    with tempfile.NamedTemporaryFile("w", dir=Path(path).parent, delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


def _trim(messages, count, budget):
    from helpers import chat

    return chat.trim_history(messages, count, budget).messages


def _cut(text, stops):
    found = [text.find(s) for s in stops if s in text]
    return text[: min(found)] if found else text


def _collect(lines):
    text = ""
    for line in lines:
        if line == "data: [DONE]":
            break
        if line.startswith("data: "):
            text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
    return text


def _loader_for(config):
    method = (config.get("quantization_config") or {}).get("quant_method")
    return method.lower() if method else "hf"


def _bits(name):
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
    return size * 8 / block


RIGHT = [  # (module, check, a right answer): the checks that need no course model
    (
        "ch00",
        "check_1",
        {
            ("avx2 laptop", "batch"): "float32",
            ("avx2 laptop", "decode"): "bfloat16",
            ("amx server", "batch"): "bfloat16",
            ("amx server", "decode"): "bfloat16",
        },
    ),
    ("ch00", "check_2", None),  # BATCH_OR_DECODE's answers, filled in by the test
    ("ch01", "check_2", _sha256),
    ("ch01", "check_3", _pick),
    ("ch03", "check_3", lambda w, s: (1 + w) / s - 1),
    ("ch03b", "check_2", _loader_for),
    ("ch04", "check_1", {t: _bits(t) for t in ("Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q6_K")}),
    ("ch04", "check_3", lambda n: -(-n // 256) * 256),
    ("ch04b", "check_1", lambda width: width % 256 == 0),
    (
        "ch06",
        "check_1",
        lambda call, times, prompt: (times[0] - call, (len(times) - 1) / (times[-1] - times[0])),
    ),
    ("ch06", "check_3", _cut),
    ("ch07", "check_1", _trim),
    ("ch07", "check_2", _save),
    (
        "ch07",
        "check_3",
        lambda replies, questions: sum(
            bool(re.search(p, r, re.IGNORECASE))
            for (_, p), r in zip(questions, replies, strict=True)
        ),
    ),
    (
        "ch09",
        "check_1",
        {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "What is GGUF?"},
            ],
            "max_tokens": 32,
            "temperature": 0,
            "stream": True,
        },
    ),
    ("ch09", "check_2", _collect),
]


@pytest.mark.parametrize("module, check, answer", RIGHT, ids=[f"{m}.{c}" for m, c, _ in RIGHT])
def test_a_right_answer_is_told_so_in_chinese(module, check, answer, chinese, capsys):
    checks = importlib.import_module(f"exercises.{module}")
    if (module, check) == ("ch00", "check_2"):
        answer = dict(zip(checks.BATCH_OR_DECODE, ["batch"] * 3 + ["decode"], strict=True))
    assert getattr(checks, check)(answer) is True, capsys.readouterr().out
    printed = capsys.readouterr().out
    assert printed.startswith("✓ 正确：") and CJK.search(_told(printed)), printed
