"""Watch a model write: stream its answer to a terminal, or to a notebook widget with a Stop button.

# lm from helpers.loading.load_model
run = stream(lm, "The capital of France is", max_new_tokens=64)
# StreamResult(text, prompt_tokens, new_tokens, ttft_s, seconds, tokens_per_s, stopped_by_user)
result = run.wait()
# the console; a TokenStream is a plain iterator of text pieces
print_stream(TokenStream(lm, prompt))
"""

import html
import itertools
import os
import sys
import threading
import time
from dataclasses import dataclass

from .errors import CourseError
from .generation import backend_of, check_free, claim, encode_prompt, fit_context

PRE = (
    '<pre style="white-space: pre-wrap; margin: 0; '
    'font-family: var(--jp-code-font-family, monospace)">{}</pre>'
)


@dataclass
class StreamResult:
    """What one streamed generation produced, and how fast."""

    text: str  # the new text, prompt excluded
    prompt_tokens: int
    new_tokens: int  # every generated token, an end-of-sequence token included
    ttft_s: float | None  # seconds from the start to the first new token (None if there was none)
    seconds: float  # seconds from the start to the end, prompt processing included
    tokens_per_s: float  # decode speed: tokens after the first / seconds after the first token
    stopped_by_user: bool


class TokenStream:
    """One generation as an iterator of text pieces, for Transformers and llama.cpp alike: iterate
    it once, `stop()` it from any thread (a stopping criterion checks after every token: no thread
    is killed). `text`, `new_tokens`, `ttft_s`, `tokens_per_s` are live, `result` is set at the
    end; `plain_texts`, what a person typed into `prompt`, stay text (generation.encode_prompt)."""

    def __init__(
        self,
        lm,
        prompt: str,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        plain_texts=(),
        stop_strings=(),
        **generate_kwargs,
    ):
        self.lm = lm
        self.prompt = prompt
        self.plain_texts = list(plain_texts)
        self.stop_strings = list(stop_strings)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.generate_kwargs = generate_kwargs
        self.text, self.prompt_tokens, self.new_tokens, self.ttft_s = "", 0, 0, None
        self.stopped_by_user, self.hit_stop_string, self.result = False, False, None
        self._stop, self._started = threading.Event(), None

    def stop(self) -> None:
        """End the generation after at most one more token; what was written is kept."""
        self.stopped_by_user = True
        self._stop.set()

    @property
    def tokens_per_s(self) -> float:
        # decode speed: tokens after the first over the time since it came
        elapsed = (
            time.perf_counter() - self._started - self.ttft_s if self.ttft_s is not None else 0
        )
        return (self.new_tokens - 1) / elapsed if self.new_tokens > 1 and elapsed > 0 else 0.0

    def visible(self, raw: str, final: bool = False) -> str:
        """What of `raw` may show: up to the first stop string, less a tail that may begin one
        (until `final`). Not the libraries' stop strings: Transformers' streamer shows one before
        generate(stop_strings=) ends."""
        cut = min((raw.find(s) for s in self.stop_strings if s in raw), default=-1)
        if cut >= 0 or final:
            return raw[:cut] if cut >= 0 else raw
        return raw[
            : len(raw)
            - max(
                (n for s in self.stop_strings for n in range(1, len(s)) if raw.endswith(s[:n])),
                default=0,
            )
        ]

    def __iter__(self):
        if self._started is not None:
            raise CourseError(
                "A TokenStream runs once; make a new one (or call StreamWidget.start again)."
            )
        with claim(self.lm):  # released once the generation has ended, whatever ended it
            yield from self._run()

    def _run(self):
        self._started, raw, ended = time.perf_counter(), "", False
        pieces = self._pieces()
        try:
            # None: the end, which shows what was held back
            for piece in itertools.chain(pieces, [None]):
                raw += piece or ""
                if not self.hit_stop_string and any(s in raw for s in self.stop_strings):
                    self.hit_stop_string = True
                    # the generation ends within one token; visible() cuts before the stop
                    self._stop.set()
                shown = self.visible(raw, final=piece is None)
                if len(shown) > len(self.text):
                    piece, self.text = shown[len(self.text) :], shown
                    yield piece
            ended = True
        finally:
            self.stopped_by_user |= not ended  # the reader left early (Ctrl-C, break) or it failed
            pieces.close()  # which ends the generation
            self.result = StreamResult(
                self.text,
                self.prompt_tokens,
                self.new_tokens,
                self.ttft_s,
                time.perf_counter() - self._started,
                self.tokens_per_s,
                self.stopped_by_user,
            )

    def _count(self, new_tokens: int) -> None:
        self.ttft_s = self.ttft_s or time.perf_counter() - self._started
        self.new_tokens = new_tokens

    def _prompt_ids(self) -> list[int]:
        # one <bos>, never two; refused, or max_new_tokens shortened, at the window
        ids = encode_prompt(self.lm, self.prompt, self.plain_texts)
        self.prompt_tokens = len(ids)
        self.max_new_tokens = fit_context(self.lm, self.prompt_tokens, self.max_new_tokens)
        return ids

    def _pieces(self):
        # the prompt is encoded, and checked against the window, at the first step: inside _run
        ids = self._prompt_ids()
        yield from backend_of(self.lm).pieces(
            ids,
            self.max_new_tokens,
            self.temperature,
            self._stop,
            self._count,
            **self.generate_kwargs,
        )


def has_widget_frontend(mode: str = "auto") -> bool:
    """True in Jupyter, Colab or VS Code; False in a terminal, plain Python,
    nbclient/nbmake/papermill. mode="widget" or "console" (else QLLM_STREAM_MODE=widget|console)
    decides instead."""
    if mode not in ("auto", "widget", "console"):
        raise CourseError(f"mode must be 'auto', 'widget' or 'console', not {mode!r}.")
    forced = mode if mode != "auto" else os.environ.get("QLLM_STREAM_MODE", "").strip().lower()
    if forced in ("widget", "console") or "google.colab" in sys.modules:
        return forced != "console"
    ipython = sys.modules.get("IPython")
    # None: plain or terminal Python
    kernel = getattr(ipython.get_ipython() if ipython else None, "kernel", None)
    # False under nbclient (nbmake, papermill): nobody to click
    return bool(getattr(kernel, "_allow_stdin", False))


def format_status(run, state: str | None = None) -> str:
    """'done · first token 0.12 s · 15 tokens · 48.1 tokens/s' for a TokenStream (live) or a
    StreamResult."""
    first = (
        f"first token {run.ttft_s:.2f} s"
        if run.ttft_s is not None
        else "waiting for the first token"
    )
    state = state or ("stopped" if run.stopped_by_user else "done")
    return f"{state} · {first} · {run.new_tokens} tokens · {run.tokens_per_s:.1f} tokens/s"


def print_stream(
    tokens: TokenStream, by_line: bool = False, file=None, live: bool = True
) -> StreamResult:
    """Run a TokenStream, printing its text as it comes (by_line: whole lines; live=False: at the
    end), then a status line. Ctrl-C (or the notebook's interrupt button) acts as Stop."""
    out, pieces, shown = file or sys.stdout, iter(tokens), 0
    # a kernel's stdout sends by itself every 0.2 s
    flush_each = not type(out).__module__.startswith("ipykernel")
    try:
        for _piece in pieces:
            text = tokens.text[: tokens.text.rfind("\n") + 1] if by_line else tokens.text
            if live and len(text) > shown:
                out.write(text[shown:])
                shown = len(text)
                if flush_each:
                    out.flush()
    except KeyboardInterrupt:
        tokens.stop()
        pieces.close()
    out.write(f"{tokens.result.text[shown:]}\n[{format_status(tokens.result)}]\n")
    out.flush()
    return tokens.result


def join_reader(widget, timeout: float | None) -> None:
    """Wait for a widget's reader thread, then re-raise what went wrong in it (stream and chat
    widgets). Interrupted (the notebook's interrupt button: KeyboardInterrupt), it stops the
    generation, waits for it to end (within a token) and so frees the model, then re-raises."""
    thread = widget.reader_thread
    if thread is not None:
        try:
            thread.join(timeout)
        except BaseException:  # the generation must not run on, holding the model, unwatched
            widget.stop()
            thread.join()
            raise
        if thread.is_alive():
            raise TimeoutError(f"still generating after {timeout} s; call stop() to end it")
    if widget.error is not None:  # read after the join: the reader sets it on its way out
        raise widget.error


class StreamWidget:
    """Stream into a notebook widget (text, status line, Stop button), or to the console headless.

        sw = StreamWidget(lm, max_new_tokens=200)   # mode="auto" | "widget" | "console"
        display(sw.widget); sw.start(prompt)        # or simply: sw = stream(lm, prompt)
        sw.stop(); result = sw.wait()               # sw.text, sw.new_tokens and sw.status are live

    Widget mode: `start` returns at once; a reader thread sets the widget values at most every
    `refresh_s` s (never prints into an ipywidgets.Output: ipykernel 7 can lose that, ipywidgets
    issue 4020). Console mode: `start` prints and returns at the end. `on_done(result)` runs after
    each generation."""

    def __init__(
        self,
        lm,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        by_line: bool = False,
        mode: str = "auto",
        on_done=None,
        refresh_s: float = 0.1,
        **generate_kwargs,
    ):
        self.lm, self.by_line, self.refresh_s, self.on_done = lm, by_line, refresh_s, on_done
        self.mode = "widget" if has_widget_frontend(mode) else "console"
        self.settings = dict(
            max_new_tokens=max_new_tokens, temperature=temperature, **generate_kwargs
        )
        self.status = "ready"
        self.update_seconds = 0.0  # the reader's time on the widget
        self.tokens = self.error = self.reader_thread = None
        self.widget = self.text_box = self.status_line = self.stop_button = None
        if self.mode == "widget":
            import ipywidgets as widgets

            self.text_box = widgets.HTML(PRE.format(""))
            self.status_line = widgets.HTML(self.status)
            self.stop_button = widgets.Button(
                description="Stop",
                icon="stop",
                button_style="danger",
                disabled=True,
                tooltip="End generation after the next token",
            )
            self.stop_button.on_click(lambda _button: self.stop())
            self.widget = widgets.VBox(
                [widgets.HBox([self.stop_button, self.status_line]), self.text_box]
            )

    running = property(
        lambda self: self.reader_thread is not None and self.reader_thread.is_alive()
    )
    text = property(lambda self: self.tokens.text if self.tokens else "")
    new_tokens = property(lambda self: self.tokens.new_tokens if self.tokens else 0)

    def start(self, prompt: str) -> "StreamWidget":
        """Begin generating from `prompt` (widget mode: returns at once; console mode: when
        done)."""
        if self.running:
            raise CourseError(
                "This stream is still generating: call stop() and wait() before starting again."
            )
        # fail here, in the caller, rather than in the reader thread
        check_free(self.lm)
        self.error, self.update_seconds = None, 0.0
        self.tokens = TokenStream(self.lm, prompt, **self.settings)
        if self.mode == "console":
            self._finish(print_stream(self.tokens, self.by_line))
        else:
            self.reader_thread = threading.Thread(
                target=self._read, name="qllm-stream-reader", daemon=True
            )
            self.reader_thread.start()
        return self

    def stop(self) -> None:
        """End generation after at most one more token (what the Stop button does)."""
        if self.tokens is not None:
            self.tokens.stop()

    def wait(self, timeout: float | None = None) -> StreamResult:
        """Block until generation ends; return its StreamResult (re-raises a generation error).
        Interrupted (KeyboardInterrupt), it stops the generation first (join_reader)."""
        if self.tokens is None:
            raise CourseError("Nothing to wait for: call start(prompt) first.")
        join_reader(self, timeout)
        return self.tokens.result

    def _read(self) -> None:  # the reader thread: from start() on, it alone sets the widget values
        tokens = self.tokens
        try:
            self.text_box.value = PRE.format("")
            self._set_status("generating")
            self.stop_button.disabled = False
            last = float("-inf")  # the first piece shows at once
            for _piece in tokens:
                began = time.perf_counter()
                if began - last >= self.refresh_s:  # an unchanged value sends nothing
                    text = (
                        tokens.text[: tokens.text.rfind("\n") + 1] if self.by_line else tokens.text
                    )
                    self.text_box.value = PRE.format(html.escape(text))
                    self._set_status(format_status(tokens, "generating"))
                    last = began
                self.update_seconds += time.perf_counter() - began
            self.text_box.value = PRE.format(html.escape(tokens.text))
            self._finish(tokens.result)
        except BaseException as err:
            self.error = err
            self._set_status(f"error: {type(err).__name__}: {err}")
        finally:
            self.stop_button.disabled = True

    def _finish(self, result: StreamResult) -> None:
        self._set_status(format_status(result))
        if self.on_done is not None:
            self.on_done(result)

    def _set_status(self, state: str) -> None:
        self.status = state
        if self.status_line is not None:
            self.status_line.value = html.escape(state)


def stream(lm, prompt: str, **settings) -> StreamWidget:
    """Stream `prompt`'s completion into a StreamWidget (a widget with Stop where a front end can
    show it, else the console; `settings` as StreamWidget's) and return it; `.wait()` gives the
    StreamResult."""
    sw = StreamWidget(lm, **settings)
    if sw.mode == "widget":
        from IPython.display import display

        display(sw.widget)
    return sw.start(prompt)
