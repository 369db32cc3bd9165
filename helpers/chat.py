"""Multi-turn chat with any course model: history, trimming, streaming, save/load.

    # lm from loading.load_model
    session = ChatSession(lm, system="You are a helpful assistant.")
    # prints as it streams; reply.text, reply.finish, reply.trim
    reply = session.ask("What is GPTQ?")
    session.ask("用一句话解释一下。")  # the history goes along with every turn
    session.save("chat.json"); session.load("chat.json")

Prompts come from helpers.templates; front ends: helpers.chat_widget (Jupyter), course.chat_cli
(terminal). When prompt + reply would overflow the window, the oldest exchanges leave the prompt
(never the system prompt, and never the history, which is what you see and save): `reply.trim` says
what the model did not see.
"""

import json
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import ChatError, ChatHistoryError, ContextWindowError
from .generation import backend_of, check_free
from .streaming import StreamResult, TokenStream, print_stream
from .templates import check_messages, choose_template, count_prompt_tokens

HISTORY_FORMAT = "qllm-chat-history"


@dataclass
class TrimReport:
    """What trimming did for one prompt: the messages sent, the exchanges left out, and the
    figures."""

    # what is sent: the system message, the kept exchanges, the new user message
    messages: list[dict]
    dropped_pairs: int  # user/assistant exchanges left out, oldest first
    kept_pairs: int  # earlier exchanges still in the prompt
    prompt_tokens: int  # tokens of the prompt that is sent
    untrimmed_tokens: int  # tokens of the prompt had nothing been left out
    reply_tokens: int = 0  # room kept for the reply (max_new_tokens)
    window: int = 0  # the context window, in tokens

    trimmed = property(lambda self: self.dropped_pairs > 0)
    dropped_tokens = property(lambda self: self.untrimmed_tokens - self.prompt_tokens)

    def __str__(self) -> str:
        fit = (
            f"prompt {self.prompt_tokens} + reply up to {self.reply_tokens} tokens "
            f"= {self.prompt_tokens + self.reply_tokens} of the {self.window}-token window"
        )
        if not self.trimmed:
            return f"nothing trimmed: {fit}"
        return (
            f"trimmed: the model no longer sees the {self.dropped_pairs} oldest exchange"
            f"{'s' if self.dropped_pairs > 1 else ''} ({2 * self.dropped_pairs} messages, "
            f"{self.dropped_tokens} tokens); the system prompt and {self.kept_pairs} later "
            f"exchange{'s' if self.kept_pairs != 1 else ''} stay; {fit}"
        )


def trim_history(
    messages: list[dict], count_tokens: Callable[[list[dict]], int], budget: int
) -> TrimReport:
    """Drop the fewest oldest user/assistant pairs so that count_tokens(kept) <= budget.

    The system message and the final user message always stay; pairs go whole, oldest first.
    Raises ContextWindowError when even those two exceed the budget. count_tokens(messages) counts
    their rendered prompt, which only grows with more pairs: a binary search finds the cut in a few
    counts.
    """
    messages = check_messages(messages, ends_with_user=True)
    head = messages[:1] if messages[0]["role"] == "system" else []
    turns, pairs = messages[len(head) :], (len(messages) - len(head)) // 2
    counts = {0: count_tokens(messages)}  # pairs dropped -> tokens
    if counts[0] <= budget:
        return TrimReport(messages, 0, pairs, counts[0], counts[0])
    counts[pairs] = count_tokens(head + turns[-1:])
    if counts[pairs] > budget:
        raise ContextWindowError(
            "The newest message is too long for the context window: with the system prompt and the "
            f"template it makes a {counts[pairs]}-token prompt, and only {budget} tokens are left "
            "once the reply's room (max_new_tokens) is set aside. Shorten the message (or the "
            "system prompt), lower max_new_tokens, or give the model a larger window "
            "(load_model(..., n_ctx=...) for GGUF)."
        )
    # the fewest pairs to drop lie in between: the count only shrinks as pairs go
    low, high = 1, pairs
    while low < high:
        mid = (low + high) // 2
        counts[mid] = count_tokens(head + turns[2 * mid :])
        low, high = (low, mid) if counts[mid] <= budget else (mid + 1, high)
    return TrimReport(head + turns[2 * low :], low, pairs - low, counts[low], counts[0])


@dataclass
class ChatReply(StreamResult):
    """One answered turn: a StreamResult, why it ended, and what trimming did."""

    finish: str = ""  # "end_of_turn" | "stop_string" | "length" | "user"
    trim: TrimReport | None = None


class ChatTurn(TokenStream):
    """One reply being generated: a TokenStream that ends at the template's stop strings and
    end-of-turn token and shows the reply stripped. When it ends, also by Stop (not by an error),
    the user message and the reply join the session's history, and `reply` is its ChatReply."""

    def __init__(self, session: "ChatSession", user_text: str, prompt: str, trim: TrimReport):
        lm, template = session.lm, session.template
        extra = backend_of(lm).stop_at_tokens(template.end_token_ids)
        super().__init__(
            lm,
            prompt,
            session.max_new_tokens,
            session.temperature,
            stop_strings=template.stop_strings,
            plain_texts=[m["content"] for m in trim.messages],
            **extra,
        )  # typed text stays text
        self.session = session
        self.user_text = user_text
        self.trim = trim
        self.prompt_tokens = trim.prompt_tokens
        self.reply: ChatReply | None = None
        self.state = "running"  # then "committed" (in the history) or "failed"

    def visible(self, raw: str, final: bool = False) -> str:
        return super().visible(raw, final).strip()  # blank space shows once text follows it

    def __iter__(self):
        try:
            yield from super().__iter__()
        except KeyboardInterrupt:  # Ctrl-C while generating means Stop, as in print_stream
            pass
        except Exception:
            self.state = "failed"
            raise
        finally:
            if self.state == "running" and self.result is not None:
                finish = (
                    "user"
                    if self.stopped_by_user
                    else "stop_string"
                    if self.hit_stop_string
                    else "length"
                    if self.new_tokens >= self.max_new_tokens
                    else "end_of_turn"
                )
                self.result = self.reply = ChatReply(
                    **vars(self.result), finish=finish, trim=self.trim
                )
                with self.session.lock:
                    self.session.messages += [
                        {"role": "user", "content": self.user_text},
                        {"role": "assistant", "content": self.reply.text},
                    ]
                    self.state = "committed"


class ChatSession:
    """A conversation with one model: history, template, trimming, streaming, save/load.

    context_window: the tokens prompt + reply may take (default: the model's context length; for
    GGUF at most the n_ctx it was loaded with). Set it lower to see trimming at work.
    """

    def __init__(
        self,
        lm,
        system: str | None = None,
        template: str = "auto",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        context_window: int | None = None,
        chat_template: str | None = None,
        history: list[dict] | None = None,
    ):
        self.lm = lm
        self.system = system
        self.template = choose_template(lm, template, chat_template)
        self.max_new_tokens, self.temperature = int(max_new_tokens), float(temperature)
        self.context_window = window = int(context_window or lm.context_length)
        if backend_of(lm).allocates_window and window > lm.context_length:
            raise ChatError(
                f"context_window={window} is larger than the {lm.context_length} tokens this GGUF "
                f"model was loaded with (n_ctx); load it with load_model(..., n_ctx={window}) or "
                "lower it."
            )
        if self.max_new_tokens >= window:
            raise ChatError(
                f"max_new_tokens={self.max_new_tokens} leaves no room for the prompt in a "
                f"{window}-token context window: lower it, or use a larger window."
            )
        self.lock = threading.Lock()  # guards the history, which a front end's reader thread writes
        self.replace_history(history or [])

    def turns(self) -> list[dict]:
        """The user/assistant messages (the history without its system message)."""
        return [m for m in self.messages if m["role"] != "system"]

    def render(self, messages: list[dict] | None = None) -> str:
        """The prompt text for `messages` (default: the history) with this session's template."""
        return self.template.render(self.messages if messages is None else messages)

    def count_tokens(self, messages: list[dict]) -> int:
        """Tokens of the rendered prompt for `messages`, exactly as the model reads it."""
        return count_prompt_tokens(self.lm, self.render(messages), [m["content"] for m in messages])

    def prepare(self, user_text: str) -> tuple[str, TrimReport]:
        """The prompt for the next turn (history + user_text), trimmed to fit, and what trimming
        did."""
        if not isinstance(user_text, str) or not user_text.strip():
            raise ChatError("Type a message first: it is empty.")
        report = trim_history(
            self.messages + [{"role": "user", "content": user_text}],
            self.count_tokens,
            self.context_window - self.max_new_tokens,
        )
        report.reply_tokens, report.window = self.max_new_tokens, self.context_window
        return self.render(report.messages), report

    def start_turn(self, user_text: str) -> ChatTurn:
        """A ChatTurn for `user_text`: iterate it to generate (it joins the history when it
        ends)."""
        check_free(self.lm)
        prompt, self.last_trim = self.prepare(user_text)
        return ChatTurn(self, user_text, prompt, self.last_trim)

    def ask(self, user_text: str, stream: bool = True, file=None) -> ChatReply:
        """Answer `user_text`, printing the reply as it streams (or when done), then a status
        line."""
        turn = self.start_turn(user_text)
        if turn.trim.trimmed:
            print(f"[{turn.trim}]", file=file)
        print_stream(turn, file=file, live=stream)
        return turn.reply

    def reply(self, user_text: str) -> ChatReply:
        """Answer `user_text` without printing anything."""
        turn = self.start_turn(user_text)
        for _piece in turn:
            pass
        return turn.reply

    def reset(self) -> None:
        """Forget the conversation; the system prompt stays."""
        self.replace_history([])

    def replace_history(self, messages: list[dict]) -> None:
        """Continue from `messages` (a saved history); its system message, if any, becomes the
        system prompt."""
        messages = check_messages(messages)
        if messages and messages[-1]["role"] == "user":
            raise ChatError(
                "the history ends with an unanswered user message; a history ends with a reply."
            )
        if messages and messages[0]["role"] == "system":
            self.system = messages[0]["content"]
        elif self.system:
            messages = [{"role": "system", "content": self.system}] + messages
        self.messages, self.last_trim = messages, None

    def save(self, path) -> Path:
        """Write the history to `path` as JSON (atomically: the old file survives any failure)."""
        return save_history(
            path,
            self.messages,
            model=str(getattr(self.lm, "path", "")),
            template=self.template.kind,
        )

    def load(self, path) -> str:
        """Continue from a saved history; returns what happened, in words (a bad file: a fresh
        history)."""
        messages, problem = load_history(path)
        try:
            self.replace_history(messages)
        except ChatError as err:
            self.reset()
            return (
                f"{path} holds a history this session cannot continue ({err}); "
                "starting a fresh history."
            )
        return problem or f"loaded {len(self.turns())} messages from {path}"


def save_history(path, messages: list[dict], **meta) -> Path:
    """Write messages (+ meta) as JSON: a temporary file in the same folder, then os.replace.
    Refuses to replace a file that is not a chat history; on any failure the old file is left as it
    was."""
    path, messages = Path(path).expanduser(), check_messages(messages)
    if path.is_dir():
        raise ChatHistoryError(
            f"Cannot save the chat to {path}: it is a folder. "
            f"Give a file name, e.g. {path / 'chat.json'}."
        )
    folder = next((p for p in path.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise ChatHistoryError(
            f"Cannot save the chat to {path}: {folder} is a file, not a folder. "
            "Choose a path in a folder you can write to."
        )
    if path.exists() and path.stat().st_size > 0 and (problem := _read_history(path)[1]):
        raise ChatHistoryError(
            f"Not saving over {path}: it exists and is not a chat history ({problem}). "
            "Move it away or choose another file name."
        )
    document = {
        "format": HISTORY_FORMAT,
        "version": 1,
        "saved_at": datetime.now().isoformat(timespec="seconds"),
        **{
            k: v if v is None or isinstance(v, (str, int, float, bool)) else str(v)
            for k, v in meta.items()
        },
        "messages": messages,
    }  # meta: plain values; a Path or the like is saved as its text
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise ChatHistoryError(
            f"Cannot save the chat to {path}: {err.strerror or err} ({type(err).__name__}). "
            + ("The old file is unchanged. " if path.exists() else "")
            + "Choose a folder you can write to."
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read_history(path: Path) -> tuple[list[dict] | None, str | None]:
    """(messages, None) or (None, what is wrong) for a history file (a bare list of messages is one
    too)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ChatHistoryError(f"Cannot read {path}: {err.strerror or err}.") from None
    if not raw.strip():
        return None, "the file is empty"
    try:
        data = json.loads(raw.decode("utf-8"))
        return check_messages(data["messages"] if isinstance(data, dict) else data), None
    except UnicodeDecodeError:
        return None, "it is not UTF-8 text"
    except KeyError:
        return None, "it is JSON but has no 'messages' list"
    except ValueError as err:
        return None, f"it is not valid JSON: {err}"
    except ChatError as err:
        return None, f"it is JSON but not a chat history: {err}"


def load_history(path) -> tuple[list[dict], str | None]:
    """Read a saved history: (messages, None), or ([], a message) when the file is empty or damaged.
    A damaged file is renamed to `<name>.corrupt-<time>` and kept, never overwritten; a missing one
    is an error."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ChatHistoryError(
            f"No chat history at {path}: the file does not exist. Check the path "
            "(a history is written by save() or /save)."
        )
    if path.is_dir():
        raise ChatHistoryError(f"{path} is a folder, not a chat history file.")
    messages, problem = _read_history(path)
    if problem is None:
        return messages, None
    stamp, n = datetime.now().strftime("%Y%m%d-%H%M%S"), 0
    while (
        target := path.with_name(f"{path.name}.corrupt-{stamp}" + (f"-{n}" if n else ""))
    ).exists():
        n += 1
    try:
        os.replace(path, target)
        kept = f"it is kept as {target}"
    except OSError as err:
        kept = (
            f"it could not be renamed ({err.strerror or err}) and stays where it is; "
            "saving over it is refused"
        )
    return [], f"{path} is not a usable chat history ({problem}); {kept}. Starting a fresh history."
