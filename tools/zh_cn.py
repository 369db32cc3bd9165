"""Keep the Chinese edition (notebooks/zh-CN/, solutions/zh-CN/) in step with the English notebooks.

    # what differs; exit 1 if anything does (tests/test_zh_cn.py runs the same check)
    python tools/zh_cn.py check [--strict-comments]
    # carry English code over (Chinese comments of unchanged lines kept); add markdown to translate
    python tools/zh_cn.py sync
    # these cells are (re)translated
    python tools/zh_cn.py translated notebooks/zh-CN/01_download.ipynb c00 c37

Two folders have a Chinese twin: the lessons (notebooks/ -> notebooks/zh-CN/) and their worked
solutions (solutions/ -> solutions/zh-CN/); `check` and `sync` cover both. The two editions have the
same cells, with the same ids, in the same order. Code cells are the same program: their tokens,
comments and blank lines left out (IPython's `%magic` and `!shell` lines compared as text), and
their tags are equal, so a lesson cannot drift between languages; the comments and the markdown are
translated. `sync` is the one way code reaches the Chinese edition: edit the English notebook, run
`sync` (it keeps the Chinese comment of every line whose code did not change, and reports the lines
that took the English comment), then translate the markdown cells and comments it reports and mark
the markdown with `translated` (it carries `"zh_cn_todo": true` in its metadata until translated).
Each Chinese markdown cell also records a hash of the English text it translates (`zh_cn_from`), so
`check` says when the English prose changed after translation. `check` warns about code cells whose
comments are still English; `check --strict-comments` makes that an error.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import fcntl
import hashlib
import io
import json
import re
import sys
import tokenize
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


# An IPython line magic or shell escape (`%pip install ...`, `!ls`): not Python, compared as text.
MAGIC = re.compile(r"^\s*[%!]")
# A comment of words (not a code fragment or a linter directive): what a translator translates.
WORDS = re.compile(r"[A-Za-z]{2,}[,:;]?\s+[A-Za-z]{2,}")
# A commented-out shell command (`#   pip install autoawq`): code to copy as it is, not words.
COMMAND = re.compile(r"^#\s*(?:pip|git|cd|conda|apt-get)\s")


def magic_comment_at(line: str) -> int | None:
    """Where a shell-style `#` comment starts in a magic line (outside quotes), or None."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return i
    return None


def split_comments(text: str) -> list[tuple[str, str]]:
    """Each line of a code cell as (its code, its comment): the code without trailing blanks, the
    comment from its `#` on ("" where none). A cell Python cannot tokenize is all code."""
    lines = text.split("\n")
    starts: dict[int, int] = {}
    parsable = []
    for n, line in enumerate(lines):
        if MAGIC.match(line):
            at = magic_comment_at(line)
            if at is not None:
                starts[n] = at
            parsable.append(line[: len(line) - len(line.lstrip())] + "pass")
        else:
            parsable.append(line)
    try:
        for tok in tokenize.generate_tokens(io.StringIO("\n".join(parsable)).readline):
            if tok.type == tokenize.COMMENT:
                starts[tok.start[0] - 1] = tok.start[1]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return [(line.rstrip(), "") for line in lines]
    return [
        (line[: starts[n]].rstrip(), line[starts[n] :]) if n in starts else (line.rstrip(), "")
        for n, line in enumerate(lines)
    ]


def program(text: str) -> list[str]:
    """A code cell's program: its lines of code, comments and blank lines left out. The tokens of
    each line are what Python runs, so two cells with the same program differ only in comments."""
    return [code for code, _ in split_comments(text) if code.strip()]


def first_difference(a: str, b: str) -> str:
    """The first line of code where two cells' programs differ, for the error message."""
    one, two = program(a), program(b)
    for x, y in zip(one + [""], two + [""], strict=False):
        if x != y:
            return f"English {x.strip()[:50]!r}, Chinese {y.strip()[:50]!r}"
    return "the same program"


def same_program(a: str, b: str) -> bool:
    """Both cells' tokens, without comments and the line breaks that end no statement, are equal
    (their lines of code, where Python cannot tokenize one)."""
    one, two = tokens(a), tokens(b)
    return one == two if one is not None and two is not None else program(a) == program(b)


def tokens(text: str) -> list[tuple[int, str]] | None:
    """Python's tokens of the cell (magic lines as text), without COMMENT and NL: None where Python
    cannot tokenize it (then program() alone decides)."""
    lines = []
    for line in text.split("\n"):
        if MAGIC.match(line):
            at = magic_comment_at(line)
            magic = line[:at] if at is not None else line
            line = line[: len(line) - len(line.lstrip())] + repr(magic.strip())
        lines.append(line)
    try:
        return [
            (tok.type, tok.string)
            for tok in tokenize.generate_tokens(io.StringIO("\n".join(lines)).readline)
            if tok.type not in (tokenize.COMMENT, tokenize.NL)
        ]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None


def untranslated_comments(text: str) -> list[str]:
    """The comments of a Chinese code cell that are English words and no Chinese (a commented-out
    shell command is code, not words)."""
    return [
        comment
        for _, comment in split_comments(text)
        if comment
        and WORDS.search(comment)
        and not COMMAND.match(comment)
        and not re.search(f"[{HAN}]", comment)
    ]


def merge_code(english: str, chinese: str) -> tuple[str, list[int]]:
    """The English cell with the Chinese comment kept on every line whose code is unchanged; and
    the (1-based) lines whose English comment is new and still to translate."""
    en, zh = split_comments(english), split_comments(chinese)
    en_lines, zh_lines = english.split("\n"), chinese.split("\n")
    matcher = difflib.SequenceMatcher(
        a=[code for code, _ in en], b=[code for code, _ in zh], autojunk=False
    )
    merged, todo = [], []
    for op, a0, a1, b0, _b1 in matcher.get_opcodes():
        for k in range(a1 - a0):
            if op == "equal":
                merged.append(zh_lines[b0 + k])
            else:
                merged.append(en_lines[a0 + k])
                if WORDS.search(en[a0 + k][1]) and not COMMAND.match(en[a0 + k][1]):
                    todo.append(a0 + k + 1)
    return "\n".join(merged), todo


def as_source(text: str) -> list[str]:
    """A cell's text as notebook JSON keeps it: one string per line, each with its newline."""
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


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
            if not same_program(source(a), source(b)):
                found.append(
                    f"{name} cell {i} ({a['id']}): code differs from the English edition, not "
                    f"only in comments: {first_difference(source(a), source(b))} (run sync)"
                )
            if a["metadata"].get("tags") != b["metadata"].get("tags"):
                found.append(f"{name} cell {i} ({a['id']}): tags differ from the English edition")
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


def comment_warnings(en_path: Path, zh_path: Path) -> list[str]:
    """Code cells of the Chinese twin whose comments are still English (a warning, unless
    `check --strict-comments`)."""
    if not zh_path.exists():
        return []
    found = []
    for i, cell in enumerate(read(zh_path)["cells"]):
        if cell["cell_type"] == "code" and (english := untranslated_comments(source(cell))):
            found.append(
                f"{shown(zh_path)} cell {i} ({cell['id']}): comment not translated "
                f"({len(english)}: {english[0][:50]!r})"
            )
    return found


def sync(en_path: Path, zh_path: Path) -> list[str]:
    """Bring the twin in step: code from English with the Chinese comments of unchanged lines
    kept, translated markdown kept, new markdown marked to do."""
    en = read(en_path)
    old = {c["id"]: c for c in read(zh_path)["cells"]} if zh_path.exists() else {}
    cells, todo, comments = [], [], []
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
            if twin is not None and twin["cell_type"] == "code":
                text, lines = merge_code(source(cell), source(twin))
                new["source"] = new["source"] if text == source(cell) else as_source(text)
                if lines:
                    comments.append(f"{cell['id']} lines {lines}")
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
    if comments:
        notes.append(
            f"{shown(zh_path)}: translate the comments of code cells {', '.join(comments)}"
        )
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
        comments = [w for en, zh in pairs() for w in comment_warnings(en, zh)]
        if "--strict-comments" in argv:
            found += comments
        elif comments:
            print(f"warning: {len(comments)} code cells have English comments:")
            print("\n".join("  " + w for w in comments))
        print("\n".join(found) or "the Chinese edition is in step with the English one")
        return 1 if found else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
