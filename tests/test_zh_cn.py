"""The Chinese edition (notebooks/zh-CN/, solutions/zh-CN/) is a twin of the English one: same
cells, same ids, same order, code cells identical byte for byte, every prose cell translated (and
re-translated when the English changes), Chinese and Latin text spaced. `python tools/zh_cn.py sync`
brings code over; see its docstring.
"""

from __future__ import annotations

import importlib.util
import json
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
    found = zh_cn.problems(english, chinese)
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
    code["source"] = code["source"] + ["\n# changed"]
    zh_cn.write(twin, nb)
    assert any("code differs" in p for p in zh_cn.problems(english, twin))
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
