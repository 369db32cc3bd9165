"""Multi-turn chat with any course model: history, template, trimming, streaming, save/load.

    session = ChatSession(lm, system="You are a helpful assistant.")   # lm from loading.load_model
    reply = session.ask("What is GPTQ?")          # prints as it streams; reply.text, reply.trim, ...
    session.ask("用一句话解释一下。")                 # the history goes along with every turn
    session.save("chat.json"); session.load("chat.json")


The chat widget is `helpers.chat_widget.ChatWidget`; the terminal chat is `python -m course.chat_cli gguf`.

**Which template.** `template="chat"` renders the messages with the model's chat template: the
tokenizer's for Transformers models, `tokenizer.chat_template` from the metadata for a GGUF file
and, for a Gemma GGUF that carries none (the course model), the course's copy of Gemma's turn
format, the very template the course's Transformers folders carry. Both backends thus render the
prompt here, as text, and stream it as a plain completion: one code path. `template="completion"`
writes a transcript ("User: ...\\nAssistant:") that a *base* model can continue; `"few-shot"` opens
that transcript with a few answered questions (FEW_SHOT_EXAMPLES, never part of the history).
`"auto"` takes the model's own chat template when it has one and the few-shot transcript otherwise;
the course model's template was written by the course, not learned by the model, so "auto" picks
few-shot for it. `session.template.describe()` says which one is in use and why.

**Trimming.** Before every turn the prompt is counted in tokens. If prompt + `max_new_tokens`
would not fit the context window, the oldest user/assistant exchanges are left out of the prompt,
whole and oldest first; the system prompt always stays. The history itself keeps everything (it is
what you see and save); `reply.trim` says what the model did not see. A single message too long
for the window raises ContextWindowError.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from .errors import ChatError, ChatHistoryError, ContextWindowError  # noqa: F401
from .loading import encode_prompt
from .streaming import StreamResult, TokenStream, claim_model, format_status, print_stream

COURSE_TEMPLATE_FILE = Path(__file__).parent / "data" / "gemma_chat_template.jinja"
COURSE_TEMPLATE_MARK = "written for this course"  # in the course's own Gemma template
HISTORY_FORMAT = "qllm-chat-history"
ROLES = ("system", "user", "assistant")
COMPLETION_LABELS = {"user": "User", "assistant": "Assistant"}
# A base model continues documents; a transcript that opens with a few answered questions shows it the
# pattern (short answers, English and Chinese). On the course model it answers more of notebook 07's fixed
# questions this way than with a bare transcript or the Gemma chat template (the notebook measures all three).
FEW_SHOT_EXAMPLES = [("What is the capital of Japan?", "Tokyo."), ("How many legs does a spider have?", "Eight."),
                     ("日本的首都是哪里？", "东京。"), ("一年有几个月？", "十二个月。")]
TEMPLATES = ("auto", "chat", "few-shot", "completion")
# Fixed questions (none among the examples) and what a right reply contains, a regular expression: the
# templates are scored on them in notebooks 07 and 09.
SCORED_QUESTIONS = [
    ("What is the capital of France?", r"Paris"), ("Who wrote Romeo and Juliet?", r"Shakespeare"),
    ("What is the boiling point of water in degrees Celsius?", r"(?<!\d)100(?!\d)"),
    ("How many days are in a week?", r"(?<!\d)7(?!\d)|seven"), ("What colour is the sky on a clear day?", r"blue"),
    ("What is 2 + 3?", r"(?<!\d)5(?!\d)|five"), ("法国的首都是哪里？", r"巴黎"),
    ("水的沸点是多少摄氏度？", r"(?<!\d)100(?!\d)|一百"), ("一个星期有几天？", r"(?<!\d)7(?!\d)|七"), ("中国的首都是哪里？", r"北京"),
]


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
    """How messages become a prompt: kind "chat" (a Jinja chat template), "few-shot" or "completion" (a transcript)."""

    kind: str                     # "chat" | "few-shot" | "completion"
    source: str                   # where it comes from, in words
    render: Callable[..., str]    # render(messages, add_generation_prompt=True) -> prompt text
    stop_strings: list[str] = field(default_factory=list)   # the reply ends before any of these
    end_token_ids: list[int] = field(default_factory=list)  # and at these tokens (Transformers)
    reason: str = ""              # why "auto" chose it

    def describe(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.kind} template: {self.source}{why}"


def render_completion(messages: list[dict], add_generation_prompt: bool = True, examples=()) -> str:
    """A transcript a base model can continue: system text, then "User: ..." / "Assistant: ..." lines.

    `examples`: (question, answer) pairs written first, after the system text: a few-shot transcript."""
    messages = check_messages(messages)
    parts = []
    if messages and messages[0]["role"] == "system":
        parts.append(messages[0]["content"].strip() + "\n\n")
        messages = messages[1:]
    for question, answer in examples:
        parts.append(f"{COMPLETION_LABELS['user']}: {question}\n{COMPLETION_LABELS['assistant']}: {answer}\n")
    for m in messages:
        parts.append(f"{COMPLETION_LABELS[m['role']]}: {m['content'].strip()}\n")
    if add_generation_prompt:
        parts.append(f"{COMPLETION_LABELS['assistant']}:")
    return "".join(parts)


def render_jinja(template: str, messages: list[dict], bos_token: str = "", eos_token: str = "",
                 add_generation_prompt: bool = True) -> str:
    """Run a chat template with llama-cpp-python's Jinja2ChatFormatter: the sandboxed Jinja, filters and
    globals Transformers uses, so both backends render the same prompt."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template, eos_token=eos_token, bos_token=bos_token,
                                    add_generation_prompt=add_generation_prompt)
    try:
        return formatter(messages=check_messages(messages)).prompt
    except ValueError as err:  # the template's own raise_exception("...")
        raise ChatError(f"the chat template refused these messages: {err}") from None


def own_chat_template(lm) -> tuple[str | None, str]:
    """The chat template the model ships (tokenizer or GGUF metadata), and where it was found."""
    if lm.backend == "llama.cpp":
        return lm.model.metadata.get("tokenizer.chat_template"), "the GGUF metadata (tokenizer.chat_template)"
    return getattr(lm.tokenizer, "chat_template", None), "the tokenizer's chat_template"


def _special_text(lm, token_id: int) -> str:
    return lm.model.detokenize([token_id], special=True).decode("utf-8", errors="ignore")


def choose_template(lm, template: str = "auto", chat_template: str | None = None) -> ChatTemplate:
    """Pick how to render prompts for `lm`: "auto", "chat", "few-shot" or "completion" (module docstring).

    `chat_template` (Jinja text) overrides the model's own template.
    """
    if template not in TEMPLATES:
        raise ChatError(f"template must be one of {', '.join(repr(t) for t in TEMPLATES)}, not {template!r}.")
    own, where = own_chat_template(lm)
    if chat_template:
        own, where, template = chat_template, "the chat_template you passed", "chat"
    course_written = bool(own) and COURSE_TEMPLATE_MARK in own
    stops = [f"\n{label}:" for label in COMPLETION_LABELS.values()]
    if template == "completion":
        return ChatTemplate(kind="completion", source='a "User: ... / Assistant:" transcript',
                            render=render_completion, stop_strings=stops)
    few_shot = ChatTemplate(
        kind="few-shot", source=f'a "User: ... / Assistant:" transcript opened by {len(FEW_SHOT_EXAMPLES)} '
                                "answered examples (chat.FEW_SHOT_EXAMPLES)",
        render=lambda messages, add_generation_prompt=True: render_completion(messages, add_generation_prompt,
                                                                              FEW_SHOT_EXAMPLES),
        stop_strings=stops)
    if template == "few-shot":
        return few_shot
    if template == "auto":
        if not own:
            few_shot.reason = f"auto: no chat template in {where}, so a base model: a few-shot transcript works best"
            return few_shot
        if course_written:
            few_shot.reason = ("auto: the model's only chat template was written by this course for a base "
                               "model that never learned it (a few-shot transcript answers better: notebook 07); "
                               "pass template='chat' to use it anyway")
            return few_shot
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

def count_prompt_tokens(lm, prompt: str, plain=()) -> int:
    """Tokens `prompt` takes, counted exactly as the streaming helper feeds it (one <bos>, never two;
    the typed texts in `plain` as text)."""
    return len(encode_prompt(lm, prompt, plain))


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


# Stop strings are cut here, for both backends, rather than by llama.cpp's create_completion(stop=...):
# Transformers' TextIteratorStreamer would show a stop string before generate() stops at it.
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
        # what was typed, in the prompt's order (trimming drops the oldest pairs): kept as text, never as markers
        system, pairs, _ = split_turns(session.messages + [{"role": "user", "content": user_text}])
        kept = ([system] if system else []) + [m for pair in pairs[trim.dropped_pairs:] for m in pair]
        self.tokens = TokenStream(session.lm, prompt, session.max_new_tokens, session.temperature,
                                  plain_texts=[m["content"] for m in kept] + [user_text], **extra)
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
            self.session.commit(self)
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
        self.lock = threading.Lock()  # guards the history (the chat widget's reader thread writes it)
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
        return count_prompt_tokens(self.lm, self.render(messages), [m["content"] for m in messages])

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
        claim_model(self.lm, check_only=True)
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
            self.release_turn(turn)
        return turn.reply

    def reply(self, user_text: str) -> ChatReply:
        """Answer `user_text` without printing anything."""
        turn = self.start_turn(user_text)
        try:
            for _piece in turn:
                pass
        finally:
            self.release_turn(turn)
        return turn.reply

    def commit(self, turn: ChatTurn) -> None:
        with self.lock:
            self.messages.append({"role": "user", "content": turn.user_text})
            self.messages.append({"role": "assistant", "content": turn.reply.text})
            self.last_reply = turn.reply
            turn.state = "committed"

    def release_turn(self, turn: ChatTurn) -> None:
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
