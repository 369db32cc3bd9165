"""Generate with any loaded model, both backends under the same rules.

generate(lm, "The capital of France is", max_new_tokens=20)   # only the new text, greedy
# the ids fed: one <bos>, typed control tokens kept as text
encode_prompt(lm, prompt, plain=[typed])
fit_context(lm, prompt_tokens, max_new_tokens), pad_token_id(tokenizer)
# a llama_cpp.Llama: refuse a prompt that cannot fit n_ctx, say how to size it
check_context(llm, prompt, max_tokens)
with claim(lm): ...   # one generation per model at a time: a second one is refused
backend_of(lm).tokenize(text, special=False)   # what differs between llama.cpp and Transformers
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

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
    return backend_of(lm).bos_text()


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
    backend = backend_of(lm)
    bos = backend.bos_text()
    has_bos = bool(bos) and prompt.startswith(bos)
    spans, at = [], 0
    for text in plain:  # in the order the template renders them
        text = text.strip()  # templates commonly trim
        start = prompt.find(text, at) if text else -1
        if start >= 0 and backend.tokenize(text, True) != backend.tokenize(text, False):
            spans.append((start, start + len(text)))
            at = start + len(text)
    if not spans:  # the usual case: one call
        return backend.encode(prompt, add_bos=not has_bos)
    ids, at = backend.tokenize("", special=True, bos=not has_bos), 0
    for start, end in spans + [(len(prompt), len(prompt))]:
        ids += backend.tokenize(prompt[at:start], True) + backend.tokenize(prompt[start:end], False)
        at = end
    return ids


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
        return backend_of(lm).complete(ids, max_new_tokens, temperature, **kwargs)[0]


def fit_context(lm: LoadedModel, prompt_tokens: int, max_new_tokens: int) -> int:
    """Refuse a prompt that fills the context window; shorten max_new_tokens to what fits, with a
    warning. llama.cpp: its n_ctx (context_report below; llama-cpp-python itself raises a bare
    ValueError). Transformers would generate past the positions the model was trained on without a
    word; not here."""
    return backend_of(lm).fit_context(prompt_tokens, max_new_tokens)


# ---- the two backends: what differs between llama.cpp and Transformers ------------------------
# Every call that must do something differently on the two libraries asks backend_of(lm), never
# lm.backend: tokens, the window, generating, streaming, timing, chat templates. Both classes have
# the same methods; each holds only its LoadedModel and runs the library. The rules stay in the
# functions that call them: one <bos> (encode_prompt), the window (fit_context), one generation at
# a time (claim, which their callers hold).


class LlamaCppBackend:
    """A GGUF file on llama.cpp: `lm.model` is a llama_cpp.Llama, which tokenizes for itself."""

    allocates_window = True  # n_ctx is allocated at load: a prompt and reply beyond it cannot fit
    torch_model = None  # no torch module behind it: no kernel report, bytes per token from the file

    def __init__(self, lm: LoadedModel):
        self.lm = lm

    # -- tokens
    def bos_text(self) -> str:
        llm = self.lm.model
        return llm.detokenize([llm.token_bos()], special=True).decode("utf-8", errors="ignore")

    def encode(self, prompt: str, add_bos: bool) -> list[int]:
        """A whole prompt's ids; the text of a control token (a template's marker) is the token."""
        return self.lm.model.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

    def tokenize(self, text: str, special: bool, bos: bool = False) -> list[int]:
        """Ids of `text` alone; special=False keeps control-token text as text. bos: the <bos> id
        first, if the model has one."""
        if not text and not bos:
            return []
        return self.lm.model.tokenize(text.encode("utf-8"), add_bos=bos, special=special)

    def plain_ids(self, text: str) -> list[int]:
        """`text` tokenized as the library does by default, <bos> first (timing, the benchmark)."""
        return self.lm.model.tokenize(text.encode("utf-8"), add_bos=True)

    # -- the window, generating, streaming
    def fit_context(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """generation.fit_context: the n_ctx the model was created with decides."""
        report = context_report(self.lm.model, prompt_tokens, max_new_tokens)
        return min(max_new_tokens, report["output_room"])

    def complete(self, ids, max_new_tokens: int, temperature: float = 0.0, **kwargs):
        """(the new text, how many tokens were generated) after the prompt `ids`."""
        out = self.lm.model.create_completion(
            ids, max_tokens=max_new_tokens, temperature=temperature, **kwargs
        )
        # usage leaves out an end-of-sequence token; streaming counts it, so add it back
        new = out["usage"]["completion_tokens"] + (out["choices"][0]["finish_reason"] == "stop")
        return out["choices"][0]["text"], new

    def pieces(self, ids, max_new_tokens, temperature, stop, on_token, **kwargs):
        """The new text, piece by piece, after the prompt `ids`; `stop` (a threading.Event) ends it
        after at most one more token, `on_token(new_tokens)` is called after each token kept.
        Closing the iterator ends the generation."""

        # per sampled token, given the ids before it; then once more at the end, with no new one.
        # A token sampled after Stop is dropped.
        def watch(input_ids, logits) -> bool:
            stopped = stop.is_set()
            if not stopped:
                on_token(len(input_ids) + 1 - len(ids))
            return stopped

        chunks = self.lm.model.create_completion(
            ids,
            max_tokens=max_new_tokens,
            stream=True,
            temperature=temperature,
            stopping_criteria=watch,
            **kwargs,
        )
        try:
            yield from (chunk["choices"][0]["text"] for chunk in chunks)
        finally:
            chunks.close()  # now, not when collected: the model is free for the next stream

    def stop_at_tokens(self, token_ids) -> dict:
        """Settings for complete()/pieces() that also end at `token_ids` (a chat template's end of
        turn): none, llama.cpp ends at its vocabulary's end-of-generation tokens by itself."""
        return {}

    # -- timing
    def set_threads(self, threads: int) -> None:
        import llama_cpp

        llama_cpp.llama_set_n_threads(self.lm.model.ctx, threads, threads)

    def timed_run(self, prompt, new_tokens: int):
        """Exactly `new_tokens` greedy tokens after `prompt` (text or ids), each time-stamped:
        (times, the call's start first; prompt tokens; the new text; GPU bytes or None)."""
        llm = self.lm.model
        ids = list(prompt) if isinstance(prompt, list) else self.plain_ids(prompt)
        llm.reset()  # forget the previous prompt: its KV cache would skip the prompt pass
        # Llama.generate is the bare token iterator: unlike create_completion it never stops at
        # end-of-sequence, so counting tokens gives exactly new_tokens.
        tokens: list[int] = []
        times = [time.perf_counter()]
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=False):
            times.append(time.perf_counter())
            tokens.append(token)
            if len(tokens) == new_tokens:
                break
        gpu = _gpu_used_by_this_process() if self.lm.device.startswith("cuda") else None
        return times, len(ids), llm.detokenize(tokens).decode("utf-8", errors="replace"), gpu

    # -- chat templates
    def own_chat_template(self) -> tuple[str | None, str]:
        return (
            self.lm.model.metadata.get("tokenizer.chat_template"),
            "the GGUF metadata (tokenizer.chat_template)",
        )

    def architecture(self) -> str:
        """general.architecture from the GGUF metadata, e.g. 'gemma3'."""
        return self.lm.model.metadata.get("general.architecture", "")

    def template_renderer(self, jinja: str):
        """render(messages, add_generation_prompt) running `jinja` as llama-cpp-python does (its
        Jinja2ChatFormatter, given the model's <bos> and <eos> text)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = self.lm.model
        text = [
            llm.detokenize([i], special=True).decode("utf-8", "ignore")
            for i in (llm.token_bos(), llm.token_eos())
        ]
        formatters = {
            g: Jinja2ChatFormatter(
                jinja, bos_token=text[0], eos_token=text[1], add_generation_prompt=g
            )
            for g in (True, False)
        }

        def run(messages, generation):
            return formatters[generation](messages=messages).prompt

        return run

    # -- the rest
    def ignores_gpu(self) -> bool:
        """Asked onto a GPU by a llama-cpp-python built without GPU support, which then silently
        ignores n_gpu_layers and runs on the CPU."""
        if not self.lm.device.startswith("cuda"):
            return False
        import llama_cpp

        return not llama_cpp.llama_supports_gpu_offload()

    def close(self) -> None:
        """Free the model now, not in a destructor at interpreter exit (which fails noisily)."""
        self.lm.model.close()


class TransformersBackend:
    """A model folder on Transformers: `lm.model` is a torch module, `lm.tokenizer` its
    tokenizer."""

    allocates_window = False  # the window is the trained length (max_position_embeddings)

    def __init__(self, lm: LoadedModel):
        self.lm = lm

    torch_model = property(lambda self: self.lm.model)

    # -- tokens
    def bos_text(self) -> str:
        return self.lm.tokenizer.bos_token or ""

    def encode(self, prompt: str, add_bos: bool) -> list[int]:
        """A whole prompt's ids; the text of a control token (a template's marker) is the token."""
        return self.lm.tokenizer(prompt, add_special_tokens=add_bos)["input_ids"]

    def tokenize(self, text: str, special: bool, bos: bool = False) -> list[int]:
        """Ids of `text` alone; special=False keeps control-token text as text. bos: the <bos> id
        first, if the model has one."""
        tok = self.lm.tokenizer
        ids = (
            tok(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]
            if text
            else []
        )
        return (
            [tok.bos_token_id] if bos and tok("")["input_ids"][:1] == [tok.bos_token_id] else []
        ) + ids

    def plain_ids(self, text: str) -> list[int]:
        """`text` tokenized as the library does by default, <bos> first (timing, the benchmark)."""
        return self.lm.tokenizer(text)["input_ids"]

    # -- the window, generating, streaming
    def fit_context(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """generation.fit_context: the trained window (max_position_embeddings) decides."""
        lm, window = self.lm, self.lm.context_length
        if prompt_tokens >= window:
            raise ContextOverflowError(
                f"The prompt is {prompt_tokens:,} tokens but {lm.path.name} has a {window:,}-token "
                "context window (max_position_embeddings in its config.json), so nothing is left "
                "for the answer. Shorten the prompt (or trim the chat history), or use a model "
                "with a longer context window."
            )
        room = window - prompt_tokens
        if max_new_tokens > room:
            warnings.warn(
                f"prompt ({prompt_tokens:,} tokens) + max_new_tokens ({max_new_tokens:,}) exceed "
                f"the {window:,}-token context window of {lm.path.name}: the answer will stop "
                f"after {room:,} tokens. Shorten the prompt or lower max_new_tokens to get all of "
                "it.",
                ContextTruncationWarning,
                stacklevel=4,  # the caller of generate() (or of the stream)
            )
            return room
        return max_new_tokens

    def _sampling(self, temperature: float) -> dict:
        return (
            {"do_sample": True, "temperature": temperature}
            if temperature > 0
            else {"do_sample": False}
        )

    def complete(self, ids, max_new_tokens: int, temperature: float = 0.0, **kwargs):
        """(the new text, how many tokens were generated) after the prompt `ids`."""
        import torch

        model, tokenizer = self.lm.model, self.lm.tokenizer
        # input_ids *and* attention_mask; max_new_tokens counts only new tokens (max_length would
        # count the prompt too)
        inputs = {"input_ids": torch.tensor([ids], device=model.device)}
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        with torch.inference_mode():
            output_ids = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_token_id(tokenizer),
                **self._sampling(temperature),
                **kwargs,
            )
        new = output_ids[0][len(ids) :]
        return tokenizer.decode(new, skip_special_tokens=True), len(new)

    def pieces(self, ids, max_new_tokens, temperature, stop, on_token, **kwargs):
        """The new text, piece by piece, after the prompt `ids`; `stop` (a threading.Event) ends it
        after at most one more token, `on_token(new_tokens)` is called after each token kept.
        Closing the iterator ends the generation."""
        import torch
        from transformers import TextIteratorStreamer

        model, tokenizer = self.lm.model, self.lm.tokenizer
        prompt = torch.tensor([ids], device=model.device)

        def watch(input_ids, scores, **kwargs):
            # after every token, which is kept (so counted) even after Stop
            on_token(input_ids.shape[1] - len(ids))
            return torch.full(
                (input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device
            )

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        with ThreadPoolExecutor(1, thread_name_prefix="qllm-generate") as pool:
            job = pool.submit(
                torch.inference_mode()(model.generate),
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                streamer=streamer,
                max_new_tokens=max_new_tokens,
                stopping_criteria=[watch],
                pad_token_id=pad_token_id(tokenizer),
                **self._sampling(temperature),
                **kwargs,
            )
            # an error unblocks the reader
            job.add_done_callback(lambda job: job.exception() and streamer.end())
            try:
                yield from streamer
            finally:
                stop.set()  # ends the generation if the reader left early
        job.result()  # re-raises the generation's error

    def stop_at_tokens(self, token_ids) -> dict:
        """Settings for complete()/pieces() that also end at `token_ids` (a chat template's end of
        turn): generate()'s eos_token_id, the model's own end-of-sequence ids kept."""
        if not token_ids:
            return {}
        eos = self.lm.model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]
        return {"eos_token_id": eos + [i for i in token_ids if i not in eos]}

    # -- timing
    def set_threads(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)

    def timed_run(self, prompt, new_tokens: int):
        """Exactly `new_tokens` greedy tokens after `prompt` (text or ids), each time-stamped:
        (times, the call's start first; prompt tokens; the new text; GPU bytes or None)."""
        import torch

        model, tokenizer = self.lm.model, self.lm.tokenizer
        # token ids need no tokenizer
        ids = list(prompt) if isinstance(prompt, list) else self.plain_ids(prompt)
        input_ids = torch.tensor([ids], device=model.device)
        on_gpu = model.device.type == "cuda"
        if on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        clock = _TokenClock()  # put() copies each token to the CPU, which also waits for the GPU
        pad = (
            pad_token_id(tokenizer)
            if tokenizer is not None
            else model.generation_config.pad_token_id
        )
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,  # EOS banned
                do_sample=False,
                top_p=None,
                top_k=None,
                temperature=None,
                pad_token_id=pad,
                streamer=clock,
            )
        gpu = int(torch.cuda.max_memory_allocated()) if on_gpu else None
        new = out[0][len(ids) :]
        text = tokenizer.decode(new, skip_special_tokens=True) if tokenizer is not None else ""
        return [started] + clock.times, len(ids), text, gpu

    # -- chat templates
    def own_chat_template(self) -> tuple[str | None, str]:
        return getattr(self.lm.tokenizer, "chat_template", None), "the tokenizer's chat_template"

    def architecture(self) -> str:
        """'': the course reads no architecture here (the tokenizer carries the chat template)."""
        return ""

    def template_renderer(self, jinja: str):
        """render(messages, add_generation_prompt) running `jinja` as Transformers does (the
        tokenizer's apply_chat_template)."""

        def run(messages, generation):
            return self.lm.tokenizer.apply_chat_template(
                messages, chat_template=jinja, add_generation_prompt=generation, tokenize=False
            )

        return run

    # -- the rest
    def ignores_gpu(self) -> bool:
        """Never: torch put the model where lm.device says."""
        return False

    def close(self) -> None:
        """Nothing to free by hand: the memory goes with the last reference to the model."""


BACKENDS = {"llama.cpp": LlamaCppBackend, "transformers": TransformersBackend}


def backend_of(lm: LoadedModel) -> LlamaCppBackend | TransformersBackend:
    """The object that runs `lm` on its library (`lm.backend` names it): ask it, not lm.backend."""
    return BACKENDS[lm.backend](lm)


class _TokenClock:
    """A Transformers streamer that only notes when each new token arrives."""

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value):
        if self._prompt_seen:  # generate() first hands over the prompt
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self):
        pass


def _gpu_used_by_this_process() -> int | None:
    """GPU memory this process holds, from nvidia-smi (llama.cpp does not go through torch)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return int(mib.strip()) * 2**20
    return None


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
