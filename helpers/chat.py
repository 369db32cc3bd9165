"""Multi-turn chat with any course model: history, template, trimming, streaming, save/load, a widget UI.

    session = ChatSession(lm, system="You are a helpful assistant.")   # lm from loading.load_model
    reply = session.ask("What is GPTQ?")          # prints as it streams; reply.text, reply.trim, ...
    session.ask("用一句话解释一下。")                 # the history goes along with every turn
    session.save("chat.json"); session.load("chat.json")

    ui = ChatWidget(lm); ui.show()                # text box, Send, Stop, transcript, token count
    ui.send("Hello"); ui.wait(); ui.transcript    # the same UI driven from code (tests, browsers)

    python -m helpers.chat gguf                   # a terminal chat (/reset /save /load /exit)

**Which template.** `template="chat"` renders the messages with the model's chat template: the
tokenizer's for Transformers models, `tokenizer.chat_template` from the metadata for a GGUF file
and, for a Gemma GGUF that carries none (the course model), the course's copy of Gemma's turn
format, the very template the course's Transformers folders carry. Both backends thus render the
prompt here, as text, and stream it as a plain completion: one code path. `template="completion"`
writes a transcript ("User: ...\\nAssistant:") that a *base* model can continue. `"auto"` takes the
model's own chat template when it has one and the completion template otherwise; the course
model's template was written by the course, not learned by the model, so "auto" picks completion
for it. `session.template.describe()` says which one is in use and why.

**Trimming.** Before every turn the prompt is counted in tokens. If prompt + `max_new_tokens`
would not fit the context window, the oldest user/assistant exchanges are left out of the prompt,
whole and oldest first; the system prompt always stays. The history itself keeps everything (it is
what you see and save); `reply.trim` says what the model did not see. A single message too long
for the window raises ContextWindowError.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from .errors import CourseError
from .streaming import (StreamResult, TokenStream, _claim, _pick_mode, format_status, join_reader,
                        print_stream)

COURSE_TEMPLATE_FILE = Path(__file__).parent / "data" / "gemma_chat_template.jinja"
COURSE_TEMPLATE_MARK = "written for this course"  # in the course's own Gemma template
HISTORY_FORMAT = "qllm-chat-history"
ROLES = ("system", "user", "assistant")
COMPLETION_LABELS = {"user": "User", "assistant": "Assistant"}


class ChatError(CourseError):
    """A chat problem the learner can fix."""


class ContextWindowError(ChatError):
    """The newest message alone (with the system prompt and the reply) does not fit the context window."""


class ChatHistoryError(ChatError):
    """A history file could not be read or written."""


# ---- messages -------------------------------------------------------------------------------

def check_messages(messages, ends_with_user: bool = False) -> list[dict]:
    """Validate a message list (an optional leading system message, then user/assistant turns in turn).

    Returns plain {"role", "content"} dicts; raises ChatError saying what is wrong.
    """
    if not isinstance(messages, list):
        raise ChatError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, not {type(messages).__name__}.")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ChatError(f"message {i} is not a {{'role': str, 'content': str}} dict: {str(m)[:80]!r}.")
        if m["role"] not in ROLES:
            raise ChatError(f"message {i} has role {m['role']!r}; the roles are {', '.join(ROLES)}.")
        clean.append({"role": m["role"], "content": m["content"]})
    start = 1 if clean and clean[0]["role"] == "system" else 0
    for i, m in enumerate(clean[start:], start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ChatError(f"message {i} is a {m['role']!r} message where a {expected!r} one belongs: after an "
                            "optional system message, turns alternate user, assistant, user, ...")
    if ends_with_user and (len(clean) == start or clean[-1]["role"] != "user"):
        raise ChatError("the messages must end with a user message (the one to answer).")
    return clean


def split_turns(messages: list[dict]) -> tuple[dict | None, list[list[dict]], dict]:
    """(system message or None, [[user, assistant], ...] oldest first, the final user message)."""
    messages = check_messages(messages, ends_with_user=True)
    system = messages[0] if messages[0]["role"] == "system" else None
    turns = messages[1:] if system else messages
    pairs = [turns[i:i + 2] for i in range(0, len(turns) - 1, 2)]
    return system, pairs, turns[-1]


# ---- trimming -------------------------------------------------------------------------------

@dataclass
class TrimReport:
    """What trimming did for one prompt: how many exchanges the model no longer sees, and the figures."""

    dropped_pairs: int        # user/assistant exchanges left out, oldest first
    kept_pairs: int           # earlier exchanges still in the prompt
    prompt_tokens: int        # tokens of the prompt that is sent
    reply_tokens: int         # room kept for the reply (max_new_tokens)
    window: int               # the context window, in tokens
    dropped_tokens: int = 0   # how many prompt tokens the dropped exchanges took

    @property
    def trimmed(self) -> bool:
        return self.dropped_pairs > 0

    def __str__(self) -> str:
        fit = (f"prompt {self.prompt_tokens} + reply up to {self.reply_tokens} tokens "
               f"= {self.prompt_tokens + self.reply_tokens} of the {self.window}-token window")
        if not self.trimmed:
            return f"nothing trimmed: {fit}"
        s = "s" if self.dropped_pairs > 1 else ""
        return (f"trimmed: the model no longer sees the {self.dropped_pairs} oldest exchange{s} "
                f"({2 * self.dropped_pairs} messages, {self.dropped_tokens} tokens); the system prompt and "
                f"{self.kept_pairs} later exchange{'s' if self.kept_pairs != 1 else ''} stay; {fit}")


@dataclass
class Trimmed:
    """The result of trim_history: the messages to send and how many exchanges were dropped."""

    messages: list[dict]
    dropped_pairs: int
    prompt_tokens: int
    untrimmed_tokens: int


def trim_history(messages: list[dict], count_tokens: Callable[[list[dict]], int], budget: int) -> Trimmed:
    """Drop the fewest oldest user/assistant pairs so that count_tokens(kept) <= budget.

    The system message and the final user message always stay; pairs are dropped whole, oldest
    first. Raises ContextWindowError when even system + final user message exceed the budget.
    `count_tokens` counts the rendered prompt of a message list (it only ever grows with more pairs).
    """
    system, pairs, last = split_turns(messages)
    head = [system] if system else []

    def keep_from(k: int) -> list[dict]:
        return head + [m for pair in pairs[k:] for m in pair] + [last]

    full = count_tokens(keep_from(0))
    if full <= budget:
        return Trimmed(keep_from(0), 0, full, full)
    alone = count_tokens(keep_from(len(pairs)))
    if alone > budget:
        raise ContextWindowError(
            f"The newest message is too long for the context window: with the system prompt and the template "
            f"it makes a {alone}-token prompt, and only {budget} tokens are left once the reply's room "
            "(max_new_tokens) is set aside. Shorten the message (or the system prompt), lower max_new_tokens, "
            "or give the model a larger window (load_model(..., n_ctx=...) for GGUF).")
    low, high = 1, len(pairs)  # the fewest pairs to drop: the count only shrinks as pairs go
    counts = {len(pairs): alone}
    while low < high:
        mid = (low + high) // 2
        counts[mid] = count_tokens(keep_from(mid))
        if counts[mid] <= budget:
            high = mid
        else:
            low = mid + 1
    tokens = counts.get(low)
    if tokens is None:
        tokens = count_tokens(keep_from(low))
    return Trimmed(keep_from(low), low, tokens, full)


# ---- templates ------------------------------------------------------------------------------

@dataclass
class ChatTemplate:
    """How messages become a prompt: kind "chat" (a Jinja chat template) or "completion" (a transcript)."""

    kind: str                     # "chat" | "completion"
    source: str                   # where it comes from, in words
    render: Callable[..., str]    # render(messages, add_generation_prompt=True) -> prompt text
    stop_strings: list[str] = field(default_factory=list)   # the reply ends before any of these
    end_token_ids: list[int] = field(default_factory=list)  # and at these tokens (Transformers)
    reason: str = ""              # why "auto" chose it

    def describe(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.kind} template: {self.source}{why}"


def render_completion(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """A transcript a base model can continue: system text, then "User: ..." / "Assistant: ..." lines."""
    messages = check_messages(messages)
    parts = []
    if messages and messages[0]["role"] == "system":
        parts.append(messages[0]["content"].strip() + "\n\n")
        messages = messages[1:]
    for m in messages:
        parts.append(f"{COMPLETION_LABELS[m['role']]}: {m['content'].strip()}\n")
    if add_generation_prompt:
        parts.append(f"{COMPLETION_LABELS['assistant']}:")
    return "".join(parts)


def render_jinja(template: str, messages: list[dict], bos_token: str = "", eos_token: str = "",
                 add_generation_prompt: bool = True) -> str:
    """Run a chat template the way Transformers does (sandboxed Jinja, trim_blocks, lstrip_blocks)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ChatError(f"the chat template refused these messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(messages=check_messages(messages), bos_token=bos_token,
                                            eos_token=eos_token, add_generation_prompt=add_generation_prompt)


def own_chat_template(lm) -> tuple[str | None, str]:
    """The chat template the model ships (tokenizer or GGUF metadata), and where it was found."""
    if lm.backend == "llama.cpp":
        return lm.model.metadata.get("tokenizer.chat_template"), "the GGUF metadata (tokenizer.chat_template)"
    return getattr(lm.tokenizer, "chat_template", None), "the tokenizer's chat_template"


def _special_text(lm, token_id: int) -> str:
    return lm.model.detokenize([token_id], special=True).decode("utf-8", errors="ignore")


def choose_template(lm, template: str = "auto", chat_template: str | None = None) -> ChatTemplate:
    """Pick how to render prompts for `lm`: "auto", "chat" or "completion" (see the module docstring).

    `chat_template` (Jinja text) overrides the model's own template.
    """
    if template not in ("auto", "chat", "completion"):
        raise ChatError(f"template must be 'auto', 'chat' or 'completion', not {template!r}.")
    own, where = own_chat_template(lm)
    if chat_template:
        own, where, template = chat_template, "the chat_template you passed", "chat"
    course_written = bool(own) and COURSE_TEMPLATE_MARK in own
    completion = ChatTemplate(kind="completion", source='a "User: ... / Assistant:" transcript',
                              render=render_completion,
                              stop_strings=[f"\n{label}:" for label in COMPLETION_LABELS.values()])
    if template == "completion":
        return completion
    if template == "auto":
        if not own:
            completion.reason = f"auto: no chat template in {where}, so a base model: completion works best"
            return completion
        if course_written:
            completion.reason = ("auto: the model's only chat template was written by this course for a base "
                                 "model that never learned it; pass template='chat' to use it anyway")
            return completion
    arch = lm.model.metadata.get("general.architecture", "") if lm.backend == "llama.cpp" else ""
    if not own:
        if not arch.startswith("gemma"):
            raise ChatError(
                f"This model has no chat template in {where}, and its architecture ({arch or 'unknown'}) has no "
                "format the course knows. Use template='completion', or pass chat_template='...' (the Jinja "
                "template from the model's tokenizer_config.json or model card).")
        own, where = COURSE_TEMPLATE_FILE.read_text(), ("Gemma's turn format, the course's copy "
                                                        "(helpers/data/gemma_chat_template.jinja): the GGUF has none")
    elif not where.startswith("the chat_template you passed"):
        where = where + (" (written by this course; the model never learned it)" if course_written
                         else ", the model's own")
    return _jinja_chat_template(lm, own, where)


def _jinja_chat_template(lm, jinja: str, where: str) -> ChatTemplate:
    if lm.backend == "llama.cpp":
        llm = lm.model
        bos, eos = _special_text(lm, llm.token_bos()), _special_text(lm, llm.token_eos())

        def render(messages, add_generation_prompt=True):
            return render_jinja(jinja, messages, bos, eos, add_generation_prompt)
    else:
        tok = lm.tokenizer
        if jinja is tok.chat_template or jinja == tok.chat_template:
            def render(messages, add_generation_prompt=True):
                return tok.apply_chat_template(check_messages(messages), add_generation_prompt=add_generation_prompt,
                                               tokenize=False)
        else:
            def render(messages, add_generation_prompt=True):
                return render_jinja(jinja, messages, tok.bos_token or "", tok.eos_token or "", add_generation_prompt)
    end_marker = _end_of_turn_marker(render)
    end_ids = _end_token_ids(lm, end_marker) if end_marker else []
    return ChatTemplate(kind="chat", source=where, render=render, end_token_ids=end_ids,
                        stop_strings=[end_marker] if end_marker else [])


def _end_of_turn_marker(render) -> str:
    """What the template writes after an assistant message (e.g. '<end_of_turn>'), found by rendering one."""
    try:
        probe = render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "PROBE"}],
                       add_generation_prompt=False)
    except Exception:  # some templates insist on ending with a user message
        return ""
    tail = probe.split("PROBE", 1)[1].strip() if "PROBE" in probe else ""
    return tail.split()[0] if tail else ""


def _end_token_ids(lm, marker: str) -> list[int]:
    """The token id(s) of the end-of-turn marker when it is a single special token; else none."""
    if lm.backend == "llama.cpp":
        ids = lm.model.tokenize(marker.encode("utf-8"), add_bos=False, special=True)
    else:
        ids = lm.tokenizer(marker, add_special_tokens=False)["input_ids"]
    return list(ids) if len(ids) == 1 else []


# ---- token counting -------------------------------------------------------------------------

def count_prompt_tokens(lm, prompt: str) -> int:
    """Tokens `prompt` takes, counted exactly as the streaming helper feeds it (one <bos>, never two)."""
    if lm.backend == "llama.cpp":
        llm = lm.model
        bos = _special_text(lm, llm.token_bos())
        has_bos = bool(bos) and prompt.startswith(bos)
        return len(llm.tokenize(prompt.encode("utf-8"), add_bos=not has_bos, special=True))
    tok = lm.tokenizer
    has_bos = bool(tok.bos_token) and prompt.startswith(tok.bos_token)
    return len(tok(prompt, add_special_tokens=not has_bos)["input_ids"])


# ---- one exchange ---------------------------------------------------------------------------

@dataclass
class ChatReply:
    """One answered turn."""

    text: str
    prompt_tokens: int
    new_tokens: int
    ttft_s: float | None
    seconds: float
    tokens_per_s: float
    stopped_by_user: bool
    finish: str               # "end_of_turn" | "stop_string" | "length" | "user"
    trim: TrimReport


def _stop_position(text: str, stops: list[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could be the start of a stop string (not shown yet)."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


class ChatTurn:
    """One reply being generated: iterate it for text pieces; `stop()` from any thread.

    It behaves like a streaming.TokenStream (so `streaming.print_stream` can print it), ends the
    reply at the template's stop strings (never shown), and when the iteration ends, also by Stop,
    adds the user message and the reply to the session's history. An error adds nothing.
    """

    def __init__(self, session: "ChatSession", user_text: str, prompt: str, trim: TrimReport):
        self.session, self.user_text, self.prompt, self.trim = session, user_text, prompt, trim
        extra = {}
        template = session.template
        if session.lm.backend == "transformers" and template.end_token_ids:
            eos = session.lm.model.generation_config.eos_token_id
            eos = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
            extra["eos_token_id"] = eos + [i for i in template.end_token_ids if i not in eos]
        self.tokens = TokenStream(session.lm, prompt, session.max_new_tokens, session.temperature, **extra)
        self.stops = list(template.stop_strings)
        self._text = ""
        self._user_stop = False
        self._hit_stop = False
        self.result: StreamResult | None = None
        self.reply: ChatReply | None = None
        self.state = "running"  # then "committed" (in the history) or "failed"

    # the TokenStream-like surface
    @property
    def text(self) -> str:
        return self._text

    @property
    def prompt_tokens(self) -> int:
        return self.trim.prompt_tokens

    @property
    def new_tokens(self) -> int:
        return self.tokens.new_tokens

    @property
    def ttft_s(self) -> float | None:
        return self.tokens.ttft_s

    def tokens_per_s(self, now: float | None = None) -> float:
        return self.tokens.tokens_per_s(now)

    def stop(self) -> None:
        """End the reply after at most one more token; what was written so far is kept."""
        self._user_stop = True
        self.tokens.stop()

    def __iter__(self) -> Iterator[str]:
        inner = iter(self.tokens)
        full, keep = "", False
        try:
            for piece in inner:
                if self._hit_stop:
                    continue  # the one token that may follow a stop request
                full += piece
                cut = _stop_position(full, self.stops)
                if cut is not None:
                    self._hit_stop = True
                    self.tokens.stop()
                    upto = cut
                else:
                    upto = len(full) - _held_back(full, self.stops)
                visible = full[:upto].strip()  # blank space shows once text follows it
                if len(visible) > len(self._text):
                    new, self._text = visible[len(self._text):], visible
                    yield new
            if not self._hit_stop:
                visible = full.strip()
                if len(visible) > len(self._text):
                    new, self._text = visible[len(self._text):], visible
                    yield new
            keep = True
        except GeneratorExit:  # the reader left early (Ctrl-C in print_stream): keep what was shown
            self._user_stop = keep = True
            raise
        except KeyboardInterrupt:  # Ctrl-C while generating: it means Stop, as in the streaming helper
            self._user_stop = keep = True
        finally:
            inner.close()
            if self.tokens.result is not None:
                self._finish(keep)

    def _finish(self, keep: bool) -> None:
        r = self.tokens.result
        finish = ("user" if self._user_stop else "stop_string" if self._hit_stop
                  else "length" if r.new_tokens >= self.session.max_new_tokens else "end_of_turn")
        self.result = StreamResult(text=self._text.strip(), prompt_tokens=r.prompt_tokens, new_tokens=r.new_tokens,
                                   ttft_s=r.ttft_s, seconds=r.seconds, tokens_per_s=r.tokens_per_s,
                                   stopped_by_user=self._user_stop)
        self.reply = ChatReply(text=self.result.text, prompt_tokens=r.prompt_tokens, new_tokens=r.new_tokens,
                               ttft_s=r.ttft_s, seconds=r.seconds, tokens_per_s=r.tokens_per_s,
                               stopped_by_user=self._user_stop, finish=finish, trim=self.trim)
        if keep:
            self.session._commit(self)
        else:
            self.state = "failed"


# ---- the session ----------------------------------------------------------------------------

class ChatSession:
    """A conversation with one model: history, template, trimming, streaming, save/load.

    context_window: the tokens prompt + reply may take (default: the model's context length; for
    GGUF at most the n_ctx it was loaded with). Set it lower to see trimming at work.
    """

    def __init__(self, lm, system: str | None = None, template: str = "auto", max_new_tokens: int = 256,
                 temperature: float = 0.0, context_window: int | None = None, chat_template: str | None = None,
                 history: list[dict] | None = None):
        self.lm = lm
        self.template = choose_template(lm, template, chat_template)
        self.max_new_tokens, self.temperature = int(max_new_tokens), float(temperature)
        window = int(context_window or lm.context_length)
        if lm.backend == "llama.cpp" and window > lm.context_length:
            raise ChatError(f"context_window={window} is larger than the {lm.context_length} tokens this GGUF model "
                            f"was loaded with (n_ctx); load it with load_model(..., n_ctx={window}) or lower it.")
        if self.max_new_tokens >= window:
            raise ChatError(f"max_new_tokens={self.max_new_tokens} leaves no room for the prompt in a {window}-token "
                            "context window: lower it, or use a larger window.")
        self.context_window = window
        self.system = system
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.last_trim: TrimReport | None = None
        self.last_reply: ChatReply | None = None
        self.current: ChatTurn | None = None
        self._lock = threading.Lock()
        if history:
            self.replace_history(history)

    def __repr__(self) -> str:
        return (f"ChatSession({self.template.kind} template, {len(self.turns())} exchanges, "
                f"window {self.context_window} tokens, max_new_tokens {self.max_new_tokens})")

    # -- looking
    def turns(self) -> list[dict]:
        """The user/assistant messages (the history without its system message)."""
        return [m for m in self.messages if m["role"] != "system"]

    @property
    def token_count(self) -> int:
        """Tokens in the window now: the last prompt sent plus its reply so far."""
        turn = self.current
        if turn is not None:
            return turn.prompt_tokens + turn.new_tokens
        if self.last_reply is not None:
            return self.last_reply.prompt_tokens + self.last_reply.new_tokens
        return 0

    def render(self, messages: list[dict] | None = None, add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages` (default: the history) with this session's template."""
        return self.template.render(self.messages if messages is None else messages,
                                    add_generation_prompt=add_generation_prompt)

    def count_tokens(self, messages: list[dict]) -> int:
        """Tokens of the rendered prompt for `messages`."""
        return count_prompt_tokens(self.lm, self.render(messages))

    def prepare(self, user_text: str) -> tuple[str, TrimReport]:
        """The prompt for the next turn (history + user_text), trimmed to fit, and what trimming did."""
        if not isinstance(user_text, str) or not user_text.strip():
            raise ChatError("Type a message first: it is empty.")
        budget = self.context_window - self.max_new_tokens
        candidate = self.messages + [{"role": "user", "content": user_text}]
        trimmed = trim_history(candidate, self.count_tokens, budget)
        kept_pairs = (len(candidate) - (1 if self.system_message() else 0) - 1) // 2 - trimmed.dropped_pairs
        report = TrimReport(dropped_pairs=trimmed.dropped_pairs, kept_pairs=kept_pairs,
                            prompt_tokens=trimmed.prompt_tokens, reply_tokens=self.max_new_tokens,
                            window=self.context_window,
                            dropped_tokens=trimmed.untrimmed_tokens - trimmed.prompt_tokens)
        return self.render(trimmed.messages), report

    def system_message(self) -> dict | None:
        return self.messages[0] if self.messages and self.messages[0]["role"] == "system" else None

    # -- talking
    def start_turn(self, user_text: str) -> ChatTurn:
        """A ChatTurn for `user_text`: iterate it to generate (it joins the history when it ends)."""
        if self.current is not None:
            raise ChatError("A reply is still being generated: stop it (or wait for it) before sending another message.")
        _claim(self.lm, check_only=True)
        prompt, report = self.prepare(user_text)
        self.last_trim = report
        turn = ChatTurn(self, user_text, prompt, report)
        self.current = turn
        return turn

    def ask(self, user_text: str, stream: bool = True, file=None) -> ChatReply:
        """Answer `user_text`, printing the reply as it streams (or at the end), and a status line."""
        out = file or sys.stdout
        turn = self.start_turn(user_text)
        try:
            if turn.trim.trimmed:
                out.write(f"[{turn.trim}]\n")
            if stream:
                print_stream(turn, file=out)
            else:
                pieces = iter(turn)
                while True:
                    try:
                        for _piece in pieces:
                            pass
                        break
                    except KeyboardInterrupt:  # Stop: the reply ends within one token
                        turn.stop()
                r = turn.result
                state = "stopped" if r.stopped_by_user else "done"
                out.write(f"{r.text}\n[{format_status(state, r.new_tokens, r.ttft_s, r.tokens_per_s)}]\n")
                out.flush()
        finally:
            self._release(turn)
        return turn.reply

    def reply(self, user_text: str) -> ChatReply:
        """Answer `user_text` without printing anything."""
        turn = self.start_turn(user_text)
        try:
            for _piece in turn:
                pass
        finally:
            self._release(turn)
        return turn.reply

    def _commit(self, turn: ChatTurn) -> None:
        with self._lock:
            self.messages.append({"role": "user", "content": turn.user_text})
            self.messages.append({"role": "assistant", "content": turn.reply.text})
            self.last_reply = turn.reply
            turn.state = "committed"

    def _release(self, turn: ChatTurn) -> None:
        if self.current is turn:
            self.current = None

    # -- history
    def reset(self) -> None:
        """Forget the conversation; the system prompt stays."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.last_trim = self.last_reply = None

    def replace_history(self, messages: list[dict]) -> None:
        """Continue from `messages` (a saved history); its system message, if any, becomes the system prompt."""
        messages = check_messages(messages)
        if messages and messages[-1]["role"] == "user":
            raise ChatError("the history ends with an unanswered user message; a history ends with a reply.")
        if messages and messages[0]["role"] == "system":
            self.system = messages[0]["content"]
        elif self.system:
            messages = [{"role": "system", "content": self.system}] + messages
        self.messages = messages
        self.last_trim = self.last_reply = None

    def save(self, path) -> Path:
        """Write the history to `path` as JSON (atomically: the old file survives any failure)."""
        return save_history(path, self.messages, model=str(getattr(self.lm, "path", "")),
                            template=self.template.kind)

    def load(self, path) -> str:
        """Continue from a saved history; returns what happened, in words (a bad file: a fresh history)."""
        messages, problem = load_history(path)
        if problem:
            self.reset()
            return problem
        try:
            self.replace_history(messages)
        except ChatError as err:
            self.reset()
            return f"{path} holds a history this session cannot continue ({err}); starting a fresh history."
        return f"loaded {len(self.turns())} messages from {path}"


# ---- save and load --------------------------------------------------------------------------

def save_history(path, messages: list[dict], **meta) -> Path:
    """Write messages (+ meta) as JSON: a temporary file in the same folder, then os.replace.

    Refuses to replace an existing file that is not a chat history. On any failure the old file is
    left as it was and ChatHistoryError says why.
    """
    path = Path(path).expanduser()
    messages = check_messages(messages)
    if path.is_dir():
        raise ChatHistoryError(f"Cannot save the chat to {path}: it is a folder. Give a file name, e.g. {path / 'chat.json'}.")
    folder = next((p for p in path.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise ChatHistoryError(f"Cannot save the chat to {path}: {folder} is a file, not a folder. "
                               "Choose a path in a folder you can write to.")
    if path.exists() and path.stat().st_size > 0:
        _old, problem = _read_history(path)
        if problem:
            raise ChatHistoryError(f"Not saving over {path}: it exists and is not a chat history ({problem}). "
                                   "Move it away or choose another file name.")
    document = {"format": HISTORY_FORMAT, "version": 1, "saved_at": datetime.now().isoformat(timespec="seconds"),
                **{k: v if v is None or isinstance(v, (str, int, float, bool)) else str(v) for k, v in meta.items()},
                "messages": messages}  # meta: plain values; a Path or the like is saved as its text
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, ensure_ascii=False, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise ChatHistoryError(
            f"Cannot save the chat to {path}: {err.strerror or err} ({type(err).__name__}). "
            + ("The old file is unchanged. " if path.exists() else "")
            + "Choose a folder you can write to.") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def _read_history(path: Path) -> tuple[list[dict] | None, str | None]:
    """(messages, None) or (None, what is wrong) for a history file."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ChatHistoryError(f"Cannot read {path}: {err.strerror or err}.") from None
    if not raw.strip():
        return None, "the file is empty"
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "it is not UTF-8 text"
    except ValueError as err:
        return None, f"it is not valid JSON: {err}"
    messages = data.get("messages") if isinstance(data, dict) else data  # a bare list is accepted too
    if isinstance(data, dict) and "messages" not in data:
        return None, "it is JSON but has no 'messages' list"
    try:
        return check_messages(messages), None
    except ChatError as err:
        return None, f"it is JSON but not a chat history: {err}"


def load_history(path) -> tuple[list[dict], str | None]:
    """Read a saved history: (messages, None), or ([], a message) when the file is empty or damaged.

    A damaged file is never overwritten later: it is renamed to `<name>.corrupt-<time>` and kept.
    A missing file raises ChatHistoryError.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ChatHistoryError(f"No chat history at {path}: the file does not exist. Check the path "
                               "(a history is written by save() or /save).")
    if path.is_dir():
        raise ChatHistoryError(f"{path} is a folder, not a chat history file.")
    messages, problem = _read_history(path)
    if problem is None:
        return messages, None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    try:
        os.replace(path, target)
        kept = f"it is kept as {target}"
    except OSError as err:
        kept = f"it could not be renamed ({err.strerror or err}) and stays where it is; saving over it is refused"
    return [], f"{path} is not a usable chat history ({problem}); {kept}. Starting a fresh history."


# ---- the widget -----------------------------------------------------------------------------

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
        self.mode = _pick_mode(mode)
        self.refresh_s = refresh_s
        self.error: BaseException | None = None
        self.notice = ""
        self._status = "ready"
        self._turn: ChatTurn | None = None
        self._reader: threading.Thread | None = None
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
        return self._reader is not None and self._reader.is_alive()

    @property
    def transcript(self) -> list[dict]:
        """The conversation as shown: the history plus the exchange being generated (system included)."""
        with self.session._lock:
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
                self.session._release(turn)
            self._finished(turn)
            return self
        self._reader = threading.Thread(target=self._read, args=(turn,), name="qllm-chat-reader", daemon=True)
        self._busy(True)
        self._reader.start()
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
            self.session._release(turn)
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
        with self.session._lock:
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

HELP = """commands: /reset (forget the conversation), /save PATH, /load PATH, /help, /exit (or Ctrl-D)
Ctrl-C while the model writes stops the reply."""


def resolve_model(name: str, gguf_file: str | None = None):
    """A course format name (gguf, hf, gptq, awq; 'course' = gguf) -> its path; anything else unchanged."""
    from . import course_models

    key = name.strip().lower()
    if key == "course":
        key = "gguf"
    if key in course_models.FORMATS:
        path = course_models.model_path(key)
        if not path.exists():
            raise ChatError(f"The course's {key} model is not built yet ({path}). Build it with "
                            "`python -m helpers.course_models build` (a few minutes, offline).")
        return path
    if gguf_file:
        from .hub import download_model

        return download_model(name, gguf_file=gguf_file)
    return name


def main(argv: list[str] | None = None) -> int:
    """python -m helpers.chat MODEL: a terminal chat; reads lines from stdin (a pipe works too)."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.chat",
        description="Chat with a local model in the terminal. Commands: /reset, /save PATH, /load PATH, /help, /exit.")
    parser.add_argument("model", help="a .gguf file, a model folder, a hub id (owner/name), or a course model: "
                                      "gguf, hf, gptq, awq (course = gguf)")
    parser.add_argument("--system", default="You are a helpful assistant. Answer briefly.",
                        help="the system prompt (default: %(default)r; '' for none)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest reply, in tokens (default 256)")
    parser.add_argument("--no-stream", action="store_true", help="print each reply when it is complete")
    parser.add_argument("--template", choices=["auto", "chat", "completion"], default="auto",
                        help="how the conversation becomes a prompt (default auto: the model's own chat template, "
                             "else a completion transcript for base models)")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context window in tokens (default 4096)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--load", metavar="PATH", help="continue a saved history")
    parser.add_argument("--gguf-file", metavar="PATTERN", help="with a hub id: which .gguf file, e.g. '*Q4_K_M.gguf'")
    parser.add_argument("--threads", type=int, help="CPU threads (default $QLLM_THREADS or all cores)")
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")  # never die printing a character the terminal lacks
    from .loading import load_model

    try:
        source = resolve_model(args.model, args.gguf_file)
        print(f"loading {source} ...", flush=True)
        lm = load_model(source, n_ctx=args.n_ctx, n_threads=args.threads)
        session = ChatSession(lm, system=args.system or None, template=args.template,
                              max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              context_window=min(args.n_ctx, lm.context_length))
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return _chat_loop(session, args)
    finally:
        if lm.backend == "llama.cpp":
            lm.model.close()  # free it now, not in a destructor at interpreter exit


def _chat_loop(session: ChatSession, args) -> int:
    interactive = sys.stdin.isatty()
    lm = session.lm
    print(f"{lm.format} model via {lm.backend}: {lm.path.name}")
    print(session.template.describe())
    print(f"window {session.context_window} tokens, replies up to {session.max_new_tokens} tokens, "
          f"streaming {'off' if args.no_stream else 'on'}")
    print(HELP, flush=True)
    if args.load:
        _try(lambda: print(session.load(args.load)))
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            print()
            break
        if not line:  # end of input: Ctrl-D, or the end of a pipe
            if interactive:
                print()
            break
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        if not interactive:
            print(f"you> {text}")  # a piped conversation reads like a transcript
        if text.startswith("/"):
            if not _command(session, text):
                break
            continue
        print("model> ", end="", flush=True)
        try:
            session.ask(text, stream=not args.no_stream)
        except KeyboardInterrupt:
            print("\n[stopped]")
        except CourseError as err:
            print(f"\n[{err}]")
    print("bye", flush=True)
    return 0


def _try(action) -> None:
    try:
        action()
    except CourseError as err:
        print(f"[{err}]")


def _command(session: ChatSession, text: str) -> bool:
    """Run a /command; False means exit."""
    name, _, arg = text.partition(" ")
    name, arg = name.lower(), arg.strip()
    if name in ("/exit", "/quit", "/bye"):
        return False
    if name == "/reset":
        session.reset()
        print("[history cleared; the system prompt stays]")
    elif name in ("/save", "/load"):
        if not arg:
            print(f"[{name} needs a file name: {name} chat.json]")
        elif name == "/save":
            _try(lambda: print(f"[saved {len(session.turns())} messages to {session.save(arg)}]"))
        else:
            _try(lambda: print(f"[{session.load(arg)}]"))
    elif name == "/help":
        print(HELP)
    else:
        print(f"[unknown command {name}] {HELP}")
    return True


if __name__ == "__main__":
    sys.exit(main())
