"""The Chinese edition (notebooks/zh-CN/, solutions/zh-CN/) is a twin of the English one: same
cells, same ids, same order, code cells the same program (their tokens without comments: a Chinese
comment is allowed, any code difference fails) with Chinese comments, every prose cell translated
(and re-translated when the English changes), Chinese and Latin text spaced, the glossary's terms
used. `python tools/zh_cn.py sync` brings code over and keeps the Chinese comments; see its
docstring.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("zh_cn", ROOT / "tools" / "zh_cn.py")
zh_cn = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zh_cn)
PAIRS = zh_cn.pairs()
# a lesson's id is its name (05_prompt_templates), a solution's is prefixed
# (solutions/05_prompt_templates)
IDS = [
    en.stem if en.parent == ROOT / "notebooks" else en.relative_to(ROOT).with_suffix("").as_posix()
    for en, _ in PAIRS
]


@pytest.mark.parametrize("english, chinese", PAIRS, ids=IDS)
def test_every_notebook_has_a_chinese_twin_in_step(english, chinese):
    # as `check --strict-comments`: an English code comment in the Chinese edition fails too
    found = zh_cn.problems(english, chinese) + zh_cn.comment_warnings(english, chinese)
    assert not found, "\n".join(found[:12])


def test_the_check_catches_drift(tmp_path):
    english = sorted((ROOT / "notebooks").glob("*.ipynb"))[0]
    twin = tmp_path / "zh-CN" / english.name
    zh_cn.sync(english, twin)
    assert any(
        "still to translate" in p for p in zh_cn.problems(english, twin)
    )  # fresh twin: all English
    nb = json.loads(twin.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            cell["source"] = ["中文说明，含 4 bit 与 `code`。"]
            cell["metadata"].pop(zh_cn.TODO)
    zh_cn.write(twin, nb)
    assert zh_cn.problems(english, twin) == []  # translated: in step
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["source"] = code["source"] + ["\nchanged = 1"]
    zh_cn.write(twin, nb)
    assert any("code differs" in p and code["id"] in p for p in zh_cn.problems(english, twin))
    zh_cn.sync(english, twin)  # code comes back from English; translations stay
    assert zh_cn.problems(english, twin) == []
    nb = json.loads(twin.read_text(encoding="utf-8"))
    next(c for c in nb["cells"] if c["cell_type"] == "markdown")["source"] = ["中文4bit没有空格。"]
    zh_cn.write(twin, nb)
    assert any("space between Chinese and Latin" in p for p in zh_cn.problems(english, twin))
    english_nb = json.loads(english.read_text(encoding="utf-8"))
    next(c for c in english_nb["cells"] if c["cell_type"] == "markdown")["source"].append(
        "\nNew English text."
    )
    changed = tmp_path / english.name
    zh_cn.write(changed, english_nb)
    assert any("English text changed" in p for p in zh_cn.problems(changed, twin))


# One glossary (docs/glossary.md): the Chinese prose uses its terms, not the variants it lists.
GLOSSARY = ROOT / "docs" / "glossary.md"
ZH_PAGES = [ROOT / "README.zh-CN.md", *sorted((ROOT / "docs" / "zh-CN").glob("*.md"))]


def glossary() -> list[tuple[str, str, list[str]]]:
    """(English term, Chinese term, variants not to use), one per row of the glossary's table."""
    rows = []
    for line in GLOSSARY.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] == "English" or set(cells[0]) <= set("-"):
            continue
        english, chinese, variants, _meaning = cells
        rows.append((english, chinese, [v.strip() for v in variants.split(",") if v.strip()]))
    return rows


def variant_pattern(variant: str) -> re.Pattern:
    """A Latin variant matches as a whole word (plural too; not inside a name such as hf-mirror.com
    or group_size), in any case; a Chinese one anywhere."""
    if re.fullmatch(r"[A-Za-z][A-Za-z -]*", variant):
        return re.compile(rf"(?<![\w./-]){re.escape(variant)}s?(?![\w/-]|\.\w)", re.I)
    return re.compile(re.escape(variant))


def drift(markdown: str) -> list[str]:
    """'variant (use TERM)' for every glossary variant in this markdown's prose."""
    rows = glossary()
    text = re.sub(r"https?://\S+", " ", zh_cn.prose(markdown))
    for _english, chinese, _variants in sorted(rows, key=lambda r: -len(r[1])):
        text = text.replace(chinese, " ")  # the terms themselves: 计算内核 is no 内核
    found = {}
    for english, chinese, variants in rows:
        for variant in variants:
            if variant_pattern(variant).search(text):
                found.setdefault(variant, []).append(f"{chinese} ({english})")
    return [f"{v!r} (use {' or '.join(terms)})" for v, terms in found.items()]


def notebook_drift() -> list[str]:
    """'notebook cell-id: variants' for every markdown cell of the Chinese edition that drifts."""
    found = []
    for _english, chinese in PAIRS:
        for cell in zh_cn.read(chinese)["cells"]:
            if cell["cell_type"] == "markdown" and (terms := drift(zh_cn.source(cell))):
                found.append(f"{zh_cn.shown(chinese)} {cell['id']}: {'; '.join(terms)}")
    return found


def test_the_glossary_has_the_course_terms():
    terms = {english: chinese for english, chinese, _ in glossary()}
    assert terms["checkpoint"] == "检查点" and terms["prompt"] == "提示词", terms
    assert terms["compute kernel"] == "计算内核" and terms["Jupyter kernel"] == "Jupyter 内核"
    for english in ("quantization", "perplexity", "calibration", "group size", "bandwidth"):
        assert english in terms, english
    chinese = [c for _, c, _ in glossary()]
    assert len(chinese) == len(set(chinese)), "one Chinese term per idea"


def test_drift_is_found_outside_code_only():
    assert drift("这个 checkpoint 的 kernel 很慢。") == [
        "'checkpoint' (use 检查点 (checkpoint))",
        "'kernel' (use 计算内核 (compute kernel) or Jupyter 内核 (Jupyter kernel))",
    ]
    assert (
        drift("这个检查点用计算内核运行，重启 Jupyter 内核，`kernel`、`checkpoint` 是代码。") == []
    )
    assert drift("```python\nprompt = 1  # kernel\n```\n见 https://hf-mirror.com/x 。") == []


@pytest.mark.parametrize("page", ZH_PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_chinese_docs_use_the_glossary_terms(page):
    found = drift(page.read_text(encoding="utf-8"))
    assert not found, f"{page.relative_to(ROOT)}: " + "; ".join(found)


def test_chinese_notebooks_use_the_glossary_terms():
    found = notebook_drift()
    assert not found, "\n".join(found)


ENGLISH_CELL = """%pip install -q "course[colab]"  # install the course
x = 1  # the first value, kept as it is
if x:
    # a comment line of its own
    y = "# not a comment"  # says why
"""
CHINESE_CELL = """%pip install -q "course[colab]"  # 安装本课程
x = 1  # 第一个值，保持不变
if x:
    # 单独一行的注释
    y = "# not a comment"  # 说明原因
"""


def test_a_commented_out_command_is_not_an_english_comment():
    cell = "#   pip install autoawq autoawq-kernels\n#   git clone x.git\nx = 1  # one value\n"
    assert zh_cn.untranslated_comments(cell) == ["# one value"]


def test_a_chinese_comment_is_the_same_program():
    assert zh_cn.same_program(ENGLISH_CELL, CHINESE_CELL)
    assert zh_cn.same_program(ENGLISH_CELL, CHINESE_CELL.replace("    # 单独一行的注释\n", ""))


@pytest.mark.parametrize(
    "change",
    [
        ('"# not a comment"', '"# not a comment!"'),  # a string literal, even one with a #
        ("x = 1", "x = 2"),  # a number
        ('"course[colab]"', '"course[all]"'),  # a %pip line
        ("    y =", "    z ="),  # a name
    ],
)
def test_any_code_difference_fails_with_the_cell_id(tmp_path, change):
    assert not zh_cn.same_program(ENGLISH_CELL, CHINESE_CELL.replace(*change))
    english = tmp_path / "en.ipynb"
    twin = tmp_path / "zh-CN" / "en.ipynb"
    nb = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    nb["cells"] = [
        {"cell_type": "code", "id": "cell-a", "metadata": {}, "source": ENGLISH_CELL,
         "outputs": [], "execution_count": None}
    ]  # fmt: skip
    zh_cn.write(english, nb)
    twin.parent.mkdir()
    nb["cells"][0]["source"] = CHINESE_CELL
    zh_cn.write(twin, nb)
    assert zh_cn.problems(english, twin) == []
    nb["cells"][0]["source"] = CHINESE_CELL.replace(*change)
    zh_cn.write(twin, nb)
    (problem,) = zh_cn.problems(english, twin)
    assert "cell-a" in problem and "code differs" in problem, problem


def test_sync_keeps_the_chinese_comments_of_unchanged_lines(tmp_path):
    english = tmp_path / "en.ipynb"
    twin = tmp_path / "zh-CN" / "en.ipynb"
    cell = {"cell_type": "code", "id": "cell-a", "metadata": {}, "outputs": [],
            "execution_count": None}  # fmt: skip
    nb = {"cells": [dict(cell, source=CHINESE_CELL)], "metadata": {}, "nbformat": 4,
          "nbformat_minor": 5}  # fmt: skip
    twin.parent.mkdir()
    zh_cn.write(twin, nb)
    changed = ENGLISH_CELL.replace("x = 1  # the first", "x = 2  # the second")
    nb["cells"] = [dict(cell, source=changed + "z = y  # a new line of code\n")]
    zh_cn.write(english, nb)
    (note,) = zh_cn.sync(english, twin)
    assert "cell-a lines [2, 6]" in note, note  # the lines that took the English comment
    synced = zh_cn.source(zh_cn.read(twin)["cells"][0])
    assert synced == (
        '%pip install -q "course[colab]"  # 安装本课程\n'
        "x = 2  # the second value, kept as it is\n"
        "if x:\n"
        "    # 单独一行的注释\n"
        '    y = "# not a comment"  # 说明原因\n'
        "z = y  # a new line of code\n"
    )
    assert zh_cn.problems(english, twin) == []
    (warning,) = zh_cn.comment_warnings(english, twin)
    assert "cell-a" in warning and "comment not translated" in warning


def test_check_strict_comments_fails_on_english_comments(tmp_path, monkeypatch, capsys):
    english = tmp_path / "en.ipynb"
    twin = tmp_path / "zh-CN" / "en.ipynb"
    cell = {"cell_type": "code", "id": "cell-a", "metadata": {}, "outputs": [],
            "execution_count": None, "source": ENGLISH_CELL}  # fmt: skip
    zh_cn.write(english, {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    twin.parent.mkdir()
    zh_cn.write(twin, zh_cn.read(english))
    monkeypatch.setattr(zh_cn, "pairs", lambda: [(english, twin)])
    assert zh_cn.main(["zh_cn.py", "check"]) == 0
    assert "comment not translated" in capsys.readouterr().out
    assert zh_cn.main(["zh_cn.py", "check", "--strict-comments"]) == 1
    zh_cn.write(twin, dict(zh_cn.read(english), cells=[dict(cell, source=CHINESE_CELL)]))
    assert zh_cn.main(["zh_cn.py", "check", "--strict-comments"]) == 0
