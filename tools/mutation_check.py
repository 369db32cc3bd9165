"""Mutation check of the course's guard functions: does a small deliberate bug in one of them fail a
test?

    # every target (make mutation); exit 1 if a mutant survives
    python tools/mutation_check.py
    python tools/mutation_check.py --list          # the mutants, without running anything
    python tools/mutation_check.py --only hub      # targets whose name contains "hub"
    # two mutants at a time (each in its own copy of the repo)
    python tools/mutation_check.py --jobs 2

The guards are the functions that stop a learner from loading a model that does not fit, using a
broken checkpoint, trusting a cut-short file or overflowing a context window (issue 15). For each
one, this script makes mutants of its source, one small change each, and runs that guard's tests
against every mutant in a scratch copy of the repository (helpers/, course/, tests/, bench/,
pyproject.toml; the working tree is never touched). A mutant is "caught" when a test fails or times
out.

Mutations (one at a time, found with `ast`, written back as source):
  compare     < <= > >= == != is / is not, in / not in: the boundary and the opposite
  boolean     and <-> or; one operand of an and/or dropped; `not` removed; True <-> False
  condition   an if / ternary / comprehension condition negated (where a compare flip does not
              already)
  number      an int +1 and -1; a float x10 and +1 (module-level constants too, e.g. QUALITY_GATE)
  arithmetic  + <-> -, * <-> /, // -> /, a unary minus removed
  statement   a return, a raise or a call statement dropped
Message text (f-strings, the arguments of a raise or a warnings.warn) is not mutated: the
decisions are what is guarded here; the tests still check the figures a learner reads.

A mutant that no test can catch because it cannot change behaviour belongs in EQUIVALENT below,
with the reason. Anything else that survives is a missing test: add the test.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ["helpers", "course", "tests", "bench", "pyproject.toml"]
GUARDS = "tests/test_guards.py"


@dataclass
class Target:
    """One guard: a function (or Class.method, or a module-level constant) and the tests that guard
    it."""

    name: str  # a short label for the report
    module: str  # path of the source file, relative to the repo
    symbol: str  # "function", "Class.method" or "CONSTANT"
    tests: list[str]  # pytest arguments: files, node ids, "-k" expressions


def _guards(keyword: str, *extra: str) -> list[str]:
    return [GUARDS, "-k", keyword, *extra]


TARGETS = [
    # the quality gate of the course-model build
    Target("quality gate", "course/models.py", "passes_quality_gate", _guards("quality_gate")),
    Target("quality gate", "course/models.py", "QUALITY_GATE", _guards("quality_gate")),
    # the memory-fit check before loading
    Target("fit check", "helpers/memory.py", "free_memory_bytes", _guards("memory")),
    Target("fit check", "helpers/memory.py", "memory_overhead", _guards("memory")),
    Target("fit check", "helpers/memory.py", "estimate_memory_bytes", _guards("memory")),
    Target("fit check", "helpers/memory.py", "memory_needed", _guards("memory")),
    Target("fit check", "helpers/memory.py", "check_memory_fit", _guards("memory")),
    Target("fit check", "helpers/memory.py", "MEMORY_OVERHEAD_FRACTION", _guards("memory")),
    Target("fit check", "helpers/memory.py", "MEMORY_OVERHEAD_BYTES", _guards("memory")),
    Target("fit check", "helpers/memory.py", "GGUF_OVERHEAD_FRACTION", _guards("memory")),
    Target("fit check", "helpers/memory.py", "GGUF_OVERHEAD_BYTES", _guards("memory")),
    # GGUF validation: the header reader's bounds check and the whole-file check
    Target("GGUF validation", "helpers/gguf_tools.py", "_Cursor.take", _guards("gguf")),
    Target("GGUF validation", "helpers/gguf_tools.py", "validate_gguf", _guards("gguf")),
    # hub: what counts as already there, what a download must fetch, what is checked after it
    Target("hub presence", "helpers/hub.py", "present", _guards("hub")),
    Target("hub presence", "helpers/downloading.py", "_local_first", _guards("hub")),
    Target("hub presence", "helpers/hub.py", "local_file_record", _guards("hub")),
    Target("hub size", "helpers/downloading.py", "_plan", _guards("hub")),
    Target("hub size", "helpers/downloading.py", "DownloadPlan.need_bytes", _guards("hub")),
    Target("hub size", "helpers/downloading.py", "DownloadPlan.fits", _guards("hub")),
    Target("hub size", "helpers/downloading.py", "DownloadPlan.check", _guards("hub")),
    Target("hub size", "helpers/downloading.py", "_check_files", _guards("hub")),
    # history trimming (the chat)
    Target(
        "history trimming",
        "helpers/chat.py",
        "trim_history",
        _guards(
            "trim or oldest_pairs or too_long_for_the_window",
            "tests/test_chat.py::test_nothing_is_trimmed_when_it_fits",
            "tests/test_chat.py::test_oldest_pairs_go_first_and_the_system_prompt_stays",
            "tests/test_chat.py::test_a_message_too_long_for_the_window_is_a_clear_error",
            "tests/test_chat.py::test_trim_history_needs_the_question_last",
            "tests/test_chat.py::test_trimming_properties",
            "tests/test_faults.py::test_property_trim_history",
        ),
    ),
    # context fit, both backends: helpers/generation.py (each backend's fit_context; context_report
    # holds llama.cpp's decisions)
    Target("context fit", "helpers/generation.py", "fit_context", _guards("context")),
    Target(
        "context fit", "helpers/generation.py", "LlamaCppBackend.fit_context", _guards("context")
    ),
    Target(
        "context fit",
        "helpers/generation.py",
        "TransformersBackend.fit_context",
        _guards("context"),
    ),
    Target("context fit", "helpers/generation.py", "check_context", _guards("context")),
    Target(
        "context fit",
        "helpers/generation.py",
        "context_report",
        _guards("context", "tests/test_gguf.py::test_n_ctx_that_is_not_a_multiple_of_256"),
    ),
    Target("context fit", "helpers/generation.py", "effective_n_ctx", _guards("context")),
    Target(
        "context fit",
        "helpers/generation.py",
        "suggest_n_ctx",
        _guards("context or suggest_n_ctx", "tests/test_gguf.py::test_suggest_n_ctx"),
    ),
]

# Mutants that cannot change behaviour, keyed by (symbol, original code, mutated code) as --list
# prints them. Keep this short; each entry says why no test can tell the mutant from the original.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    (
        "_local_first",
        "return None",
        "(dropped)",
    ): "the function's last statement: without it the function ends and returns None all the same",
    (
        "local_file_record",
        "return None",
        "(dropped)",
    ): (
        "the last statement (in the except clause that ends the function): "
        "it returns None without it too"
    ),
    (
        "context_report",
        "max(n_ctx - prompt_tokens, 0)",
        "max(n_ctx - prompt_tokens, 1)",
    ): (
        "output_room is returned or shown only when prompt_tokens < n_ctx, "
        "where n_ctx - prompt_tokens >= 1; "
        "a prompt that fills n_ctx raises first, and the error does not show output_room"
    ),
    (
        "context_report",
        "max(n_ctx - prompt_tokens, 0)",
        "max(n_ctx - prompt_tokens, -1)",
    ): (
        "the same clamp: it only matters when prompt_tokens >= n_ctx, "
        "which raises before output_room is used"
    ),
}


# ---- finding the code ---------------------------------------------------------------------------


def _find(tree: ast.Module, symbol: str) -> ast.AST:
    """The FunctionDef for "f" / "Class.f", or the module-level Assign of "CONSTANT"."""
    scope: list[ast.stmt] = tree.body
    *outer, last = symbol.split(".")
    for name in outer:
        scope = next(n for n in scope if isinstance(n, ast.ClassDef) and n.name == name).body
    for node in scope:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == last:
            return node
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == last for t in targets):
                return node
    raise SystemExit(f"mutation_check: {symbol} not found; update TARGETS in {Path(__file__).name}")


def _first_line(node: ast.AST) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno] + [d.lineno for d in decorators])


# ---- making mutants -----------------------------------------------------------------------------


@dataclass
class Mutant:
    target: Target
    index: int  # position in the walk of the target's tree (the site)
    kind: str
    before: str  # the original code at the site
    after: str  # the same code mutated
    apply: object = field(
        repr=False, default=None
    )  # (node copy, parent copy, field, index) -> None
    result: str = ""  # "caught", "timeout", "SURVIVED", "equivalent"
    seconds: float = 0.0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.target.symbol, self.before, self.after)


COMPARE_SWAPS = {
    ast.Lt: [ast.LtE, ast.GtE],
    ast.LtE: [ast.Lt, ast.Gt],
    ast.Gt: [ast.GtE, ast.LtE],
    ast.GtE: [ast.Gt, ast.Lt],
    ast.Eq: [ast.NotEq],
    ast.NotEq: [ast.Eq],
    ast.Is: [ast.IsNot],
    ast.IsNot: [ast.Is],
    ast.In: [ast.NotIn],
    ast.NotIn: [ast.In],
}
BINOP_SWAPS = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
}


def _is_message(node: ast.AST) -> bool:
    """Text for the learner: an f-string, a string constant, or a warnings.warn(...) call."""
    if isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)
    ):
        return True
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "warn"
    )


def _is_docstring(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _walk(node: ast.AST, parent=None, field_name=None, index=None):
    """Pre-order walk yielding (node, parent, field, index-in-list); skips message text and
    docstrings."""
    yield node, parent, field_name, index
    for name, value in ast.iter_fields(node):
        if isinstance(node, ast.Raise) and name in ("exc", "cause"):
            continue  # the exception's message; dropping the raise is still a mutant
        items = value if isinstance(value, list) else [value]
        for i, child in enumerate(items):
            if not isinstance(child, ast.AST) or _is_message(child) or _is_docstring(child):
                continue  # (a warnings.warn(...) statement is still dropped as a whole)
            yield from _walk(child, node, name, i if isinstance(value, list) else None)


def _replace(parent: ast.AST, field_name: str, index, new: ast.AST) -> None:
    if index is None:
        setattr(parent, field_name, new)
    else:
        getattr(parent, field_name)[index] = new


def _not(expr: ast.expr) -> ast.expr:
    return ast.UnaryOp(op=ast.Not(), operand=expr)


def _variants(node: ast.AST, parent, field_name, index):
    """(kind, apply) pairs for one site; apply(node, parent, field, index) mutates a copy in
    place."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for new in COMPARE_SWAPS.get(type(op), []):

                def apply(n, p, f, x, i=i, new=new):
                    n.ops[i] = new()

                yield "compare", apply
    elif isinstance(node, ast.BoolOp):
        yield (
            "boolean",
            lambda n, p, f, x: setattr(
                n, "op", ast.Or() if isinstance(n.op, ast.And) else ast.And()
            ),
        )
        for i in range(len(node.values)):

            def drop(n, p, f, x, i=i):
                rest = n.values[:i] + n.values[i + 1 :]
                _replace(p, f, x, rest[0] if len(rest) == 1 else ast.BoolOp(op=n.op, values=rest))

            yield "boolean", drop
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        yield (
            ("boolean" if isinstance(node.op, ast.Not) else "arithmetic"),
            lambda n, p, f, x: _replace(p, f, x, n.operand),
        )
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield "boolean", lambda n, p, f, x: setattr(n, "value", not n.value)
    elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        if isinstance(node.value, int):
            changes = [node.value + 1, node.value - 1]
        else:
            changes = [node.value * 10, node.value + 1]
        for value in changes:
            if value != node.value:
                yield "number", lambda n, p, f, x, value=value: setattr(n, "value", value)
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS:
        yield "arithmetic", lambda n, p, f, x: setattr(n, "op", BINOP_SWAPS[type(n.op)]())
    if (
        isinstance(parent, (ast.If, ast.IfExp, ast.While))
        and field_name == "test"
        or isinstance(parent, ast.comprehension)
        and field_name == "ifs"
    ):
        simple_compare = isinstance(node, ast.Compare) and len(node.ops) == 1
        is_not = isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
        if not simple_compare and not is_not:
            yield "condition", lambda n, p, f, x: _replace(p, f, x, _not(n))
    if (
        isinstance(node, (ast.Return, ast.Raise))
        or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call))
    ) and isinstance(getattr(parent, field_name, None), list):

        def drop_statement(n, p, f, x):
            body = getattr(p, f)
            del body[x]
            if not body:
                body.append(ast.Pass())

        yield "statement", drop_statement


def _slot(parent: ast.AST, field_name: str, index) -> ast.AST:
    value = getattr(parent, field_name)
    return value[index] if index is not None else value


def _short(node: ast.AST) -> str:
    if isinstance(node, (ast.If, ast.While)):
        return ("if " if isinstance(node, ast.If) else "while ") + ast.unparse(node.test) + ": ..."
    text = ast.unparse(node)
    text = text.splitlines()[0] + (" ..." if "\n" in text else "")
    return text if len(text) <= 110 else text[:100] + " ..."


def _apply(root: ast.AST, index: int, kind: str, apply) -> tuple[str, str]:
    """Mutate the copy `root` at its walk position `index`; return (code before, code after) for the
    report."""
    site, parent, field_name, position = list(_walk(root))[index]
    context = isinstance(site, ast.Constant) and isinstance(
        parent, ast.expr
    )  # a number: show its expression
    before = _short(parent if context else site)
    apply(site, parent, field_name, position)
    ast.fix_missing_locations(root)
    if kind == "statement":
        return before, "(dropped)"
    return before, _short(parent if context else _slot(parent, field_name, position))


def mutants_of(target: Target) -> list[Mutant]:
    node = _find(ast.parse((ROOT / target.module).read_text()), target.symbol)
    found = []
    for index, (site, parent, field_name, position) in enumerate(_walk(node)):
        for kind, apply in _variants(site, parent, field_name, position):
            before, after = _apply(copy.deepcopy(node), index, kind, apply)
            found.append(Mutant(target, index, kind, before, after, apply))
    return found


def mutated_source(mutant: Mutant) -> str:
    """The module's source with only the target's lines replaced by the mutated target."""
    source = (ROOT / mutant.target.module).read_text()
    node = _find(ast.parse(source), mutant.target.symbol)
    root = copy.deepcopy(node)
    _apply(root, mutant.index, mutant.kind, mutant.apply)
    lines = source.splitlines(keepends=True)
    indent = " " * node.col_offset
    new = "".join(indent + line + "\n" if line else "\n" for line in ast.unparse(root).splitlines())
    start, end = _first_line(node) - 1, node.end_lineno
    mutated = "".join(lines[:start]) + new + "".join(lines[end:])
    compile(mutated, mutant.target.module, "exec")  # a mutant is a small bug, never a syntax error
    if ast.dump(ast.parse(mutated)) == ast.dump(ast.parse(source)):
        raise SystemExit(
            f"mutation_check: the mutant {mutant.before!r} -> {mutant.after!r} changed nothing"
        )
    return mutated


# ---- running the tests --------------------------------------------------------------------------

TEST_ENV = {
    "QLLM_THREADS": "2",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
    "OMP_WAIT_POLICY": "PASSIVE",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def make_copy(where: Path) -> Path:
    repo = where / "repo"
    repo.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.pyc")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=skip)
        elif src.exists():
            shutil.copy2(src, repo / name)
    return repo


def run_tests(repo: Path, tests: list[str], timeout: float) -> tuple[str, float, str]:
    """("passed" | "failed" | "timeout", seconds, output tail) of the given tests in the copy
    `repo`."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "--hypothesis-seed=0",
        *tests,
    ]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            cmd,
            cwd=repo,
            env={**os.environ, **TEST_ENV},
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as err:
        out = (
            err.stdout.decode(errors="replace")
            if isinstance(err.stdout, bytes)
            else (err.stdout or "")
        )
        return "timeout", time.perf_counter() - started, out[-2000:]
    seconds = time.perf_counter() - started
    out = done.stdout + done.stderr
    # a usage error or no test selected: the selection is wrong, not the code
    if done.returncode in (4, 5):
        raise SystemExit(
            f"mutation_check: pytest {' '.join(tests)} selects nothing or fails to start:\n"
            f"{out[-2000:]}"
        )
    outcome = {0: "passed", 1: "failed"}.get(
        done.returncode, "error"
    )  # 2: a collection (import) error
    return outcome, seconds, out[-4000:]


def check_copy_imports_itself(repo: Path) -> None:
    """The tests must import the copy's helpers, not the editable install of the working tree."""
    done = subprocess.run(
        [sys.executable, "-c", "import helpers; print(helpers.__file__)"],
        cwd=repo,
        env={**os.environ, **TEST_ENV},
        capture_output=True,
        text=True,
        check=True,
    )
    if not Path(done.stdout.strip()).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(
            f"mutation_check: the copy imports helpers from {done.stdout.strip()}, not {repo}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the targets whose name or symbol contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at a time (default 1)")
    args = parser.parse_args(argv)

    targets = [t for t in TARGETS if not args.only or args.only in t.name or args.only in t.symbol]
    if not targets:
        raise SystemExit(f"mutation_check: no target matches {args.only!r}")
    mutants = [m for t in targets for m in mutants_of(t)]
    if args.list:
        for m in mutants:
            print(f"{m.target.symbol:28} {m.kind:10} {m.before!r} -> {m.after!r}")
        print(f"{len(mutants)} mutants in {len(targets)} targets")
        return 0

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qllm-mutation-") as scratch:
        repos = [make_copy(Path(scratch) / f"job{j}") for j in range(max(1, args.jobs))]
        check_copy_imports_itself(repos[0])
        # baseline: every target's tests pass on the unmutated code (else "caught" would mean
        # nothing)
        budgets = {}
        for selection in {tuple(t.tests) for t in targets}:
            outcome, seconds, out = run_tests(repos[0], list(selection), timeout=900)
            print(f"baseline {outcome:7} {seconds:5.1f} s  {' '.join(selection)}", flush=True)
            if outcome != "passed":
                print(out)
                raise SystemExit(
                    "mutation_check: the tests fail without any mutation; fix that first"
                )
            budgets[selection] = max(
                30.0, 3 * seconds
            )  # past this, a mutant hangs: it counts as caught

        free = list(repos)

        def run_one(m: Mutant) -> Mutant:
            if m.key in EQUIVALENT:
                m.result = "equivalent"
                print(
                    f"{m.result:14}          {m.target.symbol}: {m.before}  ->  {m.after}",
                    flush=True,
                )
                return m
            repo = free.pop()
            try:
                path = repo / m.target.module
                original = path.read_text()
                path.write_text(mutated_source(m))
                try:
                    outcome, m.seconds, out = run_tests(
                        repo, m.target.tests, budgets[tuple(m.target.tests)]
                    )
                finally:
                    path.write_text(original)
            finally:
                free.append(repo)
            m.result = {"failed": "caught", "timeout": "timeout", "passed": "SURVIVED"}.get(
                outcome, "caught"
            )
            if outcome == "error":
                m.result = "caught (error)"
            print(
                f"{m.result:14} {m.seconds:5.1f} s  {m.target.symbol}: {m.before}  ->  {m.after}",
                flush=True,
            )
            return m

        with ThreadPoolExecutor(max_workers=len(repos)) as pool:
            done = list(pool.map(run_one, mutants))

    # the report: one row per target
    print(f"\n{'target':18} {'symbol':28} {'caught':>7} {'total':>6}")
    for t in targets:
        mine = [m for m in done if m.target is t]
        caught = sum(m.result.startswith(("caught", "timeout")) for m in mine)
        equivalent = sum(m.result == "equivalent" for m in mine)
        note = f"  ({equivalent} equivalent, allow-listed)" if equivalent else ""
        print(f"{t.name:18} {t.symbol:28} {caught:>7} {len(mine):>6}{note}")
    survivors = [m for m in done if m.result == "SURVIVED"]
    unused = set(EQUIVALENT) - {m.key for m in done} if not args.only else set()
    minutes = (time.perf_counter() - started) / 60
    print(f"\n{len(done)} mutants, {len(survivors)} survived, {minutes:.1f} min")
    for key in sorted(unused):
        print(f"stale EQUIVALENT entry (no such mutant any more): {key}")
    for m in survivors:
        print(f"SURVIVED  {m.target.module} {m.target.symbol}: {m.before!r} -> {m.after!r}")
    return 1 if survivors or unused else 0


if __name__ == "__main__":
    sys.exit(main())
