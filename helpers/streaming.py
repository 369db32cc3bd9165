"""Watch a model write: stream its answer to a terminal, or to a notebook widget with a Stop button.

    run = stream(lm, "The capital of France is", max_new_tokens=64)  # lm from helpers.loading.load_model
    result = run.wait()   # StreamResult(text, prompt_tokens, new_tokens, ttft_s, seconds, tokens_per_s, stopped_by_user)

`stream` draws a widget in Jupyter, Colab and VS Code (text as it is generated, a status line with
time to first token, tokens and live tokens/s, a Stop button) and returns at once, so the kernel
stays free to hear the button. Where nobody can click (a terminal, plain Python, nbclient/nbmake/
papermill) the same call prints the text as it comes and returns when generation ends.

The same code serves both backends. Transformers generates in a thread and hands text over through
a `TextIteratorStreamer`; llama.cpp yields chunks from `create_completion(stream=True)`. Stop sets
an event that a stopping criterion checks after every token, so generation ends cleanly within one
token; no thread is ever killed.

Widgets are updated by setting their *values* from the thread that reads the stream. Nothing is
printed into an `ipywidgets.Output` from a background thread: under ipykernel 7 that output can be
lost (ipywidgets issue 4020).
"""

from __future__ import annotations

import html
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from .errors import CourseError


@dataclass
class StreamResult:
    """What one streamed generation produced, and how fast."""

    text: str               # the new text, prompt excluded
    prompt_tokens: int
    new_tokens: int         # every generated token, an end-of-sequence token included
    ttft_s: float | None    # seconds from the start to the first new token (None if there was none)
    seconds: float          # seconds from the start to the end, prompt processing included
    tokens_per_s: float     # decode speed: tokens after the first / seconds after the first token
    stopped_by_user: bool


class TokenStream:
    """One generation as an iterator of text pieces, for Transformers and llama.cpp alike.

    Iterate it (in any one thread) to run the generation; call `stop()` from any thread.
    `new_tokens`, `ttft_s` and `text` are live; `result` is set when the iteration ends.
    `plain_texts`: what a person typed into `prompt`, kept as text (helpers.loading.encode_prompt).
    """

    def __init__(self, lm, prompt: str, max_new_tokens: int = 256, temperature: float = 0.0,
                 plain_texts=(), **generate_kwargs):
        self.lm, self.prompt, self.plain_texts = lm, prompt, list(plain_texts)
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.generate_kwargs = generate_kwargs
        self.prompt_tokens = 0
        self.new_tokens = 0
        self.result: StreamResult | None = None
        self._parts: list[str] = []
        self._stop = threading.Event()
        self._started: float | None = None
        self._first_token_at: float | None = None

    def stop(self) -> None:
        """Ask the generation to end; it does so after at most one more token."""
        self._stop.set()

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def ttft_s(self) -> float | None:
        if self._first_token_at is None:
            return None
        return self._first_token_at - self._started

    def tokens_per_s(self, now: float | None = None) -> float:
        """Decode speed so far (or at `now`): tokens after the first over the time since it came."""
        if self._first_token_at is None or self.new_tokens < 2:
            return 0.0
        elapsed = (now or time.perf_counter()) - self._first_token_at
        return (self.new_tokens - 1) / elapsed if elapsed > 0 else 0.0

    def __iter__(self) -> Iterator[str]:
        if self._started is not None:
            raise CourseError("A TokenStream runs once; make a new one (or call StreamWidget.start again).")
        claim_model(self.lm)
        self._started = time.perf_counter()
        pieces = self._llama_cpp() if self.lm.backend == "llama.cpp" else self._transformers()
        try:
            for piece in pieces:
                if piece:
                    self._parts.append(piece)
                    yield piece
        finally:
            pieces.close()  # if the reader left early (Ctrl-C, break), this stops the generation
            release_model(self.lm)
            ended = time.perf_counter()
            self.result = StreamResult(
                text=self.text, prompt_tokens=self.prompt_tokens, new_tokens=self.new_tokens,
                ttft_s=self.ttft_s, seconds=ended - self._started,
                tokens_per_s=self.tokens_per_s(ended), stopped_by_user=self._stop.is_set())

    def _count(self, n: int = 1) -> None:
        """Called by the generating side for every new token."""
        if self._first_token_at is None:
            self._first_token_at = time.perf_counter()
        self.new_tokens += n

    def _prompt_ids(self) -> list[int]:
        """The prompt's ids (one <bos>, never two); refuse it, or shorten max_new_tokens, at the context window."""
        from .loading import encode_prompt, fit_context

        ids = encode_prompt(self.lm, self.prompt, self.plain_texts)
        self.prompt_tokens = len(ids)
        self.max_new_tokens = fit_context(self.lm, self.prompt_tokens, self.max_new_tokens)
        return ids

    def _transformers(self) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        from .loading import pad_token_id

        tokenizer, model = self.lm.tokenizer, self.lm.model
        ids = torch.tensor([self._prompt_ids()], device=model.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        watch = _TransformersWatch(self._stop, self._count, self.prompt_tokens)
        sampling = ({"do_sample": True, "temperature": self.temperature} if self.temperature > 0
                    else {"do_sample": False})
        kwargs = dict(**inputs, max_new_tokens=self.max_new_tokens, streamer=streamer,
                      stopping_criteria=StoppingCriteriaList([watch]),
                      pad_token_id=pad_token_id(tokenizer),
                      **sampling, **self.generate_kwargs)
        failure: list[BaseException] = []

        def generate():
            try:
                with torch.inference_mode():
                    model.generate(**kwargs)
            except BaseException as err:  # hand it to the reader, and unblock it
                failure.append(err)
                streamer.end()

        thread = threading.Thread(target=generate, name="qllm-generate", daemon=True)
        thread.start()
        finished = False
        try:
            yield from streamer
            finished = True
        finally:
            if not finished:  # the reader left early: end the generation, then wait for its thread
                self._stop.set()
            thread.join()
        if failure:
            raise failure[0]

    def _llama_cpp(self) -> Iterator[str]:
        from llama_cpp import StoppingCriteriaList

        prompt_ids = self._prompt_ids()
        watch = _LlamaCppWatch(self._stop, self._count)
        chunks = self.lm.model.create_completion(prompt_ids, max_tokens=self.max_new_tokens,
                                                 temperature=self.temperature, stream=True,
                                                 stopping_criteria=StoppingCriteriaList([watch]),
                                                 **self.generate_kwargs)
        finished = False
        try:
            for chunk in chunks:
                yield chunk["choices"][0]["text"]
            finished = True
        finally:
            if not finished:
                self._stop.set()
            chunks.close()


_busy_models: set[int] = set()
_busy_lock = threading.Lock()


def claim_model(lm, check_only: bool = False) -> None:
    """One stream per model at a time: a second generation on the same llama.cpp model corrupts it."""
    with _busy_lock:
        if id(lm.model) in _busy_models:
            raise CourseError("This model is still generating (a stream started earlier runs in the background). "
                              "Call .wait() on that stream, or .stop() it, before starting another.")
        if not check_only:
            _busy_models.add(id(lm.model))


def release_model(lm) -> None:
    with _busy_lock:
        _busy_models.discard(id(lm.model))


class _TransformersWatch:
    """A Transformers stopping criterion, called after every generated token: counts it, honours Stop.

    A token that arrives with Stop already set is still kept (it is in the output), so it counts.
    """

    def __init__(self, event: threading.Event, on_token: Callable[[int], None], prompt_tokens: int):
        self.event, self.on_token, self.seen = event, on_token, prompt_tokens

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.on_token(input_ids.shape[1] - self.seen)
        self.seen = input_ids.shape[1]
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _LlamaCppWatch:
    """llama.cpp's stopping_criteria hook: counts sampled tokens, honours Stop.

    llama-cpp-python calls it once per sampled token with the ids so far (one longer each time),
    then once after its loop with the same length as the call before, which is no new token.
    A token it samples while Stop is set is dropped, so it is not counted.
    """

    def __init__(self, event: threading.Event, on_token: Callable[[int], None]):
        self.event, self.on_token = event, on_token
        self.seen = -1

    def __call__(self, input_ids, logits) -> bool:
        if self.event.is_set():
            return True
        if len(input_ids) > self.seen:
            self.seen = len(input_ids)
            self.on_token(1)
        return False


# ---- where are we running? ------------------------------------------------------------------

def has_widget_frontend() -> bool:
    """True in Jupyter, Colab or VS Code; False in a terminal, plain Python, nbclient/nbmake/papermill.

    Set QLLM_STREAM_MODE=widget or =console to override.
    """
    forced = os.environ.get("QLLM_STREAM_MODE", "").strip().lower()
    if forced in ("widget", "console"):
        return forced == "widget"
    if "google.colab" in sys.modules:
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython else None
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return False  # plain Python or terminal IPython
    # Headless runners (nbclient, so nbmake and papermill too) execute with allow_stdin=False: nobody
    # is there to type, or to click Stop. Jupyter, Colab and VS Code let input() ask.
    return bool(getattr(kernel, "_allow_stdin", False))


def pick_mode(mode: str) -> str:
    if mode == "auto":
        return "widget" if has_widget_frontend() else "console"
    if mode not in ("widget", "console"):
        raise CourseError(f"mode must be 'auto', 'widget' or 'console', not {mode!r}.")
    return mode


def format_status(state: str, new_tokens: int, ttft_s: float | None, tokens_per_s: float) -> str:
    """The status line: 'generating · first token 0.12 s · 15 tokens · 48.1 tokens/s'."""
    first = f"first token {ttft_s:.2f} s" if ttft_s is not None else "waiting for the first token"
    return f"{state} · {first} · {new_tokens} tokens · {tokens_per_s:.1f} tokens/s"


def text_to_html(text: str) -> str:
    """Generated text as HTML that keeps its line breaks and shows markup literally."""
    return ('<pre style="white-space: pre-wrap; margin: 0; font-family: var(--jp-code-font-family, monospace)">'
            f"{html.escape(text)}</pre>")


# ---- console --------------------------------------------------------------------------------

def stream_to_console(lm, prompt: str, max_new_tokens: int = 256, temperature: float = 0.0,
                      by_line: bool = False, file=None, **generate_kwargs) -> StreamResult:
    """Print the answer as it is generated, then a status line; return the StreamResult.

    Ctrl-C (or the notebook's interrupt button) acts as Stop. by_line prints whole lines only.
    """
    tokens = TokenStream(lm, prompt, max_new_tokens, temperature, **generate_kwargs)
    return print_stream(tokens, by_line=by_line, file=file)


def print_stream(tokens: TokenStream, by_line: bool = False, file=None) -> StreamResult:
    """Run a TokenStream, printing its text as it comes (or line by line) and a final status line."""
    out = file or sys.stdout
    # A Jupyter kernel's stdout sends what it holds every 0.2 s by itself; flushing after every piece
    # would make one message (and one output in a saved notebook) per piece. Terminals need the flush.
    flush_each = not type(out).__module__.startswith("ipykernel")
    pieces = iter(tokens)
    pending = ""
    try:
        for piece in pieces:
            if by_line:
                pending += piece
                if "\n" not in pending:
                    continue
                piece, pending = pending.rsplit("\n", 1)
                piece += "\n"
            out.write(piece)
            if flush_each:
                out.flush()
    except KeyboardInterrupt:
        tokens.stop()
        pieces.close()
    result = tokens.result
    state = "stopped" if result.stopped_by_user else "done"
    out.write(f"{pending}\n[{format_status(state, result.new_tokens, result.ttft_s, result.tokens_per_s)}]\n")
    out.flush()
    return result


# ---- widget ---------------------------------------------------------------------------------

def join_reader(widget, timeout: float | None) -> None:
    """Wait for a widget's reader thread, then re-raise what went wrong in it (stream and chat widgets)."""
    if widget.reader_thread is not None:
        widget.reader_thread.join(timeout)
        if widget.reader_thread.is_alive():
            raise TimeoutError(f"still generating after {timeout} s; call stop() to end it")
    if widget.error is not None:  # read after the join: the reader sets it on its way out
        raise widget.error


class StreamWidget:
    """Stream into a notebook widget (text, status line, Stop button), or to the console headless.

        sw = StreamWidget(lm, max_new_tokens=200)   # mode="auto" | "widget" | "console"
        display(sw.widget); sw.start(prompt)        # or simply: sw = stream(lm, prompt)
        sw.stop(); result = sw.wait()               # sw.text and sw.status are live

    In widget mode `start` returns at once and a reader thread fills the widget, redrawing it at
    most every `refresh_s` seconds (by_line=True: complete lines only); in console mode `start`
    prints and returns when generation ends. `on_done(result)` runs when a generation ends (in the
    reader thread; not after an error, which `wait()` re-raises and `status` shows). The parts
    (`text_box`, `status_line`, `stop_button`, `widget`) are public so a chat UI can lay them out.
    """

    def __init__(self, lm, max_new_tokens: int = 256, temperature: float = 0.0, by_line: bool = False,
                 mode: str = "auto", on_done: Callable[[StreamResult], None] | None = None,
                 refresh_s: float = 0.1, **generate_kwargs):
        self.lm = lm
        self.max_new_tokens, self.temperature, self.by_line = max_new_tokens, temperature, by_line
        self.refresh_s = refresh_s  # the widget is redrawn at most this often (0: after every piece)
        self.generate_kwargs = generate_kwargs
        self.on_done = on_done
        self.mode = pick_mode(mode)
        self.result: StreamResult | None = None
        self.error: BaseException | None = None
        self._tokens: TokenStream | None = None
        self.reader_thread: threading.Thread | None = None
        self._status = "ready"
        self.update_seconds = 0.0  # time the reader spent updating the widget during the last run
        self.widget = self.text_box = self.status_line = self.stop_button = None
        if self.mode == "widget":
            import ipywidgets as widgets

            self.text_box = widgets.HTML(value=text_to_html(""))
            self.status_line = widgets.HTML(value=html.escape(self._status))
            self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="danger",
                                              disabled=True, tooltip="End generation after the next token")
            self.stop_button.on_click(lambda _button: self.stop())
            self.widget = widgets.VBox([widgets.HBox([self.stop_button, self.status_line]), self.text_box])

    # -- what a caller reads
    @property
    def running(self) -> bool:
        return self.reader_thread is not None and self.reader_thread.is_alive()

    @property
    def text(self) -> str:
        """The text generated so far (all of it, whatever the refresh mode)."""
        return self._tokens.text if self._tokens else ""

    @property
    def new_tokens(self) -> int:
        return self._tokens.new_tokens if self._tokens else 0

    @property
    def status(self) -> str:
        """The status line as plain text."""
        return self._status

    def __repr__(self) -> str:
        return f"StreamWidget(mode={self.mode!r}, status={self.status!r})"

    # -- what a caller does
    def start(self, prompt: str) -> "StreamWidget":
        """Begin generating from `prompt` (widget mode: returns at once; console mode: when done)."""
        if self.running:
            raise CourseError("This stream is still generating: call stop() and wait() before starting again.")
        claim_model(self.lm, check_only=True)  # fail here, in the caller, rather than in the reader thread
        self.result, self.error = None, None
        self.update_seconds = 0.0
        self._tokens = TokenStream(self.lm, prompt, self.max_new_tokens, self.temperature,
                                   **self.generate_kwargs)
        if self.mode == "console":
            try:
                self._finish(print_stream(self._tokens, self.by_line))
            except BaseException as err:
                self.error = err
                raise
            return self
        self.reader_thread = threading.Thread(target=self._read, name="qllm-stream-reader", daemon=True)
        self.reader_thread.start()
        return self

    def stop(self) -> None:
        """End generation after at most one more token (what the Stop button does)."""
        if self._tokens is not None:
            self._tokens.stop()

    def wait(self, timeout: float | None = None) -> StreamResult:
        """Block until generation ends; return its StreamResult (re-raises a generation error)."""
        if self._tokens is None:
            raise CourseError("Nothing to wait for: call start(prompt) first.")
        join_reader(self, timeout)
        return self.result

    # -- the reader thread: from start() on, it alone updates the widget values
    def _read(self) -> None:
        tokens = self._tokens
        try:
            self.text_box.value = text_to_html("")
            self._set_status("generating")
            self.stop_button.disabled = False
            shown, last_refresh = 0, float("-inf")  # the first piece shows at once
            for _piece in tokens:
                began = time.perf_counter()
                if began - last_refresh >= self.refresh_s:  # redraw at most once per refresh_s
                    text = tokens.text
                    if self.by_line:
                        text = text[: text.rfind("\n") + 1]  # complete lines only
                    if len(text) != shown:
                        self.text_box.value = text_to_html(text)
                        shown = len(text)
                    self._set_status("generating", tokens)
                    last_refresh = began
                self.update_seconds += time.perf_counter() - began
            self.text_box.value = text_to_html(tokens.text)
            self._finish(tokens.result)
        except BaseException as err:
            self.error = err
            self._set_status(f"error: {type(err).__name__}: {err}")
        finally:
            self.stop_button.disabled = True

    def _finish(self, result: StreamResult) -> None:
        self.result = result
        state = "stopped" if result.stopped_by_user else "done"
        self._set_status(format_status(state, result.new_tokens, result.ttft_s, result.tokens_per_s))
        if self.on_done is not None:
            self.on_done(result)

    def _set_status(self, state: str, tokens: TokenStream | None = None) -> None:
        if tokens is not None:  # live figures
            state = format_status(state, tokens.new_tokens, tokens.ttft_s, tokens.tokens_per_s())
        self._status = state
        if self.status_line is not None:
            self.status_line.value = html.escape(state)


def stream(lm, prompt: str, max_new_tokens: int = 256, temperature: float = 0.0, by_line: bool = False,
           mode: str = "auto", refresh_s: float = 0.1, **generate_kwargs) -> StreamWidget:
    """Stream `prompt`'s completion: a widget with Stop where a front end can show it, else the console.

    Returns the StreamWidget; `.wait()` gives the StreamResult.
    """
    sw = StreamWidget(lm, max_new_tokens=max_new_tokens, temperature=temperature, by_line=by_line,
                      mode=mode, refresh_s=refresh_s, **generate_kwargs)
    if sw.mode == "widget":
        from IPython.display import display

        display(sw.widget)
    return sw.start(prompt)
