"""The guard functions, pinned at their boundaries (issue 15): the quality gate, the memory-fit
check, GGUF validation, hub presence and size, history trimming and the context fit.

Every test here runs without the course models and in seconds: `tools/mutation_check.py` (make
mutation) runs them against small deliberate bugs in each guard and expects every one to be caught.
Test names carry the guard's keyword (quality_gate, memory, gguf, hub, trim, context): the mutation
check selects them with `-k`.
"""

import hashlib
import json
import math
import os
import struct
import sys
import time
import types
import warnings
from pathlib import Path

import pytest

from course import models as course_models
from helpers import chat, downloading, errors, generation, gguf_tools, hub, loading, memory
from helpers.errors import ContextOverflowError, ContextTruncationWarning, TruncatedGGUFError
from helpers.errors import NotEnoughMemoryError
from tests.hub_support import point_at

MIB, GIB = 2**20, 2**30


# ---- the quality gate ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ppl, passes",
    [
        (29.8, True),  # 1.49x the fp perplexity of 20
        (30.0, True),  # exactly 1.5x: still allowed
        (30.2, False),  # 1.51x
        (300.0, False),
        (1.0, True),
    ],
)
def test_quality_gate_at_its_boundary(ppl, passes):
    """A quantized model may be at most 1.5x the fp model's perplexity, and not a hair more."""
    assert course_models.passes_quality_gate(ppl, 20.0) is passes


@pytest.mark.parametrize(
    "ppl, fp",
    [
        (math.nan, 20.0),
        (math.inf, 20.0),
        (-math.inf, 20.0),
        (25.0, math.nan),
        (25.0, math.inf),
        (math.nan, math.nan),
    ],
)
def test_quality_gate_refuses_nan_and_inf(ppl, fp):
    """A NaN or infinite perplexity (of either model) is a broken evaluation: it never passes."""
    assert course_models.passes_quality_gate(ppl, fp) is False


@pytest.fixture
def fake_quantizer(tmp_cache, monkeypatch):
    """_build_quantized with GPTQModel, the checkpoints and the calibration faked: only the gate is
    real."""
    import transformers

    from helpers import quality

    class FakeModel:
        def quantize(self, rows, **kwargs):
            pass

        def save(self, path):  # a checkpoint with no tensors
            Path(path).mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "tokenizer_config.json"):
                (Path(path) / name).write_text("{}")

    gptqmodel = types.ModuleType("gptqmodel")
    gptqmodel.BACKEND = types.SimpleNamespace(AWQ_TORCH="awq_torch")
    gptqmodel.QuantizeConfig = lambda **kwargs: kwargs
    gptqmodel.GPTQModel = types.SimpleNamespace(load=lambda path, config, **kwargs: FakeModel())
    monkeypatch.setitem(sys.modules, "gptqmodel", gptqmodel)
    tokenizer = types.SimpleNamespace(added_tokens_decoder={})
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: "model"
    )
    monkeypatch.setattr(course_models, "calibration_rows", lambda tokenizer: [])
    monkeypatch.setattr(course_models, "read_stamp", lambda fmt: {"perplexity": 20.0})

    def build(ppl: float):
        monkeypatch.setattr(quality, "transformers_perplexity", lambda model, tokenizer: ppl)
        return course_models._build_quantized("gptq", tmp_cache / "gptq.partial")

    return build


def test_quality_gate_decides_the_build(fake_quantizer, capsys):
    """The build keeps a checkpoint at 1.49x the fp perplexity and discards it (exit 3) at 1.51x or
    NaN."""
    assert fake_quantizer(29.8)["perplexity"] == 29.8
    for bad in (30.2, math.nan):
        with pytest.raises(SystemExit) as exit_:
            fake_quantizer(bad)
        assert exit_.value.code == 3
        assert "QUALITY GATE: gptq perplexity" in capsys.readouterr().out


# ---- the memory-fit check -----------------------------------------------------------------------


def _safetensors_folder(path: Path) -> Path:
    """A model folder whose weights are 1000 bf16 values (2000 B) and 500 packed int32 (2000 B)."""
    path.mkdir()
    header = {
        "embed": {"dtype": "BF16", "shape": [1000], "data_offsets": [0, 2000]},
        "qweight": {"dtype": "I32", "shape": [500], "data_offsets": [2000, 4000]},
    }
    blob = json.dumps(header).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(4000))
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    return _safetensors_folder(tmp_path / "m")


def write_small_gguf(path: Path, q4_rows: int = 0) -> Path:
    """A real GGUF: one F32 vector, and (q4_rows > 0) a Q4_0 matrix of q4_rows rows of 32."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("output_norm.weight", np.ones(2500, dtype=np.float32))
    if q4_rows:  # a Q4_0 block: 32 weights in 18 bytes
        blocks = np.zeros((q4_rows, 18), dtype=np.uint8)
        writer.add_tensor(
            "blk.0.ffn_up.weight",
            blocks,
            raw_dtype=GGMLQuantizationType.Q4_0,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def gguf_file(tmp_path) -> Path:
    return write_small_gguf(tmp_path / "m.gguf")


class FakeCuda:
    """Stands in for torch (no GPU here): records what torch.cuda.mem_get_info was asked."""

    def __init__(self, free: int):
        self.free, self.asked = free, []
        self.cuda = types.SimpleNamespace(mem_get_info=self.mem_get_info)

    def device(self, name):
        return ("torch.device", name)

    def mem_get_info(self, device):
        self.asked.append(device)
        return self.free, 80 * GIB  # (free, total), as torch returns them


@pytest.fixture
def ram(monkeypatch):
    """Set the free RAM psutil reports."""
    import psutil

    def set_free(available: int):
        monkeypatch.setattr(
            psutil, "virtual_memory", lambda: types.SimpleNamespace(available=available)
        )

    return set_free


def test_memory_estimate_is_weights_plus_the_stated_overhead(folder, gguf_file):
    """Transformers: weights in memory x1.5 + 600 MiB; llama.cpp: the file x1.2 + 300 MiB."""
    assert (
        memory.estimate_memory_bytes(folder, "hf", "float32") == 6000 * 3 // 2 + 600 * MIB
    )  # bf16 doubles
    assert memory.estimate_memory_bytes(folder, "gptq", "bfloat16") == 4000 * 3 // 2 + 600 * MIB
    size = gguf_file.stat().st_size
    assert memory.estimate_memory_bytes(gguf_file, "gguf") == int(size * 1.2 + 300 * MIB)
    assert memory.estimate_memory_bytes(gguf_file, "gguf", "float32") == int(
        size * 1.2 + 300 * MIB
    )  # no cast in GGUF
    assert memory.memory_overhead("gguf") == (0.2, 300 * MIB)
    assert memory.memory_overhead("awq") == (0.5, 600 * MIB)


def test_a_gguf_estimate_counts_the_copy_llama_cpp_repacks(tmp_path, monkeypatch):
    """Q4_0/Q4_K matrices with rows in groups of 8 are copied (where this CPU repacks), so they
    count twice: mapped from the file, and repacked."""
    from helpers import model_info

    eight, seven = (write_small_gguf(tmp_path / f"{n}.gguf", q4_rows=n) for n in (8, 7))
    monkeypatch.setattr(memory, "cpu_repacks", lambda: True)
    assert memory.repacked_bytes(model_info.gguf_header(eight)) == 8 * 18
    assert memory.repacked_bytes(model_info.gguf_header(seven)) == 0  # rows not in groups of 8
    size = eight.stat().st_size
    assert memory.estimate_memory_bytes(eight, "gguf") == int((size + 8 * 18) * 1.2 + 300 * MIB)
    with pytest.raises(NotEnoughMemoryError) as err:
        memory.check_memory_fit(eight, "gguf", free_bytes=GIB // 10)
    assert "GiB of weights mapped from the file + 0.00 GiB of them repacked by llama.cpp" in str(
        err.value
    )
    monkeypatch.setattr(memory, "cpu_repacks", lambda: False)
    assert memory.repacked_bytes(model_info.gguf_header(eight)) == 0


def test_memory_fit_at_its_boundary(folder):
    """Free memory equal to the need fits; one byte less is refused before loading."""
    need = 6000 * 3 // 2 + 600 * MIB
    figures = memory.check_memory_fit(folder, "hf", dtype="float32", free_bytes=need)
    assert figures == {
        "need_bytes": need,
        "free_bytes": need,
        "weights_bytes": 6000,
        "overhead_bytes": 3000 + 600 * MIB,
        "device": "cpu",
        "fits": True,
    }
    with pytest.raises(NotEnoughMemoryError):
        memory.check_memory_fit(folder, "hf", dtype="float32", free_bytes=need - 1)


def test_memory_fit_measures_free_memory_on_the_device_asked_for(folder, monkeypatch):
    """Without free_bytes, the check measures the free memory of the device it was given."""
    asked = []
    monkeypatch.setattr(
        memory, "free_memory_bytes", lambda device="cpu": asked.append(device) or 64 * GIB
    )
    assert memory.check_memory_fit(folder, "awq", device="cuda:1")["free_bytes"] == 64 * GIB
    assert asked == ["cuda:1"]
    memory.check_memory_fit(folder, "awq", free_bytes=GIB)
    assert asked == ["cuda:1"]  # a given figure is used as is


def test_memory_free_on_a_cuda_device_comes_from_torch(monkeypatch, ram):
    """On CUDA the free memory is torch.cuda.mem_get_info's, for that device: never the free RAM."""
    torch = FakeCuda(free=3 * GIB)
    monkeypatch.setitem(sys.modules, "torch", torch)
    ram(500 * GIB)
    assert memory.free_memory_bytes("cuda:1") == 3 * GIB
    assert torch.asked == [("torch.device", "cuda:1")]
    assert memory.free_memory_bytes("cpu") == 500 * GIB
    assert torch.asked == [("torch.device", "cuda:1")]  # the CPU never asks the GPU


def test_memory_fit_on_cuda_uses_gpu_memory_not_ram(folder, monkeypatch, ram):
    """A model that fits the RAM but not the GPU is refused on the GPU, and the other way round."""
    monkeypatch.setitem(sys.modules, "torch", FakeCuda(free=100 * MIB))
    ram(500 * GIB)
    with pytest.raises(NotEnoughMemoryError, match="GiB of GPU memory .* is free on cuda:0"):
        memory.check_memory_fit(folder, "gptq", device="cuda:0")
    monkeypatch.setitem(sys.modules, "torch", FakeCuda(free=80 * GIB))
    ram(100 * MIB)
    assert memory.check_memory_fit(folder, "gptq", device="cuda:0")["fits"]
    with pytest.raises(NotEnoughMemoryError, match="GiB of RAM .* is free on cpu"):
        memory.check_memory_fit(folder, "gptq", device="cpu")


def test_memory_refusal_gives_the_figures(folder, gguf_file):
    """The refusal names the need, the weights (and the dtype they are cast to), the overhead and
    the free memory."""
    free = 3 * GIB // 10
    with pytest.raises(NotEnoughMemoryError) as err:
        memory.check_memory_fit(folder, "hf", device="cuda:1", dtype="float32", free_bytes=free)
    assert (
        "it needs about 0.6 GiB of GPU memory (0.00 GiB of weights as float32 + 50% + 600 MiB "
        "overhead), and only 0.3 GiB is free on cuda:1."
    ) in str(err.value)
    assert "keep the checkpoint's dtype instead of float32" in str(err.value)
    with pytest.raises(NotEnoughMemoryError) as err:
        memory.check_memory_fit(folder, "hf", free_bytes=free)
    assert (
        "(0.00 GiB of weights + 50% + 600 MiB overhead), and only 0.3 GiB is free on cpu."
        in str(err.value)
    )
    assert "instead of float32" not in str(err.value)
    with pytest.raises(NotEnoughMemoryError) as err:
        memory.check_memory_fit(gguf_file, "gguf", dtype="float32", free_bytes=GIB // 10)
    assert (
        "needs about 0.3 GiB of RAM (0.00 GiB of weights + 20% + 300 MiB overhead), "
        "and only 0.1 GiB is free on cpu."
    ) in str(err.value)


# ---- GGUF validation ----------------------------------------------------------------------------


def test_gguf_validation_at_the_end_of_the_data(tmp_path, small_gguf):
    """A file that ends exactly where its last tensor ends is whole; one byte less is truncated."""
    path = tmp_path / "m.gguf"
    path.write_bytes(small_gguf)
    header = gguf_tools.validate_gguf(path)
    assert header.metadata["general.description"] == "" and len(header.tensors) == 2
    assert (
        header.data_end == header.data_offset + 128 + 64
    )  # t0: 32 x f32; t1 (aligned at 128): 32 x f16
    path.write_bytes(small_gguf[: header.data_end])
    assert gguf_tools.validate_gguf(path).file_size == header.data_end
    path.write_bytes(small_gguf[: header.data_end - 1])
    with pytest.raises(
        TruncatedGGUFError,
        match=rf"ends at byte {header.data_end:,}, but the file has only "
        rf"{header.data_end - 1:,} bytes \(1 bytes, ",
    ):
        gguf_tools.validate_gguf(path)


def test_gguf_header_reads_stop_exactly_at_the_end(small_gguf):
    """The header parses from exactly its own bytes; one byte short is truncated, never a struct
    error."""
    header_bytes = gguf_tools.parse_gguf_bytes(small_gguf).header_bytes
    assert gguf_tools.parse_gguf_bytes(small_gguf[:header_bytes]).header_bytes == header_bytes
    with pytest.raises(TruncatedGGUFError, match="header runs past the end"):
        gguf_tools.parse_gguf_bytes(small_gguf[: header_bytes - 1])


def test_gguf_cursor_bounds():
    """The header cursor reads up to the last byte, never past it, and never moves backwards."""
    cursor = gguf_tools._Cursor(b"abcd", Path("x.gguf"), 4)
    assert cursor.take(0) == 0 and cursor.pos == 0
    assert cursor.take(3) == 0 and cursor.pos == 3
    assert cursor.take(1) == 3 and cursor.pos == 4
    assert cursor.take(0) == 4
    with pytest.raises(
        TruncatedGGUFError, match="reading the header at byte 4, the file has 4 bytes"
    ):
        cursor.take(1)
    with pytest.raises(TruncatedGGUFError):
        gguf_tools._Cursor(b"abcd", Path("x.gguf"), 4).take(-1)


# ---- the context window -------------------------------------------------------------------------


def _transformers_lm(window: int) -> loading.LoadedModel:
    return loading.LoadedModel(
        model=None,
        tokenizer=None,
        format="hf",
        backend="transformers",
        path=Path("/models/tiny"),
        device="cpu",
        dtype="bfloat16",
        load_seconds=0.0,
        context_length=window,
    )


def test_context_fit_transformers_at_the_window():
    """A prompt filling the window is refused; prompt + answer exactly at the window pass without a
    word."""
    lm = _transformers_lm(100)
    with pytest.raises(
        ContextOverflowError, match="The prompt is 100 tokens but tiny has a 100-token context"
    ):
        generation.fit_context(lm, 100, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert generation.fit_context(lm, 99, 1) == 1
        assert generation.fit_context(lm, 60, 40) == 40
        assert generation.fit_context(lm, 60, 3) == 3


def test_context_fit_transformers_shortens_the_answer_with_a_warning():
    """One token more than fits: max_new_tokens becomes what is left, and the learner is told."""
    lm = _transformers_lm(100)
    with pytest.warns(
        ContextTruncationWarning,
        match=r"prompt \(60 tokens\) \+ max_new_tokens \(41\) exceed "
        r"the 100-token context window of tiny: the answer will "
        r"stop after 40 tokens",
    ):
        assert generation.fit_context(lm, 60, 41) == 40
    with pytest.warns(ContextTruncationWarning):
        assert generation.fit_context(lm, 99, 500) == 1


class FakeLlama:
    """Stands in for llama_cpp.Llama: n_ctx(), the token buffer, and a tokenizer that counts words.

    Like llama.cpp: add_bos puts one token first, and with special=True a chat marker such as
    <start_of_turn> is one token (without it, its characters are tokenized one by one)."""

    def __init__(self, n_ctx: int, buffer: int | None = None):
        self._n_ctx = n_ctx
        self.input_ids = None if buffer is None else [0] * buffer

    def n_ctx(self) -> int:
        return self._n_ctx

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        tokens = [2] if add_bos else []
        for word in text.decode().split():
            tokens += [7] if special or not word.startswith("<") else [8] * len(word)
        return tokens


def test_context_fit_llama_cpp_counts_like_llama_cpp():
    """The prompt is counted with its BOS token and chat markers as single tokens."""
    report = generation.check_context(FakeLlama(1024, 1024), "<start_of_turn>user hello", 8)
    assert report["prompt_tokens"] == 3


def test_context_fit_llama_cpp_at_the_window():
    """BOS + 3 words = 4 tokens in n_ctx=10: 6 new tokens fit quietly, 7 warn, a 10-token prompt is
    refused."""
    llm = FakeLlama(10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert generation.check_context(llm, "a b c", 6) == {
            "prompt_tokens": 4,
            "max_tokens": 6,
            "n_ctx": 10,
            "output_room": 6,
            "fits": True,
            "suggested_n_ctx": 256,
        }
    with pytest.warns(
        ContextTruncationWarning,
        match=r"prompt \(4 tokens\) \+ max_tokens \(7\) exceed n_ctx=10: "
        r"the answer will stop after 6 tokens",
    ):
        report = generation.check_context(llm, "a b c", 7)
    assert not report["fits"] and report["output_room"] == 6
    with pytest.warns(ContextTruncationWarning):
        assert generation.check_context(llm, "w " * 8, 2)["output_room"] == 1  # 9 tokens: 1 left
    with pytest.raises(
        ContextOverflowError,
        match="The prompt is 10 tokens but the model was created with n_ctx=10",
    ):
        generation.check_context(llm, "w " * 9, 1)


def test_context_fit_llama_cpp_goes_by_n_ctx_not_the_trained_window():
    """generate() on a GGUF cuts the answer to what the n_ctx it was created with leaves, not to the
    trained window."""
    lm = loading.LoadedModel(
        model=FakeLlama(10, 10),
        tokenizer=None,
        format="gguf",
        backend="llama.cpp",
        path=Path("/models/tiny.gguf"),
        device="cpu",
        dtype="Q4_K_M",
        load_seconds=0.0,
        context_length=4096,
    )
    with pytest.warns(ContextTruncationWarning, match="exceed n_ctx=10"):
        assert generation.fit_context(lm, 6, 8) == 4


def test_context_fit_llama_cpp_uses_the_smaller_buffer():
    """llama-cpp-python's own token buffer can be smaller than llama.cpp's n_ctx(): the smaller one
    counts."""
    assert generation.effective_n_ctx(FakeLlama(256, 200)) == 200
    assert generation.effective_n_ctx(FakeLlama(256, 300)) == 256
    assert generation.effective_n_ctx(FakeLlama(256)) == 256  # no buffer yet
    with pytest.raises(ContextOverflowError, match="n_ctx=200"):
        generation.check_context(FakeLlama(256, 200), "w " * 210, 1)


def test_context_overflow_hints_at_rounding_only_when_llama_cpp_rounded():
    """The "multiple of 256" hint is for a Llama whose n_ctx() (rounded up by llama.cpp) is more
    than the buffer llama-cpp-python kept; where n_ctx() is the n_ctx that counts, no hint."""
    for llm in (FakeLlama(10, 10), FakeLlama(10), FakeLlama(10, 300)):  # buffer equal, none, larger
        with pytest.raises(
            ContextOverflowError,
            match=r"^The prompt is 10 tokens but the model was created with n_ctx=10, .*"
            r"prompt \+ 1 new tokens\), or shorten the prompt\.$",
        ) as err:
            generation.context_report(llm, 10, 1)
        assert "multiple of 256" not in str(err.value) and "llm.n_ctx()" not in str(err.value)
    rounded = FakeLlama(256, 200)  # n_ctx=200 asked for: llama.cpp made it 256, the buffer is 200
    with pytest.raises(
        ContextOverflowError,
        match=r"^The prompt is 210 tokens but the model was created with n_ctx=200, .*"
        r"or shorten the prompt\. \(llm\.n_ctx\(\) says 256: llama\.cpp rounds up to a "
        r"multiple of 256, but llama-cpp-python keeps buffers for the 200 you asked for, .*"
        r"ask for a multiple of 256\.\)$",
    ):
        generation.context_report(rounded, 210, 1)
    with pytest.raises(ContextOverflowError, match=r"says 256: .* for the 200 you asked for"):
        generation.context_report(rounded, 200, 1)  # exactly the buffer: refused, with the hint
    with pytest.warns(ContextTruncationWarning) as warned:  # fits, shortened: no error, no hint
        assert generation.context_report(rounded, 190, 20)["output_room"] == 10
    assert "multiple of 256" not in str(warned[0].message)


def test_context_suggested_n_ctx():
    """The suggestion is prompt + output rounded up to 256, and never above the trained context."""
    assert generation.suggest_n_ctx(1, 0) == 256
    assert generation.suggest_n_ctx(200, 56) == 256
    assert generation.suggest_n_ctx(200, 57) == 512
    assert (
        generation.suggest_n_ctx(200, 56, trained_context=256) == 256
    )  # exactly the trained context
    with pytest.raises(
        ContextOverflowError,
        match=r"prompt \(200\) \+ output \(57\) tokens exceed the model's "
        r"trained context of 256 tokens",
    ):
        generation.suggest_n_ctx(200, 57, trained_context=256)
    assert (
        generation.suggest_n_ctx(10_000, 0, trained_context=0) == 10_240
    )  # 0: unknown, not checked
    assert generation.suggest_n_ctx(100, 100, multiple=64) == 256


# ---- history trimming ---------------------------------------------------------------------------


def _words(messages: list[dict]) -> int:
    return sum(len(m["content"].split()) + 2 for m in messages)


def _history(pairs: int, system: bool = True) -> list[dict]:
    messages = [{"role": "system", "content": "be brief"}] if system else []
    for i in range(pairs):
        messages += [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    return messages + [{"role": "user", "content": "the last question"}]


def test_trim_history_counts_tokens_a_logarithmic_number_of_times():
    """Each count renders and tokenizes a whole prompt: 64 exchanges take 2 + log2(64) = 8 counts.
    (First of the trimming tests: a search that never ends fails here at once.)"""
    messages = _history(64)
    calls = []

    def counting(kept):
        calls.append(len(kept))
        if len(calls) > 100:
            raise AssertionError("trim_history keeps counting: its search does not end")
        return _words(kept)

    for budget in (
        _words(messages) - 1,
        _words(messages[:1] + messages[-3:]),
        _words(messages[:1] + messages[-1:]),
    ):
        calls.clear()
        result = chat.trim_history(messages, counting, budget)
        assert result.prompt_tokens == _words(result.messages) <= budget
        assert len(calls) <= 8, calls


def test_trim_history_at_its_boundaries():
    """A budget of exactly the full prompt keeps everything; exactly system + question drops every
    pair; one token less than that is an error."""
    messages = _history(3)
    full = _words(messages)
    assert chat.trim_history(messages, _words, full).dropped_pairs == 0
    kept = chat.trim_history(messages, _words, full - 1)
    assert kept.dropped_pairs == 1 and kept.messages == messages[:1] + messages[3:]
    assert (kept.prompt_tokens, kept.untrimmed_tokens) == (full - 8, full)
    alone = _words(messages[:1] + messages[-1:])
    bare = chat.trim_history(messages, _words, alone)
    assert (
        bare.messages == messages[:1] + messages[-1:]
        and bare.dropped_pairs == 3
        and bare.prompt_tokens == alone
    )
    with pytest.raises(chat.ContextWindowError):
        chat.trim_history(messages, _words, alone - 1)


def test_trim_history_without_earlier_turns_or_system():
    """A lone question that fits is sent as it is; without a system message nothing is added."""
    lone = _history(0, system=False)
    result = chat.trim_history(lone, _words, _words(lone))
    assert result.messages == lone and result.dropped_pairs == 0
    assert (
        chat.trim_history(_history(2, system=False), _words, 12).messages == lone
    )  # one pair would make 13


# ---- the hub: what counts as already there, what a download fetches, what is checked after it ---

GUARD_REPO = "me/guard"
WEIGHTS = os.urandom(2**20)
CONFIG = b'{"model_type": "llama"}'
MODEL = ["*.json", "*.safetensors"]


@pytest.fixture(scope="module")
def guard_hub():
    from course.local_hub import LocalHub, Repo, RepoEntry

    files = {
        "config.json": CONFIG,
        "model.safetensors": WEIGHTS,
        "tokenizer.json": b'{"version": "1.0"}',
        "notes/train.log": b"log\n",
    }
    repo = Repo(GUARD_REPO, {name: RepoEntry(name, data) for name, data in files.items()})
    with LocalHub({GUARD_REPO: repo}) as server:
        yield server


@pytest.fixture
def hub_server(guard_hub, tmp_path, monkeypatch):
    return point_at(guard_hub, tmp_path, monkeypatch)


def _spoil(path: Path, how: str) -> None:
    """Cut the weights one byte short, or make them one byte longer, as a later write would (mtime
    moves on)."""
    path.write_bytes(
        WEIGHTS[:-1] if how == "cut" else WEIGHTS + b"!"
    )  # through a cache link: the blob itself
    later = time.time() + 5
    os.utime(path, (later, later))


def _fetched(server) -> list[str]:
    return sorted(r.path.rsplit("/", 1)[1] for r in server.file_gets())


@pytest.mark.parametrize(
    "mode", ["local_dir", "cache", "one file in local_dir", "one file in cache"]
)
def test_hub_files_already_there_are_not_fetched_again(hub_server, tmp_path, mode):
    """Local-first: a second download of complete files sends no request at all and points at the
    same files."""
    local_dir = tmp_path / "dl" if mode.endswith("local_dir") else None

    def get():
        if mode.startswith("one file"):
            return downloading.download_file(
                GUARD_REPO, "model.safetensors", local_dir=local_dir, quiet=True
            )
        return downloading.download(GUARD_REPO, include=MODEL, local_dir=local_dir, quiet=True)

    first = get()
    assert not first.already_local and first.fetched_bytes == first.total_bytes
    hub_server.clear_log()
    again = get()
    assert again.already_local and again.fetched_bytes == 0 and hub_server.requests == []
    assert (again.path, again.total_bytes) == (first.path, first.total_bytes)
    if local_dir is None:
        assert again.commit == first.commit


def test_hub_a_file_in_a_folder_is_found_again_in_local_dir(hub_server, tmp_path):
    """One file inside a repo folder, downloaded again to the same local_dir: the same path, no
    request."""
    first = downloading.download_file(
        GUARD_REPO, "notes/train.log", local_dir=tmp_path / "dl", quiet=True
    )
    hub_server.clear_log()
    again = downloading.download_file(
        GUARD_REPO, "notes/train.log", local_dir=tmp_path / "dl", quiet=True
    )
    assert (
        again.already_local
        and again.path == first.path == (tmp_path / "dl" / "notes" / "train.log").resolve()
    )
    assert hub_server.requests == []


def test_hub_a_pattern_matching_nothing_is_never_already_there(hub_server, tmp_path):
    """After a download, a pattern that matches none of the repo's files is still an error."""
    downloading.download(GUARD_REPO, include=MODEL, local_dir=tmp_path / "dl", quiet=True)
    with pytest.raises(errors.NoMatchingFilesError):
        downloading.download(GUARD_REPO, include="*.gguf", local_dir=tmp_path / "dl", quiet=True)


@pytest.mark.parametrize("how", ["cut", "longer"])
def test_hub_a_spoiled_file_in_local_dir_is_counted_and_fetched_again(hub_server, tmp_path, how):
    """A cut-short or altered weights file in local_dir: estimate counts its bytes, download fetches
    it again."""
    dest = tmp_path / "dl"
    downloading.download(GUARD_REPO, include=MODEL, local_dir=dest, quiet=True)
    _spoil(dest / "model.safetensors", how)
    plan = downloading.estimate(GUARD_REPO, include=MODEL, local_dir=dest)
    assert plan.need_bytes == len(WEIGHTS) and plan.present_bytes == plan.total_bytes - len(WEIGHTS)
    hub_server.clear_log()
    again = downloading.download(GUARD_REPO, include=MODEL, local_dir=dest, quiet=True)
    assert not again.already_local and again.fetched_bytes == len(WEIGHTS)
    assert _fetched(hub_server) == ["model.safetensors"]
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS


def test_hub_files_placed_by_hand_count_at_their_listed_size_only(hub_server, tmp_path):
    """Files copied into local_dir before any download: a complete one counts, a cut-short one does
    not."""
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "config.json").write_bytes(CONFIG)
    (dest / "model.safetensors").write_bytes(WEIGHTS[: len(WEIGHTS) // 2])
    plan = downloading.estimate(GUARD_REPO, include=MODEL, local_dir=dest)
    assert plan.present_bytes == len(CONFIG) and plan.need_bytes == plan.total_bytes - len(CONFIG)


@pytest.mark.parametrize("how", ["cut", "longer"])
def test_hub_a_single_file_changed_since_its_download_is_fetched_again(hub_server, tmp_path, how):
    """download_file into local_dir: a file written after its download record is not taken as that
    download."""
    got = downloading.download_file(
        GUARD_REPO, "model.safetensors", local_dir=tmp_path / "one", quiet=True
    )
    _spoil(got.path, how)
    hub_server.clear_log()
    again = downloading.download_file(
        GUARD_REPO, "model.safetensors", local_dir=tmp_path / "one", quiet=True
    )
    assert not again.already_local and _fetched(hub_server) == ["model.safetensors"]
    assert got.path.read_bytes() == WEIGHTS


@pytest.mark.parametrize("newer_by, counts", [(0.5, True), (1.0, True), (1.5, False)])
def test_hub_a_single_file_counts_up_to_one_second_after_its_record(
    hub_server, tmp_path, newer_by, counts
):
    """huggingface_hub records when it finished each file; a file last changed up to 1 s after
    that (coarse file-system clocks) is that download, one changed later is checked with the hub
    again."""
    dest = tmp_path / "one"
    got = downloading.download_file(GUARD_REPO, "model.safetensors", local_dir=dest, quiet=True)
    record = dest / ".cache" / "huggingface" / "download" / "model.safetensors.metadata"
    lines = record.read_text().splitlines()
    lines[2] = repr(
        got.path.stat().st_mtime - newer_by
    )  # the download "finished" newer_by s before the last change
    record.write_text("\n".join(lines) + "\n")
    hub_server.clear_log()
    again = downloading.download_file(GUARD_REPO, "model.safetensors", local_dir=dest, quiet=True)
    assert again.already_local is counts
    assert (hub_server.requests == []) is counts


@pytest.mark.parametrize("how", ["cut", "longer"])
def test_hub_a_spoiled_file_in_the_cache_is_counted_and_never_taken_as_complete(hub_server, how):
    """A cut-short or altered blob behind a cache snapshot: estimate counts it, and the next
    download fetches the whole file again at once (never "already there", never an error)."""
    first = downloading.download(GUARD_REPO, include=MODEL, quiet=True)
    weights = first.path / "model.safetensors"
    _spoil(weights, how)
    plan = downloading.estimate(GUARD_REPO, include=MODEL)
    assert plan.need_bytes == len(WEIGHTS) and plan.present_bytes == plan.total_bytes - len(WEIGHTS)
    again = downloading.download(GUARD_REPO, include=MODEL, quiet=True)
    assert (
        not again.already_local
        and again.fetched_bytes == len(WEIGHTS)
        and weights.read_bytes() == WEIGHTS
    )


@pytest.mark.parametrize("newer_by, counts", [(0.5, True), (1.0, True), (1.5, False)])
def test_hub_a_single_file_in_the_cache_counts_up_to_one_second_after_its_link(
    hub_server, newer_by, counts
):
    """In the cache, huggingface_hub links snapshots/<commit>/<file> to its blob once the blob is
    complete: a blob last changed up to 1 s after the link is that download, one changed later is
    checked with the hub again."""
    got = downloading.download_file(GUARD_REPO, "model.safetensors", quiet=True)
    changed = got.path.lstat().st_mtime_ns + int(newer_by * 1e9)
    os.utime(got.path, ns=(changed, changed))  # follows the link: the blob
    hub_server.clear_log()
    again = downloading.download_file(GUARD_REPO, "model.safetensors", quiet=True)
    assert again.already_local is counts
    assert (hub_server.requests == []) is counts


def test_hub_a_spoiled_single_file_in_the_cache_is_fetched_again(hub_server):
    """download_file in the cache: a cut-short snapshot file is fetched again, never reused."""
    got = downloading.download_file(GUARD_REPO, "model.safetensors", quiet=True)
    _spoil(got.path, "cut")
    again = downloading.download_file(GUARD_REPO, "model.safetensors", quiet=True)
    assert not again.already_local and got.path.read_bytes() == WEIGHTS


def test_hub_a_single_file_in_a_folder_is_found_again_in_the_cache(hub_server):
    """download_file of notes/train.log, again, in the cache: the same path and commit."""
    first = downloading.download_file(GUARD_REPO, "notes/train.log", quiet=True)
    again = downloading.download_file(GUARD_REPO, "notes/train.log", quiet=True)
    assert (again.path, again.commit) == (first.path, first.commit)


def test_hub_disk_space_is_measured_where_the_files_go(hub_server, tmp_path, monkeypatch):
    """The disk check measures the local_dir (or the hub cache), and takes a given free_bytes as it
    is."""
    asked = []
    monkeypatch.setattr(
        downloading, "free_disk_bytes", lambda path: asked.append(Path(path)) or 10**12
    )
    downloading.estimate(GUARD_REPO, include=MODEL, local_dir=tmp_path / "dl")
    downloading.estimate(GUARD_REPO, include=MODEL)
    assert asked == [(tmp_path / "dl").resolve(), hub.hub_cache_dir()]
    assert downloading.estimate(GUARD_REPO, include=MODEL, free_bytes=123).free_bytes == 123
    assert len(asked) == 2


def test_hub_disk_fit_at_its_boundary(tmp_path):
    """Free disk equal to the bytes still needed fits; one byte less is refused before anything is
    written."""

    def plan(free):
        return downloading.DownloadPlan(
            "me/x",
            "main",
            "c" * 40,
            [],
            tmp_path,
            total_bytes=100,
            present_bytes=30,
            free_bytes=free,
            cli="hf download me/x",
        )

    enough = plan(70)
    assert enough.need_bytes == 70 and enough.fits and enough.check() is enough
    assert not plan(69).fits
    with pytest.raises(errors.NotEnoughDiskError, match="need 70 B and only 69 B is free"):
        plan(69).check()


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _on_disk(base: Path, name: str, data: bytes, sha256=None, blob_id=None) -> hub.RepoFileInfo:
    (base / name).write_bytes(data)
    return hub.RepoFileInfo(name, len(data), sha256, blob_id)


def test_hub_check_accepts_complete_files(tmp_path):
    """An LFS file with its sha256 (its blob id is the pointer's, not checked), a small file with
    its blob id, and a small file the listing gave no hash for all pass."""
    data = b"0123456789"
    files = [
        _on_disk(tmp_path, "lfs.safetensors", data, hashlib.sha256(data).hexdigest(), "f" * 40),
        _on_disk(tmp_path, "config.json", data, None, _git_blob_id(data)),
        _on_disk(tmp_path, "README.md", data),
    ]
    downloading._check_files(tmp_path, files, verify=True)
    assert all((tmp_path / f.path).exists() for f in files)


def test_hub_check_refuses_a_missing_or_wrong_size_file_and_deletes_it(tmp_path):
    """Sizes are always checked; a file of the wrong size is deleted, never left looking
    complete."""
    with pytest.raises(errors.DownloadFailedError, match="gone.bin is missing after the download"):
        downloading._check_files(tmp_path, [hub.RepoFileInfo("gone.bin", 10)], verify=False)
    short = _on_disk(tmp_path, "short.bin", b"012345678")
    short.size = 10
    with pytest.raises(
        errors.DownloadFailedError, match="short.bin has 9 bytes, expected 10; it was deleted"
    ):
        downloading._check_files(tmp_path, [short], verify=False)
    assert not (tmp_path / "short.bin").exists()


@pytest.mark.parametrize("verify", [True, False])
def test_hub_check_of_a_wrong_sha256_only_when_verifying(tmp_path, verify):
    """verify=True checks sha256 (and deletes a mismatch); verify=False trusts the size."""
    bad = _on_disk(tmp_path, "m.safetensors", b"0123456789", "0" * 64)
    if verify:
        with pytest.raises(errors.DownloadFailedError, match="wrong sha256"):
            downloading._check_files(tmp_path, [bad], verify=True)
        assert not (tmp_path / "m.safetensors").exists()
    else:
        downloading._check_files(tmp_path, [bad], verify=False)
        assert (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("verify", [True, False])
def test_hub_check_of_a_wrong_blob_id_only_when_verifying(tmp_path, verify):
    """Small files without a sha256 are checked against their git blob id when verifying."""
    bad = _on_disk(tmp_path, "config.json", b"{}", None, _git_blob_id(b"[]"))
    if verify:
        with pytest.raises(errors.DownloadFailedError, match="does not match its git blob id"):
            downloading._check_files(tmp_path, [bad], verify=True)
    else:
        downloading._check_files(tmp_path, [bad], verify=False)


def test_hub_check_hashes_blob_ids_of_files_under_10_mib_only(tmp_path):
    """The blob-id check reads a whole file into memory: files from 10 MiB up are size-checked
    only."""
    wrong = "0" * 40
    big = _on_disk(tmp_path, "big.txt", bytes(10 * MIB), None, wrong)
    downloading._check_files(tmp_path, [big], verify=True)
    just_under = _on_disk(tmp_path, "under.txt", bytes(10 * MIB - 1), None, wrong)
    with pytest.raises(
        errors.DownloadFailedError, match="under.txt does not match its git blob id"
    ):
        downloading._check_files(tmp_path, [just_under], verify=True)
