"""One interface over the two backends (helpers.generation: LlamaCppBackend, TransformersBackend,
reached with backend_of(lm)): no code outside that module asks which backend a model has, and each
class's methods, tried on the course models, do the same thing a few tokens long."""

import re
import threading
import warnings
from pathlib import Path

import pytest

from course import models as course_models
from helpers import generation, loading, templates
from helpers.errors import ContextOverflowError, ContextTruncationWarning
from helpers.generation import LlamaCppBackend, TransformersBackend, backend_of

ROOT = Path(__file__).resolve().parent.parent
BACKEND_MODULE = ROOT / "helpers" / "generation.py"
SEARCHED = ("helpers", "course", "bench", "tools")
# `x.backend == "..."`, `"..." != lm.backend`, `lm.backend in (...)`, `backend != ...`
COMPARISON = re.compile(
    r"\bbackend\s*[!=]=|[!=]=\s*[\w.]*\bbackend\b(?![\w.(])|\.backend\s+(?:not\s+)?in\b"
)
PROMPT = "The capital of France is"


def backend_comparisons() -> list[str]:
    found = []
    for folder in SEARCHED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == BACKEND_MODULE:
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if COMPARISON.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_no_backend_comparison_outside_the_backend_module():
    assert backend_comparisons() == [], "ask generation.backend_of(lm) instead"


def test_the_search_sees_every_form_of_the_comparison():
    for line in (
        'if lm.backend == "llama.cpp":',
        'model.backend != "transformers"',
        'if "llama.cpp" == lm.backend:',
        "x = lm.backend in ('llama.cpp',)",
        "backend != other",
    ):
        assert COMPARISON.search(line), line
    for line in (
        "for backend in BACKENDS:",
        "if backend.tokenize(a, True) != backend.tokenize(a, False):",
        'print(f"{lm.format} model via {lm.backend}")',
        "return BACKENDS[lm.backend](lm)",
    ):
        assert not COMPARISON.search(line), line


def test_both_classes_offer_the_same_interface():
    def public(cls):
        return {name for name in vars(cls) if not name.startswith("_")}

    assert public(LlamaCppBackend) == public(TransformersBackend)
    assert generation.BACKENDS["llama.cpp"] is LlamaCppBackend
    assert generation.BACKENDS["transformers"] is TransformersBackend


# ---- on the course models -------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf(course_cache):
    """conftest's gguf with a 256-token window, so the window tests below reach its edges."""
    return loading.load_model(course_models.model_path("gguf"), n_ctx=256)


def test_backend_of_picks_the_class_and_its_facts(gguf, hf):
    llama, torch = backend_of(gguf), backend_of(hf)
    assert type(llama) is LlamaCppBackend and llama.lm is gguf
    assert type(torch) is TransformersBackend and torch.lm is hf
    assert llama.allocates_window is True and torch.allocates_window is False
    assert llama.torch_model is None and torch.torch_model is hf.model
    assert llama.ignores_gpu() is False and torch.ignores_gpu() is False  # on the CPU


def test_tokens(lm):
    backend = backend_of(lm)
    assert backend.bos_text() == "<bos>"
    hello = backend.tokenize("Hello", special=True)
    assert backend.encode("Hello", add_bos=True) == [2] + hello == backend.plain_ids("Hello")
    assert backend.encode("<bos>Hello", add_bos=False) == [2] + hello  # the text's <bos> is it
    assert backend.tokenize("", special=True) == [] and backend.tokenize("", True, bos=True) == [2]
    assert backend.tokenize("<end_of_turn>", special=True) == [106]  # the control token
    typed = backend.tokenize("<end_of_turn>", special=False)  # typed text stays text
    assert len(typed) > 1 and 106 not in typed


def test_both_backends_tokenize_alike(gguf, hf):
    for text in (
        PROMPT,
        "问：人工智能的未来发展方向是什么？",
        "<start_of_turn>user\nHi<end_of_turn>",
    ):
        assert backend_of(gguf).encode(text, True) == backend_of(hf).encode(text, True), text
        for special in (True, False):
            assert backend_of(gguf).tokenize(text, special) == backend_of(hf).tokenize(
                text, special
            ), (text, special)


def test_fit_context_on_each_window(gguf, hf):
    llama, torch = backend_of(gguf), backend_of(hf)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert llama.fit_context(10, 8) == 8 and torch.fit_context(10, 8) == 8
    with pytest.warns(ContextTruncationWarning, match="exceed n_ctx=256"):
        assert llama.fit_context(200, 100) == 56  # the n_ctx it was loaded with
    with pytest.raises(ContextOverflowError, match="created with n_ctx=256"):
        llama.fit_context(256, 1)
    window = hf.context_length  # the trained window
    with pytest.warns(ContextTruncationWarning, match=f"{window:,}-token context window of hf"):
        assert torch.fit_context(window - 8, 100) == 8
    with pytest.raises(ContextOverflowError, match="max_position_embeddings"):
        torch.fit_context(window, 1)


def test_complete_is_what_generate_returns(lm):
    backend = backend_of(lm)
    text, new = backend.complete(backend.encode(PROMPT, add_bos=True), 3)
    assert text.strip() and new == 3
    assert generation.generate(lm, PROMPT, max_new_tokens=3) == text


def test_pieces_stream_the_same_text_and_count_every_token(lm):
    backend = backend_of(lm)
    ids = backend.encode(PROMPT, add_bos=True)
    counts, stop = [], threading.Event()
    pieces = list(backend.pieces(ids, 5, 0.0, stop, counts.append))
    assert "".join(pieces) == backend.complete(ids, 5)[0]
    assert counts[-1] == 5 and counts == sorted(counts)
    stop.set()  # Stop before the first token: at most one more
    counts.clear()
    list(backend.pieces(ids, 50, 0.0, stop, counts.append))
    assert max(counts, default=0) <= 1
    early = backend.pieces(ids, 200, 0.0, threading.Event(), lambda n: None)
    next(early)
    early.close()  # leaving early ends the generation and frees the model
    assert generation.generate(lm, PROMPT, max_new_tokens=2)


def test_stop_at_tokens(gguf, hf):
    assert backend_of(gguf).stop_at_tokens([106]) == {}  # llama.cpp ends at end-of-turn itself
    assert backend_of(hf).stop_at_tokens([106]) == {"eos_token_id": [1, 106]}
    assert backend_of(hf).stop_at_tokens([]) == {}


def test_timed_runs(lm):
    backend = backend_of(lm)
    backend.set_threads(2)
    times, prompt_tokens, text, gpu = backend.timed_run(PROMPT, 3)
    assert len(times) == 4 and times == sorted(times)  # the start, then one stamp per token
    assert prompt_tokens == len(backend.plain_ids(PROMPT)) and isinstance(text, str)
    assert gpu is None
    ids = backend.plain_ids(PROMPT)
    assert backend.timed_run(ids, 2)[1] == len(ids)  # token ids, as given


def test_set_threads_on_transformers(hf):
    import torch

    before = torch.get_num_threads()
    try:
        backend_of(hf).set_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_chat_template_specifics(gguf, hf):
    llama, torch = backend_of(gguf), backend_of(hf)
    assert llama.own_chat_template()[1] == "the GGUF metadata (tokenizer.chat_template)"
    own, where = torch.own_chat_template()
    assert where == "the tokenizer's chat_template" and templates.COURSE_TEMPLATE_MARK in own
    assert llama.architecture() == "gemma3" and torch.architecture() == ""
    jinja = templates.COURSE_TEMPLATE_FILE.read_text()
    messages = [{"role": "user", "content": "Hi"}]
    rendered = {llama.template_renderer(jinja)(messages, g) for g in (True,)}
    rendered.add(torch.template_renderer(jinja)(messages, True))
    assert rendered == {"<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"}


def test_close(course_cache, hf):
    other = loading.load_model(course_models.model_path("gguf"), n_ctx=256)
    backend_of(other).close()  # llama.cpp frees it now
    backend_of(hf).close()  # nothing to free by hand: the model still runs
    assert generation.generate(hf, PROMPT, max_new_tokens=2)
