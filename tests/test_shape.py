"""The shape of the code: `helpers` in layers imported only downward, no cycle, no course machinery.

Every import is read from the source (function-local ones included), so an import hidden inside a
function cannot smuggle a cycle or an upward dependency past this test.
"""

import ast
import json
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
HELPERS = ROOT / "helpers"

# Three tiers, each in order: a module may import any module of a lower tier, or one listed before
# it in its own tier. So every import points down this list, and no cycle is possible.
TIERS = {
    # facts, files, errors; the quantizing and figure tools lessons call
    "bottom": [
        "errors",
        "env",
        "procs",
        "precision",
        "gguf_tools",
        "gguf_convert",
        "quantize",
        "awq_gemma3",
        "figures",
    ],
    "middle": [
        "hub",
        "downloading",
        "model_info",
        "memory",
        "kernels",
        "loading",
        "generation",  # get, fit, load, run
        "quality",
        "timing",
        "plan",
        "setup_check",
    ],  # measure, plan
    "top": ["streaming", "templates", "chat", "chat_widget", "serving"],  # what a learner drives
}
ORDER = [name for tier in TIERS.values() for name in tier]
MACHINERY = ("course", "bench", "tools", "tests", "exercises")


def helpers_modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(HELPERS.glob("*.py")) if p.stem != "__init__"}


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level:  # from . import x / from .x import y, inside helpers
                if node.module:
                    found.append((f"helpers.{node.module}", names, node.lineno))
                else:
                    found += [(f"helpers.{name}", [], node.lineno) for name in names]
            else:
                module = node.module or ""
                if module == "helpers":
                    found += [(f"helpers.{name}", [], node.lineno) for name in names]
                else:
                    found.append((module, names, node.lineno))
    return found


def helpers_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in helpers_modules().items():
        graph[name] = {
            imported.split(".")[1]
            for imported, _, _ in imports_of(path)
            if imported.startswith("helpers.") and imported.split(".")[1] != name
        }
    return graph


def test_every_module_has_a_place_in_the_tiers():
    assert sorted(helpers_modules()) == sorted(ORDER), (
        "give a new helpers module its place in TIERS"
    )


def test_imports_go_down_only():
    upward = [
        f"{name} imports {dep}, which TIERS puts above it"
        for name, deps in helpers_graph().items()
        for dep in deps
        if ORDER.index(dep) > ORDER.index(name)
    ]
    assert not upward, upward


def test_no_import_cycle():
    graph = helpers_graph()
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                raise AssertionError(
                    "import cycle: " + " -> ".join(path[path.index(dep) :] + [dep])
                )
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_helpers_never_import_the_course_machinery():
    bad = [
        f"helpers/{name}.py:{line} imports {imported}"
        for name, path in helpers_modules().items()
        for imported, _, line in imports_of(path)
        if imported.split(".")[0] in MACHINERY
    ]
    assert not bad, bad


def test_no_private_name_crosses_a_module():
    bad = []
    for name, path in helpers_modules().items():
        for imported, names, line in imports_of(path):
            if imported.startswith("helpers."):
                bad += [
                    f"helpers/{name}.py:{line} takes {n} from {imported}"
                    for n in names
                    if n.startswith("_")
                ]
        # helpers_module._name after `from . import helpers_module`
        aliases = {
            imported.split(".")[1]
            for imported, names, _ in imports_of(path)
            if imported.startswith("helpers.") and not names
        }
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                bad.append(f"helpers/{name}.py:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not bad, bad


def test_the_shape_test_sees_function_local_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from .loading import _private\n    from helpers import chat\n")
    assert imports_of(sample) == [("helpers.loading", ["_private"], 2), ("helpers.chat", [], 3)]


def test_no_line_is_over_100_characters():
    """ruff's E501 lets a long URL or pragma through; the course's limit has no exceptions."""
    folders = ("helpers", "course", "bench", "tools", "exercises", "tests")
    long_lines = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in folders
        for path in sorted((ROOT / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if len(line) > 100
    ]
    assert not long_lines, long_lines


# What a lesson may take from course/, which builds and serves the course: the course models (their
# paths, and the local Hub and ModelScope servers that hand them out in notebook 01). Everything
# else a lesson calls lives in helpers/.
LESSON_COURSE_MODULES = {"models": "the course models: build, paths, stamps, local hub servers"}


def course_modules_used(source: str) -> set[str]:
    """The course modules a notebook's code or a module's source imports."""
    found = set()
    for line in source.splitlines():
        line = line.strip()
        if line.startswith("from course import "):
            names = line.removeprefix("from course import ").split("#")[0]
            found |= {name.split(" as ")[0].strip(" ()") for name in names.split(",")}
        elif line.startswith(("from course.", "import course.")):
            found.add(line.split()[1].split(".")[1])
    return found - {""}


def test_lessons_take_from_course_only_the_course_models():
    sources = {
        path.relative_to(ROOT): "\n".join(
            "".join(cell["source"])
            for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]
            if cell["cell_type"] == "code"
        )
        for folder in ("notebooks", "solutions")
        for path in sorted((ROOT / folder).rglob("*.ipynb"))
    }
    sources |= {
        path.relative_to(ROOT): path.read_text(encoding="utf-8")
        for path in sorted((ROOT / "exercises").glob("*.py"))
    }
    beyond = {
        str(name): sorted(course_modules_used(text) - set(LESSON_COURSE_MODULES))
        for name, text in sources.items()
        if course_modules_used(text) - set(LESSON_COURSE_MODULES)
    }
    assert not beyond, beyond


def test_the_boundary_check_reads_every_import_form():
    source = (
        "from course import models as course_models\n"
        "from course.chat_widget import ChatWidget  # a comment\n"
        "import course.figures\n"
        "from course import (serving, quantize)\n"
    )
    assert course_modules_used(source) == {
        "models",
        "chat_widget",
        "figures",
        "serving",
        "quantize",
    }
