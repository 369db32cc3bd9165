"""Run every notebook of the course, in order, headless: executed copies and HTML go to build/.

    python tools/run_course.py [notebooks/03_awq.ipynb ...]
    python tools/run_course.py --zh-CN          # the Chinese edition (notebooks/zh-CN/)

Cells tagged `skip-execution` (GPU-only cells) are shown but not run, exactly as under nbmake.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter
from tqdm.auto import tqdm
from traitlets.config import Config

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
CELL_TIMEOUT = 1800


def run_notebook(path: Path) -> tuple[bool, float, str]:
    nb = nbformat.read(path, as_version=4)
    skipped = [c for c in nb.cells if "skip-execution" in c.get("metadata", {}).get("tags", [])]
    for cell in skipped:  # nbclient has no tag for this; nbmake does. Same effect:
        cell["metadata"]["_skipped_source"] = cell["source"]
        cell["source"] = ""
    started = time.time()
    ok, message = True, ""
    # The kernel talks over Unix sockets (IPC) rather than TCP: a channel no other user can open,
    # and ipykernel no longer warns "Kernel is running over TCP without encryption" once per
    # notebook.
    with tempfile.TemporaryDirectory(prefix="qllm-kernel-") as sockets:
        config = Config()
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = os.path.join(sockets, "kernel")
        client = NotebookClient(
            nb,
            timeout=CELL_TIMEOUT,
            kernel_name="python3",
            coalesce_streams=True,
            resources={"metadata": {"path": str(path.parent)}},
            config=config,
        )
        try:
            client.execute()
        except CellExecutionError as err:
            ok, message = False, str(err).splitlines()[-1] if str(err) else "cell failed"
    for cell in skipped:
        cell["source"] = cell["metadata"].pop("_skipped_source")
    seconds = time.time() - started
    edition = "zh-CN" if path.parent.name == "zh-CN" else ""  # the Chinese edition: build/*/zh-CN/
    (BUILD / "notebooks" / edition).mkdir(parents=True, exist_ok=True)
    (BUILD / "html" / edition).mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, BUILD / "notebooks" / edition / path.name)
    html, _ = HTMLExporter().from_notebook_node(nb)
    (BUILD / "html" / edition / path.with_suffix(".html").name).write_text(html, encoding="utf-8")
    return ok, seconds, message


def main(argv: list[str]) -> int:
    folder = ROOT / "notebooks" / ("zh-CN" if "--zh-CN" in argv else "")
    argv = [a for a in argv if a != "--zh-CN"]
    paths = [Path(a) for a in argv] or sorted(folder.glob("[0-9][0-9]*_*.ipynb"))  # 03, 03b, ...
    results = []
    started = time.time()
    for path in tqdm(paths, desc="notebooks", unit="nb"):
        ok, seconds, message = run_notebook(path)
        results.append((path.name, ok, seconds, message))
        tqdm.write(f"{'ok  ' if ok else 'FAIL'} {path.name:32} {seconds:6.0f} s  {message}")
    failed = [r for r in results if not r[1]]
    print(
        f"\nCourse run: {len(results) - len(failed)}/{len(results)} notebooks ok "
        f"in {time.time() - started:.0f} s"
    )
    html = BUILD / "html" / folder.relative_to(ROOT / "notebooks")
    print(f"Executed notebooks: {BUILD / 'notebooks' / folder.relative_to(ROOT / 'notebooks')}")
    print(f"HTML, to read in a browser: {html}  (start with {html / '00_setup.html'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
