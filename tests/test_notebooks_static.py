"""Every notebook, read (not run): ready for Colab and for a fresh kernel anywhere.

A title cell with "What you will learn" and an Open-in-Colab badge pointing at this repository and
the notebook's own path; a first code cell that installs only on Colab (and turns on Colab's widget
manager); one `parameters` cell; no absolute paths, no input(), no trust_remote_code=True; committed
with outputs cleared.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import nbformat
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(
    (ROOT / "notebooks" / "zh-CN").glob("*.ipynb")
)
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"][
    "Repository"
].rstrip("/")
REPO = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)(?:\.git)?", REPO_URL).group(
    1
)  # owner/name
COLAB_GUARD = '"google.colab" in sys.modules'
ABSOLUTE_PATH = re.compile(r"(?<![\w./:~-])/(?:work|root|home|tmp)(?:/|\b)")


def load(path: Path):
    return nbformat.read(path, as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def where(path: Path, nb, cell) -> str:
    return f"{path.name}, cell {nb.cells.index(cell)}"


@pytest.fixture(
    params=NOTEBOOKS,
    ids=[p.relative_to(ROOT / "notebooks").with_suffix("").as_posix() for p in NOTEBOOKS],
)
def notebook(request):
    return request.param, load(request.param)


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


def test_valid_nbformat(notebook):
    path, nb = notebook
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", (
        f"{path.name}: kernelspec should be python3"
    )


def test_title_learn_list_and_colab_badge(notebook):
    path, nb = notebook
    first = nb.cells[0]
    assert first.cell_type == "markdown", (
        f"{path.name}: the first cell should be the markdown title cell"
    )
    assert re.match(r"# \S", first.source), (
        f"{path.name}: the first cell should start with a '# ' title"
    )
    assert re.search(r"what you will learn|你将学到", first.source, re.I), (
        f"{path.name}: no 'What you will learn' section"
    )
    badge = re.search(
        r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
        r"\((https://colab\.research\.google\.com/github/[^)\s]+)\)",
        first.source,
        re.I,
    )
    assert badge, f"{path.name}: the title cell has no Open-in-Colab badge"
    rel = path.relative_to(ROOT).as_posix()
    expected = re.compile(
        rf"https://colab\.research\.google\.com/github/{re.escape(REPO)}"
        rf"/blob/[^/]+/{re.escape(rel)}"
    )
    assert expected.fullmatch(badge.group(1)), (
        f"{path.name}: the badge opens {badge.group(1)}, expected github/{REPO}/blob/<branch>/{rel}"
    )


def test_first_code_cell_installs_only_on_colab(notebook):
    path, nb = notebook
    cells = code_cells(nb)
    assert cells, f"{path.name}: no code cells"
    lines = cells[0].source.splitlines()
    guard = next(
        (
            i
            for i, line in enumerate(lines)
            if COLAB_GUARD in line and line.lstrip().startswith("if ")
        ),
        None,
    )
    assert guard is not None, (
        f"{path.name}: the first code cell should start an `if {COLAB_GUARD}:` block"
    )
    indent = len(lines[guard]) - len(lines[guard].lstrip())

    def inside(i: int) -> bool:  # line i is in the guarded block
        return i > guard and all(
            not ln.strip() or len(ln) - len(ln.lstrip()) > indent for ln in lines[guard + 1 : i + 1]
        )

    installs = [i for i, line in enumerate(lines) if re.search(r"\bpip\b.*\binstall\b", line)]
    assert installs, f"{path.name}: the Colab cell installs nothing"
    for i in installs:
        assert inside(i), f"{path.name}: an install outside the Colab guard: {lines[i].strip()!r}"
        assert re.search(r"\b(torch|transformers)\b", lines[i]) is None, (
            f"{path.name}: Colab already has torch and transformers; do not reinstall them: "
            f"{lines[i].strip()!r}"
        )
    spec = " ".join(lines[i] for i in installs)
    assert f"quantized-llms-locally[colab] @ git+{REPO_URL}" in spec, (
        f"{path.name}: the Colab cell should install "
        f"'quantized-llms-locally[colab] @ git+{REPO_URL}'"
    )
    manager = [i for i, line in enumerate(lines) if "enable_custom_widget_manager()" in line]
    assert manager and all(inside(i) for i in manager), (
        f"{path.name}: the Colab cell should call output.enable_custom_widget_manager() "
        "inside the guard"
    )


def test_one_parameters_cell(notebook):
    path, nb = notebook
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, (
        f"{path.name}: expected exactly one cell tagged 'parameters', found cells {tagged}"
    )
    assert nb.cells[tagged[0]].cell_type == "code", (
        f"{path.name}: the 'parameters' cell should be a code cell"
    )


def test_no_absolute_paths(notebook):
    path, nb = notebook
    found = [
        f"{where(path, nb, c)}: {m.group(0)!r} in {line.strip()[:100]!r}"
        for c in nb.cells
        for line in c.source.splitlines()
        for m in ABSOLUTE_PATH.finditer(line)
    ]
    assert not found, "absolute paths (they exist only on one machine):\n" + "\n".join(found)


def test_no_input_calls(notebook):
    path, nb = notebook
    found = [
        f"{where(path, nb, c)}: {line.strip()[:100]!r}"
        for c in code_cells(nb)
        for line in c.source.splitlines()
        if re.search(r"(?<![\w.])input\s*\(", line.split("#")[0])
    ]
    assert not found, "input() blocks Run All and fails under nbmake:\n" + "\n".join(found)


def test_no_trust_remote_code(notebook):
    # History cells (tagged skip-execution, never run) may quote the original tutorial's code.
    path, nb = notebook
    found = [
        where(path, nb, c)
        for c in code_cells(nb)
        if "skip-execution" not in c.metadata.get("tags", [])
        and re.search(r"trust_remote_code\s*=\s*True", c.source)
    ]
    assert not found, f"trust_remote_code=True appears in: {', '.join(found)}"


def test_outputs_cleared(notebook):
    path, nb = notebook
    dirty = [
        where(path, nb, c) for c in code_cells(nb) if c.outputs or c.execution_count is not None
    ]
    assert not dirty, (
        f"commit notebooks with outputs cleared; these have outputs or counts: {', '.join(dirty)}"
    )


def test_lessons_use_no_private_names(notebook):
    """A lesson shows calls a learner would type: no `obj._private` attribute (issue 18)."""
    path, nb = notebook
    for cell in code_cells(nb):
        for line in cell.source.splitlines():
            code = line.split("#", 1)[0]
            assert not re.search(r"\w\._[a-z]", code), (
                f"{path.name}: a private name in a lesson cell: {line.strip()!r}"
            )


# Issue 29: a core lesson leads with the plain library call (helpers come after, as "the same, with
# checks"). Each row: the lesson, the library it teaches, and the calls that must appear in that
# library cell (one name of each group; none: any call reached from the library).
CORE_LESSONS = [
    pytest.param("01_download", "huggingface_hub", ()),
    pytest.param("02_gptq", "transformers", ()),
    pytest.param("03_awq", "transformers", ()),
    pytest.param("04_gguf", "llama_cpp", ()),
    pytest.param("05_prompt_templates", "transformers", ({"apply_chat_template"},)),
    pytest.param("06_streaming", "transformers", ({"TextStreamer", "TextIteratorStreamer"},)),
    pytest.param("07_chat", "transformers", ({"apply_chat_template"}, {"generate"})),
    pytest.param("09_serve", "openai", ()),
]


def python_of(cell) -> ast.Module:
    """A code cell as Python: IPython's `%magic` and `!shell` lines become `pass`."""
    lines = [
        line[: len(line) - len(line.lstrip())] + "pass"
        if line.lstrip().startswith(("%", "!"))
        else line
        for line in cell.source.splitlines()
    ]
    return ast.parse("\n".join(lines))


def root_name(node) -> str | None:
    """The name a call or attribute chain starts from: `tok` in `tok.apply_chat_template(...)`,
    `loading` in `loading.load_model(...).model.generate`."""
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


class Origins(ast.NodeVisitor):
    """Walks the cells in order and says where each name came from: `helpers`, the lesson's
    library, or neither. Imports bind a name; a simple assignment from a call or attribute passes
    the origin on (`tok = AutoTokenizer.from_pretrained(...)`, then `tok` is the library's)."""

    def __init__(self, library: str):
        self.library = library
        self.origin: dict[str, str] = {}

    def package(self, module: str | None) -> str | None:
        top = (module or "").split(".")[0]
        return top if top in ("helpers", self.library) else None

    def visit_Import(self, node):
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            self.origin.pop(bound, None)
            if package := self.package(alias.name):
                self.origin[bound] = package

    def visit_ImportFrom(self, node):
        for alias in node.names:
            bound = alias.asname or alias.name
            self.origin.pop(bound, None)
            if node.level == 0 and (package := self.package(node.module)):
                self.origin[bound] = package

    def bind(self, target, origin: str | None):
        for name in ast.walk(target):
            if isinstance(name, ast.Name):
                self.origin.pop(name.id, None)
                if origin:
                    self.origin[name.id] = origin

    def origin_of(self, node) -> str | None:
        return self.origin.get(root_name(node)) if node is not None else None

    def visit_Assign(self, node):
        self.generic_visit(node)
        for target in node.targets:
            self.bind(target, self.origin_of(node.value))

    def visit_withitem(self, node):
        self.generic_visit(node)
        if node.optional_vars is not None:
            self.bind(node.optional_vars, self.origin_of(node.context_expr))

    def calls(self, tree) -> dict[str, set[str]]:
        """Visit one cell; the names it calls, by origin."""
        self.visit(tree)
        found: dict[str, set[str]] = {"helpers": set(), self.library: set()}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (origin := self.origin_of(node.func)):
                found[origin].add(called_name(node))
        return found


def first_calls(nb, library: str, needs=()) -> tuple[int | None, int | None]:
    """(the first cell calling `library` with one name of each group in `needs`, the first cell
    calling anything from `helpers`), as indices into nb.cells. Cells tagged skip-execution never
    run and count for neither."""
    origins = Origins(library)
    first_library = first_helpers = None
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "skip-execution" in cell.metadata.get("tags", []):
            continue
        calls = origins.calls(python_of(cell))
        if first_helpers is None and calls["helpers"]:
            first_helpers = index
        teaches = calls[library] and all(group & calls[library] for group in needs)
        if first_library is None and teaches:
            first_library = index
    return first_library, first_helpers


def test_first_calls_follows_names_to_their_library():
    cells = [
        "%pip install nothing\nfrom transformers import AutoTokenizer\nfrom helpers import loading",
        "lm = loading.load_model('m')\ntok = lm.tokenizer\ntok.apply_chat_template([])",
        "tok = AutoTokenizer.from_pretrained('m')",
        "with tok.as_target() as t:\n    !echo hi\n    t.apply_chat_template([])",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    assert first_calls(nb, "transformers") == (2, 1)
    assert first_calls(nb, "transformers", ({"apply_chat_template"},)) == (3, 1)
    assert first_calls(nb, "transformers", ({"generate"},)) == (None, 1)


@pytest.mark.parametrize(("lesson", "library", "needs"), CORE_LESSONS)
def test_core_lesson_leads_with_the_library_call(lesson, library, needs):
    """In a core lesson the first cell that calls the lesson's library (the calls the lesson is
    about) comes before the first cell that calls anything from `helpers` (issue 29)."""
    want = " and ".join("/".join(sorted(group)) for group in needs) or library
    for path in (
        ROOT / "notebooks" / f"{lesson}.ipynb",
        ROOT / "notebooks" / "zh-CN" / f"{lesson}.ipynb",
    ):
        first_library, first_helpers = first_calls(load(path), library, needs)
        assert first_library is not None, f"{path.name}: no cell calls {want}"
        assert first_helpers is None or first_library < first_helpers, (
            f"{path.name}: the first cell calling helpers is cell {first_helpers}, before the "
            f"first cell calling {want} (cell {first_library}): lead with the plain library call"
        )
