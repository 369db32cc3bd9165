"""How chat messages become one prompt: the model's chat template, or a transcript a base model
continues.

    template = choose_template(lm, "auto")  # "auto" | "chat" | "few-shot" | "completion"
    # [{"role": ..., "content": ...}, ...]
    print(template.describe()); prompt = template.render(messages)
    # as the model reads it
    count_prompt_tokens(lm, prompt, plain=[m["content"] for m in messages])

"chat": the model's chat template (the tokenizer's, the GGUF's, or for a Gemma GGUF without one the
course's copy of Gemma's turn format), rendered as text for both backends. "completion": a
"User: ...\\nAssistant:" transcript a *base* model can continue; "few-shot": the same, opened by
FEW_SHOT_EXAMPLES (on the course model it answers more of SCORED_QUESTIONS than the other two:
notebook 07). "auto": the model's own chat template, else few-shot (the course model's template was
written by the course, not learned).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from jinja2.exceptions import TemplateError

from .errors import ChatError
from .generation import backend_of, encode_prompt

COURSE_TEMPLATE_FILE = Path(__file__).parent / "data" / "gemma_chat_template.jinja"
COURSE_TEMPLATE_MARK = "written for this course"  # in the course's own Gemma template
ROLES = ("system", "user", "assistant")
TEMPLATES = ("auto", "chat", "few-shot", "completion")
# A base model continues documents: a few answered questions show it the pattern (short, English
# and Chinese).
FEW_SHOT_EXAMPLES = [
    ("What is the capital of Japan?", "Tokyo."),
    ("How many legs does a spider have?", "Eight."),
    ("日本的首都是哪里？", "东京。"),
    ("一年有几个月？", "十二个月。"),
]
# Fixed questions (none among the examples) and what a right reply contains, a regular expression:
# the templates are scored on them in notebooks 07 and 09.
SCORED_QUESTIONS = [
    ("What is the capital of France?", r"Paris"),
    ("Who wrote Romeo and Juliet?", r"Shakespeare"),
    ("What is the boiling point of water in degrees Celsius?", r"(?<!\d)100(?!\d)"),
    ("How many days are in a week?", r"(?<!\d)7(?!\d)|seven"),
    ("What colour is the sky on a clear day?", r"blue"),
    ("What is 2 + 3?", r"(?<!\d)5(?!\d)|five"),
    ("法国的首都是哪里？", r"巴黎"),
    ("水的沸点是多少摄氏度？", r"(?<!\d)100(?!\d)|一百"),
    ("一个星期有几天？", r"(?<!\d)7(?!\d)|七"),
    ("中国的首都是哪里？", r"北京"),
]


def check_messages(messages, ends_with_user: bool = False) -> list[dict]:
    """Validate a message list (an optional leading system message, then user/assistant turns in
    turn); return plain {"role", "content"} dicts, or raise ChatError saying what is wrong."""
    if not isinstance(messages, list):
        raise ChatError(
            "messages must be a list of {'role': ..., 'content': ...} dicts, "
            f"not {type(messages).__name__}."
        )
    start = (
        1
        if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system"
        else 0
    )
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise ChatError(
                f"message {i} is not a {{'role': str, 'content': str}} dict: {str(m)[:80]!r}."
            )
        if m["role"] not in ROLES:
            raise ChatError(
                f"message {i} has role {m['role']!r}; the roles are {', '.join(ROLES)}."
            )
        expected = "system" if i < start else "user" if (i - start) % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ChatError(
                f"message {i} is a {m['role']!r} message where a {expected!r} one belongs: "
                "after an optional system message, turns alternate user, assistant, user, ..."
            )
    if ends_with_user and (len(messages) == start or messages[-1]["role"] != "user"):
        raise ChatError("the messages must end with a user message (the one to answer).")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


@dataclass
class ChatTemplate:
    """How messages become a prompt: kind "chat" (a Jinja chat template), "few-shot" or
    "completion"."""

    kind: str
    source: str  # where it comes from, in words
    render: Callable[..., str]  # render(messages, add_generation_prompt=True) -> prompt text
    stop_strings: list[str] = field(default_factory=list)  # the reply ends before any of these
    end_token_ids: list[int] = field(default_factory=list)  # and at these tokens (Transformers)
    reason: str = ""  # why "auto" chose it

    def describe(self) -> str:
        return f"{self.kind} template: {self.source}" + (f" ({self.reason})" if self.reason else "")


def render_completion(messages: list[dict], add_generation_prompt: bool = True, examples=()) -> str:
    """A transcript a base model can continue: system text, then "User: ..." / "Assistant: ..."
    lines, opened by the (question, answer) pairs in `examples` (a few-shot transcript)."""
    messages = check_messages(messages)
    system = (
        [messages.pop(0)["content"].strip() + "\n\n"]
        if messages and messages[0]["role"] == "system"
        else []
    )
    lines = [f"User: {q}\nAssistant: {a}\n" for q, a in examples]
    lines += [f"{m['role'].capitalize()}: {m['content'].strip()}\n" for m in messages]
    return "".join(system + lines) + ("Assistant:" if add_generation_prompt else "")


def own_chat_template(lm) -> tuple[str | None, str]:
    """The chat template the model ships (tokenizer or GGUF metadata), and where it was found."""
    return backend_of(lm).own_chat_template()


def choose_template(lm, template: str = "auto", chat_template: str | None = None) -> ChatTemplate:
    """Pick how to render prompts for `lm` (module docstring); `chat_template` (Jinja) overrides the
    model's."""
    if template not in TEMPLATES:
        raise ChatError(
            f"template must be one of {', '.join(repr(t) for t in TEMPLATES)}, not {template!r}."
        )
    own, where = (
        (chat_template, "the chat_template you passed") if chat_template else own_chat_template(lm)
    )
    template = "chat" if chat_template else template
    course_written = bool(own) and COURSE_TEMPLATE_MARK in own
    reason = ""
    if template == "auto" and not own:
        reason = (
            f"auto: no chat template in {where}, so a base model: a few-shot transcript works best"
        )
    elif template == "auto" and course_written:
        reason = (
            "auto: the model's only chat template was written by this course for a base model "
            "that never learned it (a few-shot transcript answers better: notebook 07); pass "
            "template='chat' to use it anyway"
        )
    if template in ("completion", "few-shot") or reason:
        examples = FEW_SHOT_EXAMPLES if template != "completion" else ()
        source = 'a "User: ... / Assistant:" transcript' + (
            f" opened by {len(examples)} answered examples (templates.FEW_SHOT_EXAMPLES)"
            if examples
            else ""
        )
        return ChatTemplate(
            "few-shot" if examples else "completion",
            source,
            partial(render_completion, examples=examples),
            ["\nUser:", "\nAssistant:"],
            reason=reason,
        )
    if not own:
        arch = backend_of(lm).architecture()
        if not arch.startswith("gemma"):
            raise ChatError(
                f"This model has no chat template in {where}, and its architecture "
                f"({arch or 'unknown'}) has no format the course knows. Use template='completion', "
                "or pass chat_template='...' (the Jinja template from the model's "
                "tokenizer_config.json or model card)."
            )
        own, where = (
            COURSE_TEMPLATE_FILE.read_text(),
            (
                "Gemma's turn format, the course's copy "
                "(helpers/data/gemma_chat_template.jinja): the GGUF has none"
            ),
        )
    elif not chat_template:
        where += (
            " (written by this course; the model never learned it)"
            if course_written
            else ", the model's own"
        )
    return jinja_template(lm, own, where)


def jinja_template(lm, jinja: str, source: str) -> ChatTemplate:
    """A "chat" ChatTemplate running `jinja` as the backend's library does (llama-cpp-python's
    Jinja2ChatFormatter, Transformers' apply_chat_template); the reply ends at the template's
    end-of-turn marker, found by rendering one assistant message."""
    run = backend_of(lm).template_renderer(jinja)

    def render(messages, add_generation_prompt=True):
        try:
            return run(check_messages(messages), add_generation_prompt)
        except (ValueError, TemplateError) as err:  # the template's own raise_exception("...")
            raise ChatError(f"the chat template refused these messages: {err}") from None

    try:
        probe = render(
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "PROBE"}], False
        )
        marker = (probe.partition("PROBE")[2].split() or [""])[0]  # e.g. '<end_of_turn>'
    except Exception:  # some templates insist on ending with a user message
        marker = ""
    ids = backend_of(lm).tokenize(marker, special=True) if marker else []
    return ChatTemplate(
        "chat", source, render, [marker] if marker else [], list(ids) if len(ids) == 1 else []
    )


def count_prompt_tokens(lm, prompt: str, plain=()) -> int:
    """Tokens `prompt` takes, counted as TokenStream feeds it (one <bos>; the typed texts in `plain`
    as text)."""
    return len(encode_prompt(lm, prompt, plain))
