"""helpers.streaming on the real course models: same text as plain greedy generation, Stop within
one token, filled timing figures, console fallback without a front end, and widget values that
travel from the reader thread through a real ipykernel 7 (the ipywidgets issue 4020 point)."""

import html
import io
import json
import re
import threading
import time
from pathlib import Path

import pytest

from helpers import generation, streaming
from helpers.errors import CourseError
from tests.kernel_support import kernel_stdout, run_in_kernel

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["The capital of France is", "问：人工智能的未来发展方向是什么？\n答："]
TOKENS = 24


def shown_text(value: str) -> str:
    """The text inside the widget's HTML value."""
    return html.unescape(re.sub(r"<[^>]+>", "", value))


def stop_after(tokens: streaming.TokenStream, pieces: int) -> int:
    """Read `pieces` pieces, press Stop, read the rest; return the token count when Stop was
    pressed."""
    at_stop = None
    for i, _piece in enumerate(tokens, 1):
        if i == pieces:
            at_stop = tokens.new_tokens
            tokens.stop()
    return at_stop


@pytest.mark.parametrize("prompt", PROMPTS, ids=["english", "chinese"])
def test_streamed_text_equals_plain_greedy_output(lm, prompt):
    expected = generation.generate(lm, prompt, max_new_tokens=TOKENS)
    pieces = []
    tokens = streaming.TokenStream(lm, prompt, max_new_tokens=TOKENS)
    for piece in tokens:
        pieces.append(piece)
    result = tokens.result
    assert "".join(pieces) == result.text == expected
    assert len(pieces) > 1  # it really streamed
    assert 0 < result.new_tokens <= TOKENS
    assert result.prompt_tokens == len(loading_ids(lm, prompt))
    assert 0 < result.ttft_s <= result.seconds
    assert result.tokens_per_s > 0
    assert result.stopped_by_user is False


def loading_ids(lm, prompt):
    if lm.backend == "llama.cpp":
        return lm.model.tokenize(prompt.encode(), add_bos=True, special=True)
    return lm.tokenizer(prompt)["input_ids"]


def test_both_backends_count_the_same_prompt_and_new_tokens(gguf, hf):
    a = streaming.TokenStream(gguf, PROMPTS[0], max_new_tokens=8)
    b = streaming.TokenStream(hf, PROMPTS[0], max_new_tokens=8)
    list(a), list(b)
    assert a.result.prompt_tokens == b.result.prompt_tokens  # same tokenizer, BOS included
    assert a.result.new_tokens == b.result.new_tokens == 8


def test_stop_ends_generation_within_one_token(lm):
    tokens = streaming.TokenStream(lm, PROMPTS[0], max_new_tokens=200)
    at_stop = stop_after(tokens, pieces=3)
    result = tokens.result
    assert result.stopped_by_user is True
    assert at_stop <= result.new_tokens <= at_stop + 1
    assert result.new_tokens < 200
    full = generation.generate(lm, PROMPTS[0], max_new_tokens=result.new_tokens)
    assert full.startswith(result.text)  # stopping keeps what was generated, cleanly


def test_stop_strings_end_the_stream_and_never_show(lm):
    """A stop string from the middle of the greedy answer, across tokens: the text ends before it,
    and no piece ever showed any of it (Transformers' streamer alone would hand it over)."""
    expected = generation.generate(lm, PROMPTS[0], max_new_tokens=TOKENS)
    stop = expected[len(expected) // 2 : len(expected) // 2 + 4]
    tokens = streaming.TokenStream(lm, PROMPTS[0], max_new_tokens=TOKENS, stop_strings=[stop])
    shown = [tokens.text for _piece in tokens]
    assert shown[-1] == tokens.result.text == expected[: expected.find(stop)]
    assert all(
        shown[-1].startswith(text) for text in shown
    )  # only ever grew towards the final text
    assert (
        tokens.hit_stop_string
        and not tokens.result.stopped_by_user
        and tokens.result.new_tokens < TOKENS
    )


def test_widget_stop_button_in_widget_mode(lm):
    sw = streaming.StreamWidget(lm, max_new_tokens=300, mode="widget")
    assert sw.mode == "widget" and sw.stop_button.disabled
    sw.start(PROMPTS[0])
    deadline = time.time() + 120
    while sw.new_tokens < 4 and sw.running and time.time() < deadline:
        time.sleep(0.005)
    at_stop = sw.new_tokens
    sw.stop_button.click()  # what the front end's click does
    result = sw.wait(timeout=120)
    assert result.stopped_by_user and at_stop <= result.new_tokens <= at_stop + 1
    assert sw.stop_button.disabled and not sw.running
    assert sw.status.startswith("stopped · first token")
    assert f"{result.new_tokens} tokens" in sw.status and sw.status_line.value == html.escape(
        sw.status
    )
    assert shown_text(sw.text_box.value) == sw.text == result.text


def test_widget_result_fields_and_restart(gguf):
    done = []
    sw = streaming.StreamWidget(gguf, max_new_tokens=12, mode="widget", on_done=done.append)
    first = sw.start(PROMPTS[0]).wait(timeout=120)
    second = sw.start(PROMPTS[1]).wait(timeout=120)
    assert done == [first, second]
    assert first.text == generation.generate(gguf, PROMPTS[0], max_new_tokens=12)
    assert shown_text(sw.text_box.value) == second.text != first.text
    assert second.new_tokens == 12 and second.ttft_s > 0 and second.seconds > second.ttft_s
    assert sw.status.startswith("done") and sw.update_seconds > 0


def test_widget_values_are_set_by_the_reader_thread_never_an_output_widget(gguf):
    import ipywidgets

    sw = streaming.StreamWidget(gguf, max_new_tokens=16, mode="widget")
    setters = []
    for part in (sw.text_box, sw.status_line):
        part.observe(lambda change: setters.append(threading.current_thread().name), "value")
    sw.start(PROMPTS[0]).wait(timeout=120)
    assert setters and set(setters) == {"qllm-stream-reader"}

    def tree(widget):
        yield widget
        for child in getattr(widget, "children", ()):
            yield from tree(child)

    assert not any(isinstance(w, ipywidgets.Output) for w in tree(sw.widget))


def test_by_line_refresh_shows_whole_lines_only(gguf):
    prompt = PROMPTS[1]  # the base model answers in short lines
    sw = streaming.StreamWidget(gguf, max_new_tokens=40, by_line=True, mode="widget")
    values = []
    sw.text_box.observe(lambda change: values.append(shown_text(change["new"])), "value")
    result = sw.start(prompt).wait(timeout=120)
    assert "\n" in result.text
    assert values[-1] == result.text
    assert all(v.endswith("\n") for v in values[:-1] if v)
    out = io.StringIO()
    streaming.print_stream(
        streaming.TokenStream(gguf, prompt, max_new_tokens=40), by_line=True, file=out
    )
    assert out.getvalue().startswith(result.text)


def test_console_streaming_prints_text_then_status(gguf, capsys):
    result = streaming.print_stream(streaming.TokenStream(gguf, PROMPTS[0], max_new_tokens=10))
    printed = capsys.readouterr().out
    assert printed.startswith(result.text)
    assert re.search(
        r"\[done · first token \d+\.\d\d s · 10 tokens · \d+\.\d tokens/s\]\n$", printed
    )


def test_ctrl_c_in_the_console_acts_as_stop(lm):
    class InterruptOnThirdWrite(io.StringIO):
        writes = 0

        def write(self, text):
            self.writes += 1
            if self.writes == 3:
                raise KeyboardInterrupt
            return super().write(text)

    out = InterruptOnThirdWrite()
    result = streaming.print_stream(
        streaming.TokenStream(lm, PROMPTS[0], max_new_tokens=200), file=out
    )
    assert result.stopped_by_user and result.new_tokens < 200
    assert "[stopped · first token" in out.getvalue()


def test_falls_back_to_console_without_a_front_end(gguf, capsys, monkeypatch):
    monkeypatch.delenv("QLLM_STREAM_MODE", raising=False)
    assert streaming.has_widget_frontend() is False  # plain Python under pytest
    sw = streaming.stream(gguf, PROMPTS[0], max_new_tokens=8)
    assert sw.mode == "console" and sw.widget is None and not sw.running
    result = sw.wait()
    assert capsys.readouterr().out.startswith(result.text)
    assert result.new_tokens == 8 and sw.text == result.text and sw.status.startswith("done")


def test_front_end_detection(monkeypatch):
    import IPython

    class Kernel:
        _allow_stdin = True

    class Shell:
        kernel = Kernel()

    monkeypatch.delenv("QLLM_STREAM_MODE", raising=False)
    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    assert streaming.has_widget_frontend() is True  # Jupyter, VS Code: input() may ask
    Kernel._allow_stdin = False
    assert streaming.has_widget_frontend() is False  # nbclient, nbmake, papermill
    monkeypatch.setenv("QLLM_STREAM_MODE", "widget")
    assert streaming.has_widget_frontend() is True
    monkeypatch.setenv("QLLM_STREAM_MODE", "console")
    Kernel._allow_stdin = True
    assert streaming.has_widget_frontend() is False


def test_clear_errors(lm):
    with pytest.raises(CourseError, match="mode must be"):
        streaming.StreamWidget(lm, mode="gui")
    sw = streaming.StreamWidget(lm, mode="widget", no_such_option=1)
    with pytest.raises(CourseError, match="call start"):
        sw.wait()
    with pytest.raises((TypeError, ValueError), match="no_such_option"):
        sw.start("Hello").wait(timeout=60)  # the generation's error reaches the caller
    assert sw.status.startswith("error: ") and sw.stop_button.disabled and not sw.running
    assert (
        streaming.StreamWidget(lm, max_new_tokens=2, mode="widget").start("Hello").wait(timeout=60)
    )  # model free
    tokens = streaming.TokenStream(lm, "Hello", max_new_tokens=2)
    list(tokens)
    with pytest.raises(CourseError, match="runs once"):
        list(tokens)


# ---- inside real kernels -------------------------------------------------------------------


def test_in_a_real_kernel_widget_values_flow_and_stop_button_works(course_cache):
    """ipykernel 7: values set from the reader thread reach the front end's channel while the
    kernel is idle, and a Stop click sent as the front end sends it ends generation."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(ROOT))
    try:
        first = run_in_kernel(
            kc,
            f"""
import threading
from course import models as course_models
from helpers import loading, streaming
lm = loading.load_model(course_models.model_path("gguf"), n_ctx=1024)
print("auto mode:", streaming.has_widget_frontend())
sw = streaming.StreamWidget(lm, max_new_tokens=2000)
setters = []
sw.text_box.observe(lambda change: setters.append(threading.current_thread().name), "value")
display(sw.widget)
sw.start({PROMPTS[0]!r})
print("ids:", sw.text_box.model_id, sw.stop_button.model_id)
""",
            allow_stdin=True,
        )  # a human front end: Jupyter sends allow_stdin=True
        printed = kernel_stdout(first)
        assert "auto mode: True" in printed
        text_id, button_id = re.search(r"ids: (\w+) (\w+)", printed).groups()
        opened = [
            m["content"]["data"]["state"]["_model_name"]
            for m in first
            if m["header"]["msg_type"] == "comm_open"
        ]
        assert "HTMLModel" in opened and "ButtonModel" in opened and "OutputModel" not in opened

        # the cell is over and the kernel idle; the text keeps arriving as widget value updates
        updates = []
        deadline = time.time() + 120
        while len(updates) < 3 and time.time() < deadline:
            msg = kc.get_iopub_msg(timeout=120)
            data = msg["content"].get("data", {})
            if msg["header"]["msg_type"] == "comm_msg" and msg["content"]["comm_id"] == text_id:
                updates.append(data["state"]["value"])
        assert len(updates) == 3 and len(shown_text(updates[-1])) > len(shown_text(updates[0]))

        click = kc.session.msg(
            "comm_msg",
            {"comm_id": button_id, "data": {"method": "custom", "content": {"event": "click"}}},
        )
        kc.shell_channel.send(click)  # exactly what JupyterLab sends when Stop is clicked
        second = run_in_kernel(
            kc,
            """
import json
r = sw.wait(timeout=120)
summary = {"text": r.text, "new_tokens": r.new_tokens, "stopped": r.stopped_by_user,
           "setters": sorted(set(setters)), "value": sw.text_box.value}
print("result:", json.dumps(summary))
""",
            allow_stdin=True,
        )
        result = json.loads(kernel_stdout(second).split("result:", 1)[1])
        assert result["stopped"] is True and result["new_tokens"] < 2000
        assert result["setters"] == ["qllm-stream-reader"]
        on_the_wire = updates + [
            m["content"]["data"]["state"]["value"]
            for m in second
            if m["header"]["msg_type"] == "comm_msg" and m["content"]["comm_id"] == text_id
        ]
        assert shown_text(on_the_wire[-1]) == shown_text(result["value"]) == result["text"]
        assert not any(m["header"]["msg_type"] == "error" for m in first + second)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_headless_notebook_run_falls_back_to_console(course_cache, tmp_path):
    """nbclient (what nbmake runs) executes with allow_stdin=False: the same notebook code
    prints."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(f"""
from course import models as course_models
from helpers import loading, streaming
lm = loading.load_model(course_models.model_path("gguf"), n_ctx=1024)
run = streaming.stream(lm, {PROMPTS[0]!r}, max_new_tokens=12)
result = run.wait()
print("mode:", run.mode, "| same text:", result.text == run.text)
""")
        ]
    )
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outputs = nb.cells[0].outputs
    printed = "".join(
        o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout"
    )
    assert "[done · first token" in printed and "12 tokens" in printed
    assert "mode: console | same text: True" in printed
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def test_one_stream_per_model_at_a_time(gguf):
    first = streaming.StreamWidget(gguf, max_new_tokens=400, mode="widget").start(PROMPTS[0])
    try:
        with pytest.raises(CourseError, match="still generating"):
            streaming.StreamWidget(gguf, max_new_tokens=4, mode="widget").start(PROMPTS[0])
        with pytest.raises(CourseError, match="still generating"):
            list(streaming.TokenStream(gguf, PROMPTS[0], max_new_tokens=4))
    finally:
        first.stop()
        first.wait(timeout=120)
    assert (
        streaming.StreamWidget(gguf, max_new_tokens=4, mode="widget")
        .start(PROMPTS[0])
        .wait(timeout=60)
        .new_tokens
        == 4
    )


def test_a_rendered_chat_prompt_gets_one_bos(gguf, hf):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    rendered = hf.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    ids = hf.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert rendered.startswith("<bos>")
    for lm in (hf, gguf):
        tokens = streaming.TokenStream(lm, rendered, max_new_tokens=2)
        list(tokens)
        assert tokens.result.prompt_tokens == len(ids)  # not len(ids) + 1


def test_refresh_s_limits_how_often_the_widget_is_redrawn(gguf):
    counts = {}
    for refresh_s in (0.0, 3600.0):
        sw = streaming.StreamWidget(gguf, max_new_tokens=12, mode="widget", refresh_s=refresh_s)
        values = []
        sw.text_box.observe(lambda change, values=values: values.append(change["new"]), "value")
        result = sw.start(PROMPTS[0]).wait(timeout=120)
        assert shown_text(values[-1]) == result.text
        counts[refresh_s] = len(values)
    assert (
        counts[0.0] > 3 and counts[3600.0] == 2
    )  # every piece vs the first piece and the final text
