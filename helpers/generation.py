"""Generate with any loaded model, both backends under the same rules.

generate(lm, "The capital of France is", max_new_tokens=20)   # only the new text, greedy
# the ids fed: one <bos>, typed control tokens kept as text
encode_prompt(lm, prompt, plain=[typed])
fit_context(lm, prompt_tokens, max_new_tokens), pad_token_id(tokenizer)
# a llama_cpp.Llama: refuse a prompt that cannot fit n_ctx, say how to size it
check_context(llm, prompt, max_tokens)
with claim(lm): ...   # one generation per model at a time: a second one is refused
"""

from __future__ import annotations

import contextlib
import threading
import warnings

from .errors import ContextOverflowError, ContextTruncationWarning, ModelBusyError
from .loading import LoadedModel

_busy, _busy_lock = set(), threading.Lock()  # id() of the models generating now


@contextlib.contextmanager
def claim(lm):
    """Hold `lm` (a LoadedModel, or a bare Transformers model) for one generation; every call that
    runs a model takes it. A second claim while one is held, from any thread, is refused: a second
    generation on the same llama.cpp model corrupts its context (or hangs it), and one beside
    another on a Transformers model would halve both. Released when the block ends, however."""
    key = id(lm.model if isinstance(lm, LoadedModel) else lm)
    with _busy_lock:
        if key in _busy:
            raise ModelBusyError(
                "This model is still generating (a stream started earlier runs in the background). "
                "Call .wait() on that stream, or .stop() it, before starting another."
            )
        _busy.add(key)
    try:
        yield
    finally:
        with _busy_lock:
            _busy.discard(key)


def check_free(lm) -> None:
    """Refuse now, as claim(lm) would, without holding the model (a front end that generates in a
    thread of its own fails in the caller's)."""
    with claim(lm):
        pass


def bos_text(lm: LoadedModel) -> str:
    """The text of the model's <bos> token ('' when it has none)."""
    if lm.backend == "llama.cpp":
        return lm.model.detokenize([lm.model.token_bos()], special=True).decode(
            "utf-8", errors="ignore"
        )
    return lm.tokenizer.bos_token or ""


def encode_prompt(lm: LoadedModel, prompt: str, plain=()) -> list[int]:
    """The token ids the course feeds for `prompt`, on either backend, with exactly one <bos>: a
    prompt rendered by a chat template already starts with one, and a second would change the
    model's answer.

    `plain`: the texts inside `prompt` that a person typed (chat messages). A control token's text
    in them, such as a typed "<end_of_turn>", stays text. The libraries' defaults (Transformers'
    split_special_tokens=False, llama.cpp's special=True, both needed for the template's own
    markers) would turn it into the real token, and a user could end their turn and write the
    model's.
    """
    bos = bos_text(lm)
    has_bos = bool(bos) and prompt.startswith(bos)
    spans, at = [], 0
    for text in plain:  # in the order the template renders them
        text = text.strip()  # templates commonly trim
        start = prompt.find(text, at) if text else -1
        if start >= 0 and _tokenize(lm, text, special=True) != _tokenize(lm, text, special=False):
            spans.append((start, start + len(text)))
            at = start + len(text)
    if not spans:  # the usual case: one call
        if lm.backend == "llama.cpp":
            return lm.model.tokenize(prompt.encode("utf-8"), add_bos=not has_bos, special=True)
        return lm.tokenizer(prompt, add_special_tokens=not has_bos)["input_ids"]
    ids, at = _tokenize(lm, "", special=True, bos=not has_bos), 0
    for start, end in spans + [(len(prompt), len(prompt))]:
        ids += _tokenize(lm, prompt[at:start], special=True) + _tokenize(
            lm, prompt[start:end], special=False
        )
        at = end
    return ids


def _tokenize(lm: LoadedModel, text: str, special: bool, bos: bool = False) -> list[int]:
    """Ids of `text` alone; special=False keeps control-token text as text. bos: just the <bos> id,
    if any."""
    if lm.backend == "llama.cpp":
        return (
            lm.model.tokenize(text.encode("utf-8"), add_bos=bos, special=special)
            if text or bos
            else []
        )
    tok = lm.tokenizer
    ids = (
        tok(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]
        if text
        else []
    )
    return (
        [tok.bos_token_id] if bos and tok("")["input_ids"][:1] == [tok.bos_token_id] else []
    ) + ids


def pad_token_id(tokenizer) -> int | None:
    """The pad id to give generate(): the tokenizer's own, else its end-of-sequence id. Never
    `pad_token_id or eos_token_id`: Gemma's pad id is 0, which `or` would throw away."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def generate(
    lm: LoadedModel, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, **kwargs
) -> str:
    """Complete `prompt` and return only the new text (greedy when temperature is 0)."""
    with claim(lm):
        ids = encode_prompt(lm, prompt)  # one <bos>, never two
        # a clear error, not a bare ValueError
        max_new_tokens = fit_context(lm, len(ids), max_new_tokens)
        if lm.backend == "llama.cpp":
            out = lm.model.create_completion(
                ids, max_tokens=max_new_tokens, temperature=temperature, **kwargs
            )
            return out["choices"][0]["text"]
        import torch

        # input_ids *and* attention_mask; max_new_tokens counts only new tokens (max_length would
        # count the prompt too)
        inputs = {"input_ids": torch.tensor([ids], device=lm.model.device)}
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        sampling = (
            {"do_sample": True, "temperature": temperature}
            if temperature > 0
            else {"do_sample": False}
        )
        with torch.inference_mode():
            output_ids = lm.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_token_id(lm.tokenizer),
                **sampling,
                **kwargs,
            )
        return lm.tokenizer.decode(output_ids[0][len(ids) :], skip_special_tokens=True)


def fit_context(lm: LoadedModel, prompt_tokens: int, max_new_tokens: int) -> int:
    """Refuse a prompt that fills the context window; shorten max_new_tokens to what fits, with a
    warning. llama.cpp: its n_ctx (context_report below; llama-cpp-python itself raises a bare
    ValueError). Transformers would generate past the positions the model was trained on without a
    word; not here."""
    if lm.backend == "llama.cpp":
        return min(
            max_new_tokens, context_report(lm.model, prompt_tokens, max_new_tokens)["output_room"]
        )
    window = lm.context_length
    if prompt_tokens >= window:
        raise ContextOverflowError(
            f"The prompt is {prompt_tokens:,} tokens but {lm.path.name} has a {window:,}-token "
            "context window (max_position_embeddings in its config.json), so nothing is left for "
            "the answer. Shorten the prompt (or trim the chat history), or use a model with a "
            "longer context window."
        )
    room = window - prompt_tokens
    if max_new_tokens > room:
        warnings.warn(
            f"prompt ({prompt_tokens:,} tokens) + max_new_tokens ({max_new_tokens:,}) exceed the "
            f"{window:,}-token context window of {lm.path.name}: the answer will stop after "
            f"{room:,} tokens. Shorten the prompt or lower max_new_tokens to get all of it.",
            ContextTruncationWarning,
            stacklevel=3,
        )
        return room
    return max_new_tokens


# ---- the context window (llama.cpp's n_ctx) ---------------------------------------------------


def check_context(llm, prompt: str, max_tokens: int) -> dict:
    """Will `prompt` plus `max_tokens` of output fit the Llama's n_ctx? Raise if the prompt cannot.

    llama-cpp-python itself raises a bare ValueError when the prompt alone fills n_ctx, and
    silently shortens max_tokens (finish_reason "length") when prompt + output do not fit."""
    return context_report(
        llm, len(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)), max_tokens
    )


def context_report(llm, prompt_tokens: int, max_tokens: int) -> dict:
    """check_context for a prompt already counted in tokens."""
    n_ctx = effective_n_ctx(llm)
    fits = prompt_tokens + max_tokens <= n_ctx
    report = {
        "prompt_tokens": prompt_tokens,
        "max_tokens": max_tokens,
        "n_ctx": n_ctx,
        "output_room": max(n_ctx - prompt_tokens, 0),
        "fits": fits,
        "suggested_n_ctx": suggest_n_ctx(prompt_tokens, max_tokens),
    }
    if prompt_tokens >= n_ctx:
        rounding = (
            ""
            if llm.n_ctx() == n_ctx
            else (
                f" (llm.n_ctx() says {llm.n_ctx()}: llama.cpp rounds up to a multiple of 256, "
                f"but llama-cpp-python keeps buffers for the {n_ctx} you asked for, and fails with "
                "'could not broadcast' in between: ask for a multiple of 256.)"
            )
        )
        raise ContextOverflowError(
            f"The prompt is {prompt_tokens:,} tokens but the model was created with "
            f"n_ctx={n_ctx:,}, so nothing is left for the answer (llama-cpp-python would raise "
            "'Requested tokens exceed context window'). Load it with "
            f"n_ctx >= {report['suggested_n_ctx']:,} (load_model(path, n_ctx=...) or "
            f"Llama(..., n_ctx=...); prompt + {max_tokens} new tokens), or shorten the prompt."
            + rounding
        )
    if not fits:
        warnings.warn(
            f"prompt ({prompt_tokens:,} tokens) + max_tokens ({max_tokens:,}) exceed "
            f"n_ctx={n_ctx:,}: the answer will stop after {report['output_room']:,} tokens with "
            f"finish_reason='length'. Load the model with n_ctx >= {report['suggested_n_ctx']:,} "
            "to get all of it.",
            ContextTruncationWarning,
            stacklevel=2,
        )
    return report


def effective_n_ctx(llm) -> int:
    """The context the Llama can really use: llama.cpp rounds n_ctx up to a multiple of 256 and
    n_ctx() says so, but llama-cpp-python 0.3.36 sizes its token buffer with the n_ctx asked for."""
    buffer = getattr(llm, "input_ids", None)
    return min(llm.n_ctx(), len(buffer)) if buffer is not None else llm.n_ctx()


def suggest_n_ctx(
    prompt_tokens: int, max_tokens: int, trained_context: int | None = None, multiple: int = 256
) -> int:
    """Smallest n_ctx (rounded up to `multiple`) that holds prompt + output; never above the trained
    length."""
    need = -(-(prompt_tokens + max_tokens) // multiple) * multiple
    if trained_context and need > trained_context:
        raise ContextOverflowError(
            f"prompt ({prompt_tokens:,}) + output ({max_tokens:,}) tokens exceed the model's "
            f"trained context of {trained_context:,} tokens. Shorten the prompt or summarise "
            "earlier turns."
        )
    return need
