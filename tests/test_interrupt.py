"""One generation per model at a time (helpers.generation.claim), honoured by every call that runs a
model: generate, streams, chat, timing, perplexity; and an interrupted wait() that stops its
generation and frees the model, in-process and in a real ipykernel, on both backends."""

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from helpers import chat, errors, generation, loading, quality, streaming, timing
from helpers.errors import CourseError
from tests.kernel_support import kernel_stdout

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The history of the printing press begins"
BUSY = (
    "This model is still generating (a stream started earlier runs in the background). "
    "Call .wait() on that stream, or .stop() it, before starting another."
)


def fake_lm(backend: str = "llama.cpp") -> loading.LoadedModel:
    """A LoadedModel around a model that must never run: a refusal comes before it is touched."""
    return loading.LoadedModel(
        model=object(),
        tokenizer=None,
        format="gguf",
        backend=backend,
        path=Path("x.gguf"),
        device="cpu",
        dtype="Q4_K_M",
        load_seconds=0.0,
        context_length=1024,
    )


def refused(call) -> None:
    with pytest.raises(errors.ModelBusyError) as err:
        call()
    assert str(err.value) == BUSY and isinstance(err.value, CourseError)


# ---- the claim itself ---------------------------------------------------------------------------


def test_a_claimed_model_refuses_every_call_that_runs_it():
    lm = fake_lm()
    with generation.claim(lm):
        refused(lambda: generation.generate(lm, "Hello", max_new_tokens=2))
        refused(lambda: timing.time_generation(lm, "Hello", new_tokens=2))
        refused(lambda: timing.measure(lm, "Hello", new_tokens=2, warmup=0, repeats=1))
        refused(lambda: list(streaming.TokenStream(lm, "Hello", max_new_tokens=2)))
        refused(lambda: streaming.StreamWidget(lm, mode="console").start("Hello"))
        refused(lambda: generation.check_free(lm))
        refused(lambda: generation.claim(lm).__enter__())
    generation.check_free(lm)  # released at the end of the block


def test_a_bare_transformers_model_shares_the_claim_of_its_loaded_model():
    class Model:  # what transformers_logits needs of a model before it runs it
        device = "cpu"

        def modules(self):
            return []

    lm = fake_lm("transformers")
    lm.model = Model()
    with generation.claim(lm):
        refused(lambda: quality.transformers_logits(lm.model, [2, 3, 4]))
        refused(lambda: quality.transformers_perplexity(lm.model, lambda text: {"input_ids": [2]}))
    with generation.claim(lm.model):
        refused(lambda: generation.generate(lm, "Hello", max_new_tokens=2))
    other = fake_lm()  # another model is not held by this one's claim
    with generation.claim(lm), generation.claim(other):
        pass


def test_the_claim_is_released_after_an_error():
    lm = fake_lm()
    with pytest.raises(ZeroDivisionError), generation.claim(lm):
        raise ZeroDivisionError
    generation.check_free(lm)

    class Broken:
        device = "cpu"

        def modules(self):
            return []

        def __call__(self, ids):
            raise RuntimeError("the forward pass failed")

    model = Broken()
    with pytest.raises(RuntimeError, match="the forward pass failed"):
        quality.transformers_logits(model, [2, 3])
    generation.check_free(model)


def test_a_stream_claims_only_while_it_runs():
    lm = fake_lm()
    tokens = streaming.TokenStream(lm, "Hello", max_new_tokens=2)
    iterator = iter(tokens)  # a generator claims at its first step, not when made
    generation.check_free(lm)
    with generation.claim(lm), pytest.raises(errors.ModelBusyError):
        next(iterator)
    generation.check_free(lm)


# ---- on the course models -----------------------------------------------------------------------


def test_failed_calls_free_the_model(gguf, hf):
    for lm, long_prompt in ((gguf, "Quantization stores weights. " * 300), (hf, None)):
        if long_prompt:  # refused at the window, inside the claim
            with pytest.raises(errors.ContextOverflowError):
                generation.generate(lm, long_prompt, max_new_tokens=8)
            generation.check_free(lm)
        with pytest.raises(CourseError, match="at least 2 new tokens"):
            timing.time_generation(lm, "Hello", new_tokens=1)
        generation.check_free(lm)
        with pytest.raises((TypeError, ValueError)):  # the library refuses an argument, mid-stream
            list(streaming.TokenStream(lm, "Hello", max_new_tokens=2, no_such_argument=1))
        generation.check_free(lm)
        with pytest.raises((TypeError, ValueError)):
            generation.generate(lm, "Hello", max_new_tokens=2, no_such_argument=1)
        assert generation.generate(lm, "The capital of France is", max_new_tokens=3)


def test_a_running_stream_refuses_generate_measure_chat_and_perplexity(lm):
    sw = streaming.StreamWidget(lm, max_new_tokens=400, mode="widget").start(PROMPT)
    try:
        refused(lambda: generation.generate(lm, "The capital of France is", max_new_tokens=4))
        refused(lambda: timing.time_generation(lm, "Hello", new_tokens=2))
        refused(lambda: timing.measure(lm, "Hello", new_tokens=2, warmup=0, repeats=1))
        refused(lambda: chat.ChatSession(lm, max_new_tokens=8).reply("Hello"))
        if lm.tokenizer is not None:
            refused(lambda: quality.transformers_perplexity(lm.model, lm.tokenizer))
        assert sw.running
    finally:
        sw.stop()
        result = sw.wait(timeout=120)
    assert result.stopped_by_user and result.new_tokens < 400
    assert generation.generate(lm, "The capital of France is", max_new_tokens=4)


def interrupt_the_join(thread: threading.Thread, after_s: float) -> dict:
    """Make the next join() on `thread` raise KeyboardInterrupt after `after_s` s, as the notebook's
    interrupt does to a wait(); the joins after it are the real ones."""
    real, seen = thread.join, {"interrupted": 0}

    def join(timeout=None):
        if not seen["interrupted"]:
            seen["interrupted"] = 1
            real(after_s)
            seen["alive"] = thread.is_alive()
            raise KeyboardInterrupt
        return real(timeout)

    thread.join = join
    return seen


def test_an_interrupted_wait_stops_the_stream_and_frees_the_model(lm):
    sw = streaming.StreamWidget(lm, max_new_tokens=600, mode="widget").start(PROMPT)
    seen = interrupt_the_join(sw.reader_thread, 1.0)
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        sw.wait()
    assert seen["alive"], "the stream ended before the interrupt: nothing was tested"
    assert not sw.running and time.perf_counter() - started < 60
    assert sw.tokens.result.stopped_by_user and sw.tokens.result.new_tokens < 600
    assert sw.status.startswith("stopped")
    generation.check_free(lm)
    assert generation.generate(lm, "The capital of France is", max_new_tokens=4)


def test_an_interrupted_chat_widget_wait_stops_the_reply(gguf):
    from helpers.chat_widget import ChatWidget

    ui = ChatWidget(gguf, mode="widget", max_new_tokens=600, template="completion")
    ui.session.template.stop_strings.clear()  # a long reply: the interrupt comes in the middle
    ui.send("Tell me the whole history of the printing press, in detail.")
    seen = interrupt_the_join(ui.reader_thread, 1.0)
    with pytest.raises(KeyboardInterrupt):
        ui.wait()
    assert seen["alive"] and not ui.running
    assert ui.turn.reply.finish == "user"  # what Stop gives: the reply joins the history
    generation.check_free(gguf)
    assert generation.generate(gguf, "The capital of France is", max_new_tokens=4)


# ---- in a real kernel, the interrupt a notebook sends -----------------------------------------


def run_cell(kc, code: str, timeout: float) -> list[dict]:
    """Execute code as a human front end does (allow_stdin: widget mode); every iopub message up to
    this request's idle, within `timeout` seconds in all."""
    msg_id = kc.execute(code, allow_stdin=True)
    return read_until_idle(kc, msg_id, timeout)


def read_until_idle(kc, msg_id: str, timeout: float, until=None) -> list[dict]:
    """iopub messages of request `msg_id` until it is idle (or until `until(msg)` is true)."""
    deadline, messages = time.monotonic() + timeout, []
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no idle within {timeout} s: {[m['msg_type'] for m in messages][-20:]}"
        msg = kc.get_iopub_msg(timeout=left)
        messages.append(msg)
        if until is not None and until(msg):
            return messages
        if (
            msg["header"]["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
            and msg["parent_header"].get("msg_id") == msg_id
        ):
            return messages


def has_text(msg: dict) -> bool:
    """A widget value update with some generated text in it."""
    value = msg["content"].get("data", {}).get("state", {}).get("value", "")
    return msg["header"]["msg_type"] == "comm_msg" and bool(re.sub(r"<[^>]+>", "", value).strip())


@pytest.mark.parametrize("fmt", ["gguf", "gptq"])
def test_in_a_real_kernel_an_interrupted_wait_frees_the_model(course_cache, fmt):
    """The issue's steps: stream(...).wait(), the kernel interrupted 2 s into the stream, then
    generate() at once. Before the claim was shared, the kernel hung on the GGUF (a second
    generation in the same llama.cpp context) and the GPTQ model generated beside the stream."""
    from jupyter_client.manager import start_new_kernel

    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's helpers, whatever is installed
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(ROOT), env=env)
    try:
        loaded = run_cell(
            kc,
            f"""
from course import models as course_models
from helpers import generation, loading, streaming
lm = loading.load_model(course_models.model_path({fmt!r}), n_ctx=1024)
print("loaded from", generation.__file__)
""",
            timeout=180,
        )
        assert f"loaded from {ROOT / 'helpers' / 'generation.py'}" in kernel_stdout(loaded)
        msg_id = kc.execute(
            f"run = streaming.stream(lm, {PROMPT!r}, max_new_tokens=600)\nrun.wait()",
            allow_stdin=True,
        )
        waiting = read_until_idle(kc, msg_id, 180, until=has_text)  # it is generating
        time.sleep(2)
        km.interrupt_kernel()
        waiting += read_until_idle(kc, msg_id, 120)
        failures = [m["content"] for m in waiting if m["header"]["msg_type"] == "error"]
        assert [f["ename"] for f in failures] == ["KeyboardInterrupt"], failures
        after = run_cell(
            kc,
            """
import json
text = generation.generate(lm, "The capital of France is", max_new_tokens=8)
r = run.tokens.result
print("after:", json.dumps({"text": text, "running": run.running, "stopped": r.stopped_by_user,
                            "new_tokens": r.new_tokens, "status": run.status}))
""",
            timeout=120,
        )
        assert not any(m["header"]["msg_type"] == "error" for m in after), after
        summary = json.loads(kernel_stdout(after).split("after:", 1)[1])
        assert summary["text"].strip() and summary["running"] is False, summary
        assert summary["stopped"] is True and 0 < summary["new_tokens"] < 600, summary
        assert summary["status"].startswith("stopped"), summary
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
