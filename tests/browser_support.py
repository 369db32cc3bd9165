"""Drive the course in a real browser: JupyterLab on 127.0.0.1 and Debian's Chromium through
Playwright.

Used by tests/test_browser.py. Everything runs against copies of the notebooks in a temporary
folder, with Jupyter's config, data, runtime, settings and workspace folders there too, so the
repository and the user's Jupyter setup are never touched. The browser is the system Chromium (never
one that Playwright downloads); what it needs from Debian is installed by tools/ci_system_deps.sh.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "build" / "screenshots"

# Headless Chromium in containers and CI: no sandbox (we may be root), no GPU, no calls home.
# Every host name but 127.0.0.1 resolves to nothing: the page (its Colab badge image, any CDN) never
# leaves the machine. Done in the browser, not with Playwright request routing, which sends every
# request through Python and stalled JupyterLab's start-up on this machine.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]

# JupyterLab user settings for a predictable page: every cell in the DOM (no virtual scrolling),
# no "get notified about news?" toast over the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}

T = TypeVar("T")


def chromium_path() -> str | None:
    """The system Chromium (QLLM_CHROMIUM overrides), or None when it is not installed."""
    for candidate in (
        os.environ.get("QLLM_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def wait_until(
    check: Callable[[], T], timeout: float, message: str | Callable[[], str], interval: float = 0.2
) -> T:
    """Poll `check()` until it returns something truthy; fail with `message` after `timeout`
    seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:.0f} s)")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_notebook(
    src: Path, dest_dir: Path, insert_before: str | None = None, insert_source: str | None = None
) -> Path:
    """Copy a notebook; optionally insert a code cell before the first cell containing
    `insert_before`.

    The browser test uses this papermill-style to lengthen a generation, so it can be watched and
    stopped.
    """
    nb = nbformat.read(src, as_version=4)
    if insert_before is not None:
        index = next((i for i, c in enumerate(nb.cells) if insert_before in c.source), None)
        if index is None:
            raise AssertionError(
                f"{src.name}: no cell contains {insert_before!r}; the browser test needs updating"
            )
        cell = nbformat.v4.new_code_cell(insert_source)
        cell.metadata["tags"] = ["injected-parameters"]
        nb.cells.insert(index, cell)
    dest = dest_dir / src.name
    nbformat.write(nb, dest)
    return dest


def cell_index(path: Path, text: str) -> int:
    """Index of the first cell of notebook `path` whose source contains `text`."""
    nb = nbformat.read(path, as_version=4)
    for i, c in enumerate(nb.cells):
        if text in c.source:
            return i
    raise AssertionError(f"{path.name}: no cell contains {text!r}; the browser test needs updating")


class JupyterLab:
    """JupyterLab from this venv on 127.0.0.1 with a random token and port, in a sandbox folder."""

    def __init__(self, workdir: Path, root_dir: Path, env: dict[str, str] | None = None):
        self.workdir, self.root_dir = workdir, root_dir
        self.extra_env = env or {}
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "jupyterlab.log"
        self.url = f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 90) -> JupyterLab:
        dirs = {
            name: self.workdir / name
            for name in ("config", "data", "runtime", "settings", "workspaces")
        }
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        for rel, value in LAB_SETTINGS.items():
            f = dirs["settings"] / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(value))
        env = dict(os.environ)
        env.update(
            {
                "JUPYTER_CONFIG_DIR": str(dirs["config"]),
                "JUPYTER_DATA_DIR": str(dirs["data"]),
                "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
                "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
                "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
                # the kernel imports this checkout's helpers, whatever is installed
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
                ),
            }
        )
        env.update(self.extra_env)
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.terminals_enabled=False",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ]
        # open while the server runs; stop() closes it
        self._log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.root_dir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(
            self._answers,
            timeout,
            lambda: f"JupyterLab did not answer on {self.url}; its log:\n{self.log_tail()}",
            interval=0.5,
        )
        return self

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"JupyterLab exited with code {self.proc.returncode}; its log:\n{self.log_tail()}"
            )
        try:
            self.api("GET", "api/status")
            return True
        except OSError:
            return False

    def api(self, method: str, path: str):
        """Call the server's REST API with the token; return the decoded JSON (or None)."""
        req = urllib.request.Request(
            self.url + path, method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def page_url(self, notebook: str) -> str:
        # ?reset: a fresh workspace, so earlier tabs do not come back
        return f"{self.url}lab/tree/{notebook}?reset&token={self.token}"

    def shutdown_kernels(self) -> None:
        """End every session (and its kernel), e.g. between two notebooks."""
        try:
            for s in self.api("GET", "api/sessions"):
                self.api("DELETE", f"api/sessions/{s['id']}")
        except OSError:
            pass

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Shut the kernels and the server down; kill whatever of them is left, by process id."""
        if self.proc is None:
            return
        import psutil

        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        if self.proc.poll() is None:
            self.shutdown_kernels()
            self.proc.send_signal(signal.SIGTERM)  # jupyter_server stops its kernels on SIGTERM
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(children, timeout=10)
        self._log.close()
        self.proc = None


def launch_chromium(playwright):
    return playwright.chromium.launch(
        executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
    )


ANSI = re.compile(r"\x1b\[[0-9;]*m")


class NotebookPage:
    """One notebook open in JupyterLab; cells are addressed by their index in the .ipynb."""

    def __init__(self, page, lab: JupyterLab, notebook: str):
        self.page, self.lab, self.notebook = page, lab, notebook
        self.panel = page.locator(".jp-NotebookPanel").filter(visible=True)
        self.cells = self.panel.locator(".jp-Notebook .jp-Cell")

    def open(self, timeout: float = 120) -> NotebookPage:
        """Load the notebook page; return once its cells show their sources and its kernel is
        idle."""
        nb = nbformat.read(self.lab.root_dir / self.notebook, as_version=4)
        first = next(
            i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()
        )
        first_line = nb.cells[first].source.strip().splitlines()[0].strip()[:30]
        editor = self.cell(first).locator(".jp-InputArea-editor")
        self.page.goto(self.lab.page_url(self.notebook), timeout=timeout * 1000)
        # JupyterLab first draws a placeholder notebook (one empty cell, status "idle"), then the
        # file
        wait_until(
            lambda: self.cells.count() == len(nb.cells) and first_line in editor.inner_text(),
            timeout,
            lambda: (
                f"{self.notebook}: expected {len(nb.cells)} cells, cell {first} starting "
                f"{first_line!r}; the page shows {self.cells.count()} cells"
            ),
        )
        wait_until(
            lambda: self.server_kernel_state() == "idle" and self.kernel_status() == "idle",
            timeout,
            lambda: (
                f"{self.notebook}: the kernel did not become idle "
                f"(server: {self.server_kernel_state()!r}, page: {self.kernel_status()!r}); "
                f"JupyterLab log:\n{self.lab.log_tail()}"
            ),
            interval=0.5,
        )
        self.collapse_sidebar()
        return self

    def server_kernel_state(self) -> str | None:
        """The execution state of this notebook's kernel, as the server sees it."""
        for s in self.lab.api("GET", "api/sessions"):
            if s.get("path", "").endswith(self.notebook) and s.get("kernel"):
                return s["kernel"].get("execution_state")
        return None

    def kernel_status(self) -> str | None:
        indicator = self.page.locator(".jp-Notebook-ExecutionIndicator")
        return indicator.first.get_attribute("data-status") if indicator.count() else None

    def collapse_sidebar(self) -> None:
        """Close the file browser, so screenshots show the notebook."""
        current = self.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
        if current.count():
            current.first.click()

    def cell(self, i: int):
        return self.cells.nth(i)

    def select(self, i: int, expect: str) -> None:
        """Select cell `i` in command mode, after checking it holds `expect`."""
        cell = self.cell(i)
        cell.scroll_into_view_if_needed()
        editor = cell.locator(".jp-InputArea-editor")
        # editors fill in after the page shows the cells: wait for the source, not only the cell
        wait_until(
            lambda: expect in editor.inner_text(),
            30,
            lambda: (
                f"{self.notebook}: cell {i} should contain {expect!r}, it holds:\n"
                f"{editor.inner_text()[:400]}"
            ),
        )
        cell.locator(".jp-InputPrompt").click()
        wait_until(
            lambda: "jp-mod-selected" in (cell.get_attribute("class") or ""),
            10,
            f"{self.notebook}: cell {i} did not become selected",
        )

    def run_all_above(self, i: int, expect: str) -> None:
        """Run > Run All Above Selected Cell, with cell `i` selected."""
        self.select(i, expect)
        self.run_menu("Run All Above Selected Cell")

    def run_cell(self, i: int, expect: str) -> None:
        """Run > Run Selected Cell and Do not Advance, with cell `i` selected; wait until it is
        queued."""
        before = self.prompt(i)
        self.select(i, expect)
        self.run_menu("Run Selected Cell and Do not Advance")
        wait_until(
            lambda: self.prompt(i) != before or "*" in self.prompt(i),
            30,
            lambda: f"{self.notebook}: cell {i} did not start (prompt {self.prompt(i)!r})",
        )

    def run_menu(self, item: str) -> None:
        self.page.get_by_role("menuitem", name="Run", exact=True).click()
        # a menu item's accessible name ends with its shortcut: "Run Selected Cell\tShift+Enter"
        self.page.get_by_role("menuitem", name=re.compile(rf"^{re.escape(item)}(\s|$)")).click()

    def prompt(self, i: int) -> str:
        return self.cell(i).locator(".jp-InputPrompt").inner_text().strip()

    def output_text(self, i: int) -> str:
        area = self.cell(i).locator(".jp-OutputArea")
        return ANSI.sub("", area.inner_text()) if area.count() else ""

    def is_code(self, i: int) -> bool:
        return "jp-CodeCell" in (self.cell(i).get_attribute("class") or "")

    def wait_executed(self, indexes: list[int], timeout: float) -> None:
        """Wait until the code cells `indexes` all show an execution count; fail on an error or a
        widget error."""

        def done() -> bool:
            self.check_errors(indexes)
            prompts = [self.prompt(i) for i in indexes]
            if all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
                return True
            if self.kernel_status() == "idle" and not any("*" in p for p in prompts):
                # nothing runs, nothing queued, yet a cell has no count: the run stopped early
                missing = [
                    i
                    for i, p in zip(indexes, prompts, strict=True)
                    if not re.fullmatch(r"\[\d+\]:", p)
                ]
                if missing and self._still_idle():
                    raise AssertionError(
                        f"{self.notebook}: cells {missing} were not executed (the run stopped)"
                    )
            return False

        wait_until(
            done,
            timeout,
            lambda: (
                f"{self.notebook}: cells {indexes} did not finish; prompts "
                f"{[self.prompt(i) for i in indexes]}"
            ),
            interval=0.5,
        )

    def _still_idle(self) -> bool:
        time.sleep(1.0)  # the indicator can read idle between two queued cells
        return self.kernel_status() == "idle"

    def check_errors(self, indexes: list[int]) -> None:
        """Fail with the message a learner would see: a traceback, or a widget that cannot be
        displayed."""
        for i in indexes:
            text = self.output_text(i)
            if "Error displaying widget" in text:
                line = next(x for x in text.splitlines() if "Error displaying widget" in x)
                raise AssertionError(
                    f"{self.notebook}, cell {i}: JupyterLab shows {line.strip()!r} "
                    "(the ipywidgets front end and kernel side disagree)"
                )
            if "Traceback (most recent call last)" in text:
                raise AssertionError(f"{self.notebook}, cell {i} raised:\n{text[-2500:]}")

    def screenshot(self, name: str, element=None) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        (element or self.page).screenshot(path=str(path))
        return path
