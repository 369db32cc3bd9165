"""The chat widget: a transcript, a text box, Send and Stop, and the token count against the window.

    ui = ChatWidget(lm, system="You are a helpful assistant.")   # or ChatWidget(session)
    ui.show()                                     # in Jupyter, Colab or VS Code
    ui.send("Hello"); ui.wait(); ui.transcript    # the same UI driven from code (tests, browsers)

It drives a `helpers.chat.ChatSession`; generation runs in a reader thread, so the kernel stays free
to hear the Stop button. Where no front end can show it, it prints the conversation instead.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from pathlib import Path

from .chat import ChatReply, ChatSession, ChatTurn
from .errors import ChatError, CourseError
from .streaming import format_status, join_reader, pick_mode, print_stream


_ROLE_LABEL = {"system": "system", "user": "you", "assistant": "model"}


def transcript_html(messages: list[dict], hidden: int = 0, live: str | None = None) -> str:
    """The transcript as HTML: one div per message (class qllm-chat-message qllm-chat-<role>, data-role).

    The first `hidden` user/assistant messages get the class qllm-chat-trimmed (the model no longer
    sees them); `live` is a reply being written (class qllm-chat-live).
    """
    rows, seen = [], 0
    for i, m in enumerate(messages):
        classes = f"qllm-chat-message qllm-chat-{m['role']}"
        if m["role"] != "system":
            if seen < hidden:
                classes += " qllm-chat-trimmed"
            seen += 1
        rows.append(_message_div(classes, m["role"], m["content"], i))
    if live is not None:
        rows.append(_message_div("qllm-chat-message qllm-chat-assistant qllm-chat-live", "assistant", live, len(messages)))
    return '<div class="qllm-chat-log">' + "".join(rows) + "</div>"


def _message_div(classes: str, role: str, content: str, index: int) -> str:
    faded = "opacity: 0.45;" if "trimmed" in classes else ""
    color = {"user": "#1f6feb", "assistant": "#2da44e", "system": "#8250df"}[role]
    return (f'<div class="{classes}" data-role="{role}" data-index="{index}" style="margin: 2px 0; {faded}">'
            f'<b style="color: {color}">{_ROLE_LABEL[role]}:</b> '
            f'<span class="qllm-chat-content" style="white-space: pre-wrap">{html.escape(content)}</span></div>')


class ChatWidget:
    """A chat UI: transcript, text box, Send and Stop, token count against the context window.

        ui = ChatWidget(lm, system="...", max_new_tokens=128)   # or ChatWidget(session)
        ui.show()                        # in Jupyter/Colab/VS Code: the widget; headless: nothing
        ui.send("Hello"); ui.wait()      # what typing + Send does; wait() returns the ChatReply
        ui.stop()                        # what Stop does
        ui.transcript, ui.token_count, ui.context_window, ui.status, ui.running, ui.reply_text, ui.reply_tokens

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
                raise ChatError("Pass session settings to ChatSession, or pass a model here, not both.")
            self.session = lm_or_session
        else:
            self.session = ChatSession(lm_or_session, **session_kwargs)
        self.mode = pick_mode(mode)
        self.refresh_s = refresh_s
        self.error: BaseException | None = None
        self.notice = ""
        self._status = "ready"
        self._turn: ChatTurn | None = None
        self.reader_thread: threading.Thread | None = None
        self.widget = self.transcript_box = self.input_box = self.send_button = self.stop_button = None
        self.token_counter = self.status_line = self.notice_line = None
        if self.mode == "widget":
            self._build()
            self._redraw()

    def _build(self) -> None:
        import ipywidgets as widgets

        self.transcript_box = widgets.HTML(layout=widgets.Layout(max_height="24em", overflow_y="auto",
                                                                 border="1px solid #ddd", padding="4px"))
        self.input_box = widgets.Textarea(placeholder="Type a message, then Send", rows=2,
                                          layout=widgets.Layout(width="100%"))
        self.send_button = widgets.Button(description="Send", icon="paper-plane", button_style="primary")
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="danger", disabled=True,
                                          tooltip="End the reply after the next token")
        self.token_counter = widgets.HTML()
        self.status_line = widgets.HTML()
        self.notice_line = widgets.HTML()
        self.send_button.on_click(lambda _b: self._send_from_box())
        self.stop_button.on_click(lambda _b: self.stop())
        self.widget = widgets.VBox([
            self.transcript_box, self.notice_line, self.input_box,
            widgets.HBox([self.send_button, self.stop_button, self.token_counter]), self.status_line])
        for part, name in [(self.widget, "qllm-chat"), (self.transcript_box, "qllm-chat-transcript"),
                           (self.input_box, "qllm-chat-input"), (self.send_button, "qllm-chat-send"),
                           (self.stop_button, "qllm-chat-stop"), (self.token_counter, "qllm-chat-tokens"),
                           (self.status_line, "qllm-chat-status"), (self.notice_line, "qllm-chat-notice")]:
            part.add_class(name)

    # -- what a caller reads
    @property
    def running(self) -> bool:
        if self.mode == "console":
            return False
        return self.reader_thread is not None and self.reader_thread.is_alive()

    @property
    def transcript(self) -> list[dict]:
        """The conversation as shown: the history plus the exchange being generated (system included)."""
        with self.session.lock:
            messages = [dict(m) for m in self.session.messages]
            turn = self._turn
            if turn is not None and turn.state == "running":
                messages += [{"role": "user", "content": turn.user_text}, {"role": "assistant", "content": turn.text}]
        return messages

    @property
    def token_count(self) -> int:
        """Tokens in the window: the last prompt plus its reply so far."""
        return self.session.token_count

    @property
    def context_window(self) -> int:
        return self.session.context_window

    @property
    def status(self) -> str:
        return self._status

    @property
    def reply_text(self) -> str:
        """The reply being written (or the last one)."""
        return self._turn.text if self._turn is not None else ""

    @property
    def reply_tokens(self) -> int:
        """Tokens generated so far for the reply being written (or the last one)."""
        return self._turn.new_tokens if self._turn is not None else 0

    def token_line(self) -> str:
        """'312 / 1024 tokens in the window (prompt 280 + reply 32; 64 kept for the reply)'."""
        s, turn = self.session, self._turn
        prompt = turn.prompt_tokens if turn else (s.last_reply.prompt_tokens if s.last_reply else 0)
        reply = turn.new_tokens if turn else 0
        return (f"{prompt + reply} / {s.context_window} tokens in the window "
                f"(prompt {prompt} + reply {reply}; {s.max_new_tokens} kept for the reply)")

    def __repr__(self) -> str:
        return f"ChatWidget(mode={self.mode!r}, {len(self.session.turns())} messages, status={self.status!r})"

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
    def send(self, text: str) -> "ChatWidget":
        """Send a message (what typing it and pressing Send does). Widget mode: returns at once."""
        if self.running:
            raise ChatError("The model is still answering: press Stop (stop()) or wait() before sending again.")
        self.error = None
        try:
            turn = self.session.start_turn(text)
        except CourseError as err:
            self._set_status(f"not sent: {err}")
            raise
        self._turn = turn
        self.notice = str(turn.trim) if turn.trim.trimmed else ""
        if self.mode == "console":
            out = sys.stdout
            out.write(f"you: {text}\n")
            if self.notice:
                out.write(f"[{self.notice}]\n")
            out.write("model: ")
            try:
                print_stream(turn, file=out)
            except BaseException as err:
                self.error = err
                self._set_status(f"error: {type(err).__name__}: {err}")
                raise
            finally:
                self.session.release_turn(turn)
            self._finished(turn)
            return self
        self.reader_thread = threading.Thread(target=self._read, args=(turn,), name="qllm-chat-reader", daemon=True)
        self._busy(True)
        self.reader_thread.start()
        return self

    def stop(self) -> None:
        """End the reply after at most one more token (what the Stop button does)."""
        if self._turn is not None and self._turn.state == "running":
            self._turn.stop()

    def wait(self, timeout: float | None = None) -> ChatReply | None:
        """Block until the reply is done; return it (re-raises a generation error)."""
        join_reader(self, timeout)
        return self._turn.reply if self._turn is not None else None

    def reset(self) -> None:
        """Start a fresh conversation (the system prompt stays)."""
        self._idle_or_refuse("reset")
        self.session.reset()
        self._turn, self.notice = None, ""
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
        self._turn = None
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
            self._redraw(turn)
            last = float("-inf")
            for _piece in turn:
                now = time.perf_counter()
                if now - last >= self.refresh_s:
                    self._redraw(turn)
                    self._set_status("generating", turn)
                    last = now
            self._finished(turn)
        except BaseException as err:
            self.error = err
            self._set_status(f"error: {type(err).__name__}: {err}")
        finally:
            self.session.release_turn(turn)
            self._redraw()
            self._busy(False)

    def _finished(self, turn: ChatTurn) -> None:
        r = turn.reply
        state = "stopped" if r.stopped_by_user else ("done (max_new_tokens reached)" if r.finish == "length"
                                                     else "done (end of turn)")
        self._set_status(format_status(state, r.new_tokens, r.ttft_s, r.tokens_per_s))

    def _busy(self, busy: bool) -> None:
        if self.widget is None:
            return
        self.send_button.disabled = busy
        self.stop_button.disabled = not busy
        (self.widget.add_class if busy else self.widget.remove_class)("qllm-chat-busy")

    def _redraw(self, turn: ChatTurn | None = None) -> None:
        if self.widget is None:
            return
        with self.session.lock:
            messages = list(self.session.messages)
            live = None
            if turn is not None and turn.state == "running":
                messages.append({"role": "user", "content": turn.user_text})
                live = turn.text
        hidden = 2 * self.session.last_trim.dropped_pairs if self.session.last_trim else 0
        self.transcript_box.value = transcript_html(messages, hidden=hidden, live=live)
        self.token_counter.value = html.escape(self.token_line())
        self.notice_line.value = (f'<span style="color: #9a6700">{html.escape(self.notice)}</span>'
                                  if self.notice else "")

    def _set_status(self, state: str, turn: ChatTurn | None = None) -> None:
        if turn is not None:
            state = format_status(state, turn.new_tokens, turn.ttft_s, turn.tokens_per_s())
        self._status = state
        if self.status_line is not None:
            self.status_line.value = html.escape(state)


# ---- the terminal chat ----------------------------------------------------------------------
