"""The chat widget: a transcript, a text box, Send and Stop, and the token count against the window.

    ui = ChatWidget(lm, system="You are a helpful assistant.")   # or ChatWidget(session)
    ui.show()                                     # in Jupyter, Colab or VS Code
    ui.send("Hello"); ui.wait(); ui.transcript    # the same UI driven from code (tests, browsers)

A front end over `helpers.chat.ChatSession`, as the terminal chat (`course/chat_cli.py`) is;
generation runs in a reader thread, so the kernel stays free to hear the Stop button. Where no front
end can show it, it prints the conversation instead.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from pathlib import Path

from .chat import ChatReply, ChatSession, ChatTurn
from .errors import ChatError, CourseError
from .streaming import format_status, has_widget_frontend, join_reader, print_stream

ROLE_LABELS = {"system": "system", "user": "you", "assistant": "model"}
ROLE_COLORS = {"user": "#1f6feb", "assistant": "#2da44e", "system": "#8250df"}


def transcript_html(messages: list[dict], hidden: int = 0, live: str | None = None) -> str:
    """The transcript as HTML: one div per message (class qllm-chat-message qllm-chat-<role>,
    data-role).

    The first `hidden` user/assistant messages get the class qllm-chat-trimmed (the model no longer
    sees them); `live` is a reply being written (class qllm-chat-live).
    """
    rows, seen = [], 0
    for i, m in enumerate(
        messages + ([{"role": "assistant", "content": live}] if live is not None else [])
    ):
        classes = f"qllm-chat-message qllm-chat-{m['role']}"
        if i == len(messages):
            classes += " qllm-chat-live"
        elif m["role"] != "system":
            classes += " qllm-chat-trimmed" if seen < hidden else ""
            seen += 1
        faded = "opacity: 0.45;" if "trimmed" in classes else ""
        rows.append(
            f'<div class="{classes}" data-role="{m["role"]}" data-index="{i}" '
            f'style="margin: 2px 0; {faded}">'
            f'<b style="color: {ROLE_COLORS[m["role"]]}">{ROLE_LABELS[m["role"]]}:</b> '
            '<span class="qllm-chat-content" style="white-space: pre-wrap">'
            f"{html.escape(m['content'])}</span></div>"
        )
    return '<div class="qllm-chat-log">' + "".join(rows) + "</div>"


class ChatWidget:
    """A chat UI: transcript, text box, Send and Stop, token count against the context window.

        ui = ChatWidget(lm, system="...", max_new_tokens=128)   # or ChatWidget(session)
        ui.show()                        # in Jupyter/Colab/VS Code: the widget; headless: nothing
        ui.send("Hello"); ui.wait()      # what typing + Send does; wait() returns the ChatReply
        ui.stop()                        # what Stop does
        ui.transcript, ui.token_count, ui.context_window, ui.status, ui.running,
        ui.reply_text, ui.reply_tokens

    In widget mode `send` returns at once and a reader thread fills the transcript; headless
    (console mode: terminals, nbclient/nbmake) `send` prints the exchange and returns when the
    reply is done. Nothing calls input(). DOM hooks for browser tests: the root has the CSS class
    `qllm-chat` (plus `qllm-chat-busy` while a reply is generated); parts: `qllm-chat-input`,
    `qllm-chat-send`, `qllm-chat-stop`, `qllm-chat-transcript`, `qllm-chat-tokens`,
    `qllm-chat-status`, `qllm-chat-notice`; messages inside the transcript are
    `div.qllm-chat-message.qllm-chat-<role>[data-role]`, the reply being written `.qllm-chat-live`.
    """

    def __init__(self, lm_or_session, mode: str = "auto", refresh_s: float = 0.1, **session_kwargs):
        if isinstance(lm_or_session, ChatSession):
            if session_kwargs:
                raise ChatError(
                    "Pass session settings to ChatSession, or pass a model here, not both."
                )
            self.session = lm_or_session
        else:
            self.session = ChatSession(lm_or_session, **session_kwargs)
        self.mode = "widget" if has_widget_frontend(mode) else "console"
        self.refresh_s = refresh_s
        self.error: BaseException | None = None
        self.notice = ""
        self.status = "ready"
        self.turn: ChatTurn | None = None  # the reply being written, or the last one
        self.reader_thread: threading.Thread | None = None
        self.widget = self.transcript_box = self.input_box = self.send_button = self.stop_button = (
            None
        )
        self.token_counter = self.status_line = self.notice_line = None
        if self.mode == "widget":
            self._build()
            self._redraw()

    def _build(self) -> None:
        import ipywidgets as widgets

        self.transcript_box = widgets.HTML(
            layout=widgets.Layout(
                max_height="24em", overflow_y="auto", border="1px solid #ddd", padding="4px"
            )
        )
        self.input_box = widgets.Textarea(
            placeholder="Type a message, then Send", rows=2, layout=widgets.Layout(width="100%")
        )
        self.send_button = widgets.Button(
            description="Send", icon="paper-plane", button_style="primary"
        )
        self.stop_button = widgets.Button(
            description="Stop",
            icon="stop",
            button_style="danger",
            disabled=True,
            tooltip="End the reply after the next token",
        )
        self.token_counter, self.status_line, self.notice_line = (
            widgets.HTML(),
            widgets.HTML(),
            widgets.HTML(),
        )
        self.send_button.on_click(lambda _b: self._send_from_box())
        self.stop_button.on_click(lambda _b: self.stop())
        self.widget = widgets.VBox(
            [
                self.transcript_box,
                self.notice_line,
                self.input_box,
                widgets.HBox([self.send_button, self.stop_button, self.token_counter]),
                self.status_line,
            ]
        )
        for part, name in [
            (self.widget, "qllm-chat"),
            (self.transcript_box, "qllm-chat-transcript"),
            (self.input_box, "qllm-chat-input"),
            (self.send_button, "qllm-chat-send"),
            (self.stop_button, "qllm-chat-stop"),
            (self.token_counter, "qllm-chat-tokens"),
            (self.status_line, "qllm-chat-status"),
            (self.notice_line, "qllm-chat-notice"),
        ]:
            part.add_class(name)

    # -- what a caller reads
    @property
    def running(self) -> bool:
        return self.reader_thread is not None and self.reader_thread.is_alive()

    @property
    def transcript(self) -> list[dict]:
        """The conversation as shown: the history plus the exchange being generated (system
        included)."""
        messages, live = self._shown()
        return messages + ([{"role": "assistant", "content": live}] if live is not None else [])

    @property
    def token_count(self) -> int:
        """Tokens in the window: the last prompt plus its reply so far."""
        return self.turn.prompt_tokens + self.turn.new_tokens if self.turn is not None else 0

    @property
    def context_window(self) -> int:
        return self.session.context_window

    @property
    def reply_text(self) -> str:
        """The reply being written (or the last one)."""
        return self.turn.text if self.turn is not None else ""

    @property
    def reply_tokens(self) -> int:
        """Tokens generated so far for the reply being written (or the last one)."""
        return self.turn.new_tokens if self.turn is not None else 0

    def token_line(self) -> str:
        """'312 / 1024 tokens in the window (prompt 280 + reply 32; 64 kept for the reply)'."""
        prompt, reply = (
            (self.turn.prompt_tokens, self.turn.new_tokens) if self.turn is not None else (0, 0)
        )
        return (
            f"{prompt + reply} / {self.context_window} tokens in the window "
            f"(prompt {prompt} + reply {reply}; {self.session.max_new_tokens} kept for the reply)"
        )

    def __repr__(self) -> str:
        return (
            f"ChatWidget(mode={self.mode!r}, {len(self.session.turns())} messages, "
            f"status={self.status!r})"
        )

    def show(self) -> None:
        """Display the widget (widget mode); headless there is nothing to show."""
        if self.widget is not None:
            from IPython.display import display

            display(self.widget)

    def _ipython_display_(self) -> None:
        if self.widget is not None:
            self.show()
        else:
            print(repr(self))

    # -- what a caller does
    def send(self, text: str) -> ChatWidget:
        """Send a message (what typing it and pressing Send does). Widget mode: returns at once."""
        if self.running:
            raise ChatError(
                "The model is still answering: press Stop (stop()) or wait() before sending again."
            )
        self.error = None
        try:
            self.turn = turn = self.session.start_turn(text)
        except CourseError as err:
            self._set_status(f"not sent: {err}")
            raise
        self.notice = str(turn.trim) if turn.trim.trimmed else ""
        if self.mode == "widget":
            self.reader_thread = threading.Thread(
                target=self._read, args=(turn,), name="qllm-chat-reader", daemon=True
            )
            self._busy(True)
            self.reader_thread.start()
            return self
        print(f"you: {text}" + (f"\n[{self.notice}]" if self.notice else ""), end="\nmodel: ")
        try:
            print_stream(turn, file=sys.stdout)
        except BaseException as err:
            self.error = err
            self._set_status(f"error: {type(err).__name__}: {err}")
            raise
        self._finished(turn)
        return self

    def stop(self) -> None:
        """End the reply after at most one more token (what the Stop button does)."""
        if self.turn is not None and self.turn.state == "running":
            self.turn.stop()

    def wait(self, timeout: float | None = None) -> ChatReply | None:
        """Block until the reply is done; return it (re-raises a generation error)."""
        join_reader(self, timeout)
        return self.turn.reply if self.turn is not None else None

    def reset(self) -> None:
        """Start a fresh conversation (the system prompt stays)."""
        self._idle_or_refuse("reset")
        self.session.reset()
        self.turn, self.notice = None, ""
        self._set_status("ready")
        self._redraw()

    def save(self, path) -> Path:
        """Save the history as JSON."""
        saved = self.session.save(path)
        self._set_status(f"saved {len(self.session.turns())} messages to {saved}")
        return saved

    def load(self, path) -> str:
        """Continue a saved history (a damaged file: a fresh history and a message saying so)."""
        self._idle_or_refuse("load")
        message = self.session.load(path)
        self.turn = None
        self.notice = message if "fresh history" in message else ""
        self._set_status(message)
        self._redraw()
        if self.mode == "console":
            print(message)
        return message

    def _idle_or_refuse(self, what: str) -> None:
        if self.running:
            raise ChatError(f"Cannot {what} while the model is answering: stop() or wait() first.")

    # -- the reader thread (widget mode): from send() on, it alone updates the widget values
    def _send_from_box(self) -> None:
        text = self.input_box.value
        if not text.strip() or self.running:
            return
        try:
            self.send(text)
        except CourseError:
            return  # the status line says why; a click handler has nowhere to raise to
        self.input_box.value = ""

    def _read(self, turn: ChatTurn) -> None:
        try:
            self._set_status("generating")
            self._redraw()
            last = float("-inf")
            for _piece in turn:
                now = time.perf_counter()
                if now - last >= self.refresh_s:
                    self._redraw()
                    self._set_status(format_status(turn, "generating"))
                    last = now
            self._finished(turn)
        except BaseException as err:
            self.error = err
            self._set_status(f"error: {type(err).__name__}: {err}")
        finally:
            self._redraw()
            self._busy(False)

    def _finished(self, turn: ChatTurn) -> None:
        r = turn.reply
        state = (
            "stopped"
            if r.stopped_by_user
            else ("done (max_new_tokens reached)" if r.finish == "length" else "done (end of turn)")
        )
        self._set_status(format_status(r, state))

    def _busy(self, busy: bool) -> None:
        self.send_button.disabled = busy
        self.stop_button.disabled = not busy
        (self.widget.add_class if busy else self.widget.remove_class)("qllm-chat-busy")

    def _shown(self) -> tuple[list[dict], str | None]:
        """(the history plus the user message being answered, the reply being written or None)."""
        with self.session.lock:
            messages, turn = [dict(m) for m in self.session.messages], self.turn
            if turn is None or turn.state != "running":
                return messages, None
            return messages + [{"role": "user", "content": turn.user_text}], turn.text

    def _redraw(self) -> None:
        if self.widget is None:
            return
        messages, live = self._shown()
        hidden = 2 * self.session.last_trim.dropped_pairs if self.session.last_trim else 0
        self.transcript_box.value = transcript_html(messages, hidden=hidden, live=live)
        self.token_counter.value = html.escape(self.token_line())
        self.notice_line.value = (
            f'<span style="color: #9a6700">{html.escape(self.notice)}</span>' if self.notice else ""
        )

    def _set_status(self, state: str) -> None:
        self.status = state
        if self.status_line is not None:
            self.status_line.value = html.escape(state)
