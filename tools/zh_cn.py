"""Keep the Chinese edition (notebooks/zh-CN/, solutions/zh-CN/) in step with the English notebooks.

    # what differs; exit 1 if anything does (tests/test_zh_cn.py runs the same check)
    python tools/zh_cn.py check
    # copy every code cell from English; add English markdown cells still to translate
    python tools/zh_cn.py sync
    # these cells are (re)translated
    python tools/zh_cn.py translated notebooks/zh-CN/01_download.ipynb c00 c37

Two folders have a Chinese twin: the lessons (notebooks/ -> notebooks/zh-CN/) and their worked
solutions (solutions/ -> solutions/zh-CN/); `check` and `sync` cover both. The two editions have the
same cells, with the same ids, in the same order. Code cells are identical byte for byte (source and
tags), so a lesson cannot drift between languages; only markdown is translated. `sync` is the one
way code reaches the Chinese edition: edit the English notebook, run `sync`, then translate the
markdown cells it reports and mark them with `translated` (they carry `"zh_cn_todo": true` in their
metadata until translated). Each Chinese markdown cell also records a hash of the English text it
translates (`zh_cn_from`), so `check` says when the English prose changed after translation.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = [
    ROOT / "notebooks",
    ROOT / "solutions",
]  # English notebooks; each folder's Chinese twins are in FOLDER/zh-CN/
TODO = "zh_cn_todo"
FROM = "zh_cn_from"
HAN = "\u4e00-\u9fff"
# Chinese next to a Latin letter or digit without a space (in prose, outside code and links)
UNSPACED = re.compile(rf"[{HAN}][A-Za-z0-9]|[A-Za-z0-9][{HAN}]")


def pairs() -> list[tuple[Path, Path]]:
    """(English notebook, its Chinese twin) for every notebook of every folder in FOLDERS."""
    return [
        (en, folder / "zh-CN" / en.name)
        for folder in FOLDERS
        for en in sorted(folder.glob("*.ipynb"))
    ]


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@contextlib.contextmanager
def locked(path: Path):
    """The lock every notebook editor of the course takes (NOTEBOOK.lock), so parallel edits never
    interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write(path: Path, nb: dict) -> None:
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def source(cell: dict) -> str:
    return "".join(cell["source"])


def fingerprint(cell: dict) -> str:
    return hashlib.sha1(source(cell).encode("utf-8")).hexdigest()[:12]


def prose(text: str) -> str:
    """Markdown without what is not prose: fenced and inline code, link targets, HTML tags."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "] ", text)
    return re.sub(r"<[^>]+>", " ", text)


def problems(en_path: Path, zh_path: Path) -> list[str]:
    """Every way the Chinese twin differs from what it must be (empty: in step)."""
    if not zh_path.exists():
        return [f"{shown(zh_path)} is missing (run: python tools/zh_cn.py sync)"]
    en, zh = read(en_path), read(zh_path)
    name = shown(zh_path)
    en_ids = [(c["id"], c["cell_type"]) for c in en["cells"]]
    zh_ids = [(c["id"], c["cell_type"]) for c in zh["cells"]]
    if en_ids != zh_ids:
        return [
            f"{name}: cells differ from the English edition's (ids or types or order; run sync)"
        ]
    found = []
    for i, (a, b) in enumerate(zip(en["cells"], zh["cells"], strict=True)):
        if a["cell_type"] == "code":
            if source(a) != source(b) or a["metadata"].get("tags") != b["metadata"].get("tags"):
                found.append(f"{name} cell {i}: code differs from the English edition (run sync)")
            if b.get("outputs") or b.get("execution_count"):
                found.append(f"{name} cell {i}: has outputs (commit notebooks cleared)")
        elif a["cell_type"] == "markdown":
            text = source(b)
            if b["metadata"].get(TODO):
                found.append(f"{name} cell {i}: still to translate")
            elif b["metadata"].get(FROM) != fingerprint(a):
                found.append(f"{name} cell {i}: the English text changed since it was translated")
            elif re.search(r"[A-Za-z]{3}", prose(text)) and not re.search(f"[{HAN}]", text):
                found.append(f"{name} cell {i}: no Chinese in a prose cell")
            for line in prose(text).splitlines():
                if UNSPACED.search(line):
                    found.append(
                        f"{name} cell {i}: put a space between Chinese and Latin text: "
                        f"{line.strip()[:60]!r}"
                    )
                    break
    return found


def sync(en_path: Path, zh_path: Path) -> list[str]:
    """Bring the twin in step: code from English, translated markdown kept, new markdown marked to
    do."""
    en = read(en_path)
    old = {c["id"]: c for c in read(zh_path)["cells"]} if zh_path.exists() else {}
    cells, todo = [], []
    for i, cell in enumerate(en["cells"]):
        twin = old.get(cell["id"])
        if cell["cell_type"] == "markdown" and twin is not None and twin["cell_type"] == "markdown":
            cells.append(twin)
            if twin["metadata"].get(TODO) or twin["metadata"].get(FROM) != fingerprint(cell):
                todo.append(i)  # not yet translated, or the English changed since
            continue
        new = copy.deepcopy(cell)
        if new["cell_type"] == "code":
            new["outputs"], new["execution_count"] = [], None
        elif new["cell_type"] == "markdown":
            new["metadata"][TODO] = True
            new["metadata"][FROM] = fingerprint(cell)
            todo.append(i)
        cells.append(new)
    zh = copy.deepcopy(en)
    zh["cells"] = cells
    zh_path.parent.mkdir(parents=True, exist_ok=True)
    write(zh_path, zh)
    dropped = sorted(set(old) - {c["id"] for c in en["cells"]})
    notes = [f"{shown(zh_path)}: translate markdown cells {todo}"] if todo else []
    if dropped:
        notes.append(f"{shown(zh_path)}: dropped cells no longer in English: {dropped}")
    return notes


def mark_translated(zh_path: Path, ids: list[str]) -> None:
    """Record that these markdown cells now translate the current English text."""
    english = {
        c["id"]: c for c in read(zh_path.parent.parent / zh_path.name)["cells"]
    }  # FOLDER/zh-CN/X -> FOLDER/X
    with locked(zh_path):
        nb = read(zh_path)
        for cell in nb["cells"]:
            if cell["id"] in ids and cell["cell_type"] == "markdown":
                cell["metadata"].pop(TODO, None)
                cell["metadata"][FROM] = fingerprint(english[cell["id"]])
        write(zh_path, nb)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "check"
    if command == "sync":
        for en, zh in pairs():
            with locked(zh):
                notes = sync(en, zh)
            for note in notes:
                print(note)
        return 0
    if command == "translated" and len(argv) > 3:
        mark_translated(Path(argv[2]).resolve(), argv[3:])
        return 0
    if command == "check":
        found = [p for en, zh in pairs() for p in problems(en, zh)]
        print("\n".join(found) or "the Chinese edition is in step with the English one")
        return 1 if found else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
