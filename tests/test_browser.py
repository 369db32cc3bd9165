"""The course the way a learner sees it: JupyterLab in a real (headless) Chromium, driven by
Playwright.

Notebook 06: Run All Above the streaming-widget cell, run it, watch the text grow and the status
line show tokens/s, press Stop, and see the generation end. Notebook 07: send two messages through
the chat widget and see both, with replies, in the transcript. Screenshots go to build/screenshots/
(docs/images/ holds copies for the README). Any "Error displaying widget: model not found" fails the
test with that message.

Skipped, with the reason, when Playwright or the system Chromium is missing (tools/ci_system_deps.sh
installs Chromium; `pip install playwright` the rest; never `playwright install`).
"""

from __future__ import annotations

import os
import re
import time

import pytest

from tests.browser_support import (
    ROOT,
    JupyterLab,
    NotebookPage,
    cell_index,
    chromium_path,
    copy_notebook,
    launch_chromium,
    wait_until,
)

NOTEBOOKS = ROOT / "notebooks"
STREAM_TOKENS = (
    800  # the widget cell's generation, lengthened so there is time to watch it and press Stop
)
STATUS = re.compile(r"(\d+) tokens · ([\d.]+) tokens/s")
CHAT_NOTEBOOK = NOTEBOOKS / "07_chat.ipynb"
# Two of the questions the templates are scored on (templates.SCORED_QUESTIONS), asked on the
# notebook's default route (few-shot, for this base model): the screenshot shows what a learner gets
# from the course model, not an open question a 270M base model cannot answer.
CHAT_MESSAGES = ["What is the capital of France?", "中国的首都是哪里？"]


def skip_or_fail(reason: str):
    """Skip with the reason; CI (QLLM_REQUIRE_BROWSER=1, set by .ci/run) fails instead."""
    if os.environ.get("QLLM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"the browser test is required here: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright_api():
    try:
        from playwright import sync_api
    except ImportError:
        skip_or_fail(
            "Playwright is not installed (pip install playwright; "
            "the browser is the system Chromium)"
        )
    if chromium_path() is None:
        skip_or_fail(
            "Chromium is not installed (run tools/ci_system_deps.sh, or apt-get install chromium)"
        )
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def lab(playwright_api, course_cache, tmp_path_factory):
    """JupyterLab serving copies of notebooks 06 and 07 from a temporary folder."""
    work = tmp_path_factory.mktemp("lab")
    root = work / "notebooks"
    root.mkdir()
    copy_notebook(
        NOTEBOOKS / "06_streaming.ipynb",
        root,
        insert_before="streaming.stream(lm, PROMPT",
        insert_source=(
            f"MAX_NEW_TOKENS = {STREAM_TOKENS}  # browser test: long enough to watch and Stop"
        ),
    )
    copy_notebook(CHAT_NOTEBOOK, root)
    server = JupyterLab(
        work,
        root,
        env={
            "QLLM_THREADS": "2",
            "OMP_NUM_THREADS": "2",
            "OMP_WAIT_POLICY": "PASSIVE",
            "TOKENIZERS_PARALLELISM": "false",
        },
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def page(playwright_api, lab):
    browser = launch_chromium(playwright_api)
    try:
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, device_scale_factor=1
        )
        page = context.new_page()
        page.set_default_timeout(30_000)
        yield page
    finally:
        browser.close()
        lab.shutdown_kernels()  # the next notebook starts with the CPU to itself


def test_streaming_widget_in_jupyterlab(lab, page):
    path = lab.root_dir / "06_streaming.ipynb"
    nb = NotebookPage(page, lab, path.name).open()
    widget_cell = cell_index(path, "streaming.stream(lm, PROMPT")
    code_above = [i for i in range(widget_cell) if nb.is_code(i)]

    nb.run_all_above(widget_cell, expect="streaming.stream(lm, PROMPT")
    nb.wait_executed(code_above, timeout=300)

    nb.run_cell(widget_cell, expect="streaming.stream(lm, PROMPT")
    cell = nb.cell(widget_cell)
    stop = cell.locator("button.widget-button", has_text="Stop")
    # the status line sits beside Stop (a progress bar above it is an HBox of HTML too)
    status = cell.locator(".widget-hbox:has(button.widget-button) .widget-html-content")
    text = cell.locator(".widget-html-content pre")

    def widget_shown():
        nb.check_errors([widget_cell])
        return stop.count() == 1 and text.count() == 1

    wait_until(
        widget_shown,
        120,
        lambda: (
            "no streaming widget (Stop button and text) appeared; the cell shows:\n"
            + nb.output_text(widget_cell)[-1500:]
        ),
    )
    assert "a widget front end is here: True" in nb.output_text(widget_cell), (
        "streaming.has_widget_frontend() should be True in JupyterLab:\n"
        + nb.output_text(widget_cell)
    )

    # the text grows, sample after sample, while the status line reports live tokens/s
    lengths, speeds = [], []
    for _ in range(4):
        before = lengths[-1] if lengths else 0
        wait_until(
            lambda before=before: len(text.inner_text()) > before,
            60,
            lambda before=before: (
                f"the streamed text stopped growing at {before} characters; status: "
                f"{status.inner_text()!r}"
            ),
        )
        lengths.append(len(text.inner_text()))
        line = status.inner_text()
        assert line.startswith("generating"), (
            f"status should say 'generating' while text arrives: {line!r}"
        )
        if m := STATUS.search(line):
            speeds.append(float(m.group(2)))
    assert lengths == sorted(set(lengths)), f"text lengths should strictly grow: {lengths}"
    assert speeds and max(speeds) > 0, (
        f"the status line should show a live tokens/s figure; saw speeds {speeds}"
    )
    assert stop.is_enabled(), "the Stop button should be enabled while generating"
    # screenshots (docs/images/ keeps copies), once a few lines have arrived
    wait_until(
        lambda: (m := STATUS.search(status.inner_text())) and int(m.group(1)) >= 40,
        60,
        lambda: f"the status line did not reach 40 tokens: {status.inner_text()!r}",
    )
    cell.scroll_into_view_if_needed()
    nb.screenshot("streaming_widget.png", element=cell)
    nb.screenshot("streaming_jupyterlab.png")

    # Stop: the status turns to 'stopped', the text stops growing, the button is disabled again
    stop.click()
    final = wait_until(
        lambda: status.inner_text().startswith("stopped") and status.inner_text(),
        30,
        lambda: (
            f"after Stop the status should start with 'stopped', it reads {status.inner_text()!r}"
        ),
    )
    m = STATUS.search(final)
    assert m and int(m.group(1)) < STREAM_TOKENS, f"Stop should end the generation early: {final!r}"
    stopped_text = text.inner_text()
    for _ in range(4):  # no growth after the stop, sampled over ~2 s
        time.sleep(0.5)
        assert text.inner_text() == stopped_text, "the text kept growing after Stop"
    assert not stop.is_enabled(), "the Stop button should be disabled once generation ended"
    nb.screenshot("streaming_widget_stopped.png", element=cell)
    nb.check_errors([widget_cell])

    # the kernel agrees: the next cell's run.wait() reports the user's stop
    nb.run_cell(widget_cell + 1, expect="run.wait()")
    nb.wait_executed([widget_cell + 1], timeout=60)
    out = nb.output_text(widget_cell + 1)
    assert "stopped_by_user=True" in out, f"run.wait() should report stopped_by_user=True:\n{out}"


def test_missing_widget_model_is_reported(lab, page):
    """The widget check is real: a widget view whose model the kernel never created makes JupyterLab
    show "Error displaying widget: model not found", and check_errors fails with that message."""
    import nbformat

    source = (
        "from IPython.display import display\n"
        'display({"application/vnd.jupyter.widget-view+json": {"model_id": "0" * 32, '
        '"version_major": 2, "version_minor": 0}}, raw=True)'
    )
    nb_file = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nb_file.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    nbformat.write(nb_file, lab.root_dir / "widget_error.ipynb")
    nb = NotebookPage(page, lab, "widget_error.ipynb").open()
    nb.run_cell(0, expect="widget-view+json")

    def reported():
        try:
            nb.check_errors([0])
        except AssertionError as err:
            return str(err)
        return None

    message = wait_until(
        reported,
        60,
        lambda: (
            "JupyterLab showed no widget error for a widget without a model; "
            f"the cell shows {nb.output_text(0)!r}"
        ),
    )
    assert "Error displaying widget: model not found" in message, message


def test_chat_widget_in_jupyterlab(lab, page):
    path = lab.root_dir / CHAT_NOTEBOOK.name
    nb = NotebookPage(page, lab, path.name).open()
    widget_cell = cell_index(path, "ChatWidget(")
    nb.run_all_above(widget_cell, expect="ChatWidget(")
    nb.wait_executed([i for i in range(widget_cell) if nb.is_code(i)], timeout=300)
    nb.run_cell(widget_cell, expect="ChatWidget(")

    cell = nb.cell(widget_cell)
    ui = cell.locator(".qllm-chat")
    box = ui.locator(".qllm-chat-input textarea")
    send = ui.locator("button.qllm-chat-send")
    messages = ui.locator(".qllm-chat-transcript .qllm-chat-message")
    users = ui.locator(".qllm-chat-transcript .qllm-chat-message.qllm-chat-user")
    replies = ui.locator(
        ".qllm-chat-transcript .qllm-chat-message.qllm-chat-assistant:not(.qllm-chat-live)"
    )
    status = ui.locator(".qllm-chat-status")

    def widget_shown():
        nb.check_errors([widget_cell])
        return ui.count() == 1 and box.count() == 1 and send.count() == 1

    wait_until(
        widget_shown,
        120,
        lambda: (
            "no chat widget (.qllm-chat with text box and Send) appeared; the cell "
            "shows:\n" + nb.output_text(widget_cell)[-1500:]
        ),
    )

    def idle() -> bool:
        return "qllm-chat-busy" not in (ui.get_attribute("class") or "") and send.is_enabled()

    for n, message in enumerate(CHAT_MESSAGES, 1):
        wait_until(
            idle,
            60,
            f"the chat widget is still busy before message {n}; status {status.inner_text()!r}",
        )
        box.fill(message)
        send.click()
        wait_until(
            lambda n=n: users.count() == n,
            30,
            lambda n=n: (
                f"message {n} did not appear in the transcript; status {status.inner_text()!r}, "
                f"transcript:\n{ui.locator('.qllm-chat-transcript').inner_text()}"
            ),
        )
        assert message in users.nth(n - 1).inner_text(), (
            f"the transcript shows {users.nth(n - 1).inner_text()!r} for message {n!r}"
        )
        wait_until(
            lambda n=n: idle() and replies.count() == n,
            180,
            lambda n=n: (
                f"no finished reply to message {n}; status {status.inner_text()!r}, transcript:\n"
                f"{ui.locator('.qllm-chat-transcript').inner_text()}"
            ),
        )
        nb.check_errors([widget_cell])
        reply = replies.nth(n - 1).locator(".qllm-chat-content").inner_text()
        assert reply.strip(), f"the reply to message {n} is empty; status {status.inner_text()!r}"
        assert STATUS.search(status.inner_text()), (
            f"the status line should show tokens/s: {status.inner_text()!r}"
        )
        assert box.input_value() == "", "the text box should be emptied once a message is sent"

    roles = [m.get_attribute("data-role") for m in messages.all()]
    assert [r for r in roles if r != "system"] == ["user", "assistant"] * len(CHAT_MESSAGES), (
        f"the transcript should alternate user/assistant: {roles}"
    )
    cell.scroll_into_view_if_needed()
    nb.screenshot("chat_widget.png", element=ui)
