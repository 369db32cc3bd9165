"""helpers.timing: filled, consistent timings on equal work, and bytes-per-token arithmetic.

No test asserts a duration: only that times are positive and the counts add up.
"""

import numpy as np
import pytest

from helpers import loading, timing
from helpers.errors import CourseError
from helpers.gguf_tools import read_gguf
from tests.conftest import tiny_gemma3

PROMPTS = ["The history of the printing press", "印刷术的历史"]


@pytest.fixture(scope="module")
def gguf_lm(course_cache):
    from course import models as course_models

    lm = loading.load_model(course_models.model_path("gguf"), n_ctx=512)
    yield lm
    lm.model.close()


def _check_run(run: timing.RunTiming, new_tokens: int):
    assert run.new_tokens == new_tokens  # exactly the work asked for
    assert run.prompt_tokens > 0
    assert run.ttft_s > 0 and run.total_s >= run.ttft_s
    assert run.prompt_tok_s == pytest.approx(run.prompt_tokens / run.ttft_s)
    assert run.decode_tok_s > 0
    assert run.peak_rss_bytes > 0
    assert run.peak_gpu_bytes is None  # CPU


def test_llama_cpp_run_fields_filled(gguf_lm):
    run = timing.time_generation(gguf_lm, PROMPTS[0], new_tokens=6)
    _check_run(run, 6)
    assert run.text.strip()


def test_llama_cpp_each_run_starts_from_an_empty_cache(gguf_lm):
    first = timing.time_generation(gguf_lm, PROMPTS[1], new_tokens=5)
    second = timing.time_generation(gguf_lm, PROMPTS[0], new_tokens=4)
    third = timing.time_generation(gguf_lm, PROMPTS[0], new_tokens=4)
    assert second.text == third.text  # greedy, same threads: same tokens
    # the context holds this run's prompt and tokens only (the last token is never fed back)
    assert gguf_lm.model.n_tokens == third.prompt_tokens + 4 - 1
    assert first.prompt_tokens != second.prompt_tokens


def test_measure_summary_and_row(gguf_lm):
    t = timing.measure(gguf_lm, PROMPTS, new_tokens=4, warmup=1, repeats=2, threads=2)
    assert len(t.runs) == 4  # repeats x prompts; the warm-up is not kept
    row = t.row()
    for key in (
        "format",
        "backend",
        "threads",
        "load_s",
        "ttft_s",
        "prompt_tok_s",
        "decode_tok_s",
        "decode_spread",
        "ttft_spread",
        "peak_rss_MiB",
        "new_tokens",
        "runs",
    ):
        assert key in row
    assert row["new_tokens"] == 4 and row["runs"] == 4 and row["threads"] == 2
    assert row["format"] == "gguf" and row["backend"] == "llama.cpp"
    assert (
        min(r.decode_tok_s for r in t.runs)
        <= row["decode_tok_s"]
        <= max(r.decode_tok_s for r in t.runs)
    )
    assert row["decode_spread"] >= 0
    import pandas as pd

    assert pd.DataFrame([row]).shape == (1, len(row))


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, course_cache):
    """A tiny random Gemma 3 with the course tokenizer: fast, and its end-of-sequence is ours to
    pick."""
    import torch
    from transformers import AutoTokenizer

    from course import models as course_models

    path = tmp_path_factory.mktemp("tiny")
    model = tiny_gemma3(path, layers=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(course_models.model_path("hf"))
    return loading.LoadedModel(
        model=model,
        tokenizer=tokenizer,
        format="hf",
        backend="transformers",
        path=path,
        device="cpu",
        dtype=str(model.dtype).replace("torch.", ""),
        load_seconds=0.0,
        context_length=1024,
    ), torch


def test_transformers_run_is_forced_past_end_of_sequence(tiny_lm):
    lm, torch = tiny_lm
    inputs = lm.tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.inference_mode():
        first = lm.model.generate(**inputs, max_new_tokens=1, do_sample=False)[0, -1].item()
    lm.model.generation_config.eos_token_id = first  # plain generate() would stop after one token
    with torch.inference_mode():
        plain = lm.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert plain.shape[1] - inputs["input_ids"].shape[1] == 1
    run = timing.time_generation(lm, PROMPTS[0], new_tokens=8)
    _check_run(run, 8)
    assert run.prompt_tokens == inputs["input_ids"].shape[1]


def test_too_few_tokens_refused(tiny_lm):
    with pytest.raises(CourseError, match="at least 2"):
        timing.time_generation(tiny_lm[0], PROMPTS[0], new_tokens=1)


def test_copy_bandwidth_is_positive():
    assert timing.copy_bandwidth(threads=1, mib=8, repeats=2) > 0
    assert timing.copy_bandwidth(threads=2, mib=8, repeats=2) > 0


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def test_peak_rss_grows_and_resets():
    """The peak keeps memory that was touched and given back since; a reset starts from what is
    resident now."""
    before = timing.peak_rss_bytes()
    resident = _rss()
    block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB touched
    assert timing.peak_rss_bytes() >= resident + 60 * 2**20
    assert timing.peak_rss_bytes() >= _rss() - 2**20
    del block  # a block this large is its own mapping: freeing it returns it to the system
    assert _rss() < resident + 32 * 2**20
    assert timing.peak_rss_bytes() >= resident + 60 * 2**20  # gone, but still in the peak
    if timing.reset_peak_rss():
        assert timing.peak_rss_bytes() < before + 64 * 2**20
        assert timing.peak_rss_bytes() < resident + 32 * 2**20


# ---- bytes read per token, by hand ---------------------------------------------------------------


def _tiny_weights_by_hand(vocab, hidden=128, inter=256, heads=2, kv_heads=1, head_dim=64, layers=1):
    """Parameter count of tests.conftest.tiny_gemma3, written out."""
    attention = (
        hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    )
    mlp = 3 * hidden * inter  # gate, up, down
    norms = 4 * hidden + 2 * head_dim  # input, post-attention, pre/post-feedforward; q_norm, k_norm
    return vocab * hidden, layers * (
        attention + mlp + norms
    ) + hidden  # (embedding, the rest + final norm)


def test_bytes_per_token_tied_head_counts_embedding_once(tmp_path):
    model = tiny_gemma3(tmp_path, vocab_size=1000)
    embedding, rest = _tiny_weights_by_hand(1000)
    # bf16: 2 bytes a weight; the tied head reads the whole embedding once per token
    assert timing.torch_bytes_per_token(model) == 2 * (embedding + rest)


def test_bytes_per_token_untied_embedding_counts_one_row(tmp_path):
    import torch
    from transformers import Gemma3ForCausalLM

    tied = tiny_gemma3(tmp_path, vocab_size=1000)
    config = tied.config
    config.tie_word_embeddings = False
    model = Gemma3ForCausalLM(config).to(torch.bfloat16)
    embedding, rest = _tiny_weights_by_hand(1000)
    head = embedding  # a separate lm_head of the same shape, read whole
    assert timing.torch_bytes_per_token(model) == 2 * (rest + head + 128)  # + one embedding row


def _write_gguf(path, with_output: bool):
    from gguf import GGMLQuantizationType, GGUFWriter, quants

    writer = GGUFWriter(str(path), "llama")
    writer.add_token_list(["<s>", "a", "b"])  # a string array the reader must skip
    writer.add_array("test.numbers", [1, 2, 3])
    embedding = quants.quantize(
        np.random.rand(10, 64).astype(np.float32), GGMLQuantizationType.Q8_0
    )
    writer.add_tensor(
        "token_embd.weight",
        embedding,
        raw_shape=embedding.shape,
        raw_dtype=GGMLQuantizationType.Q8_0,
    )
    writer.add_tensor("blk.0.ffn_up.weight", np.ones((8, 64), dtype=np.float16))
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    if with_output:
        writer.add_tensor("output.weight", np.ones((10, 64), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_tensor_bytes_match_the_gguf_package(tmp_path):
    from gguf import GGUFReader

    path = tmp_path / "t.gguf"
    _write_gguf(path, with_output=True)
    ours = {t.name: t for t in read_gguf(path).tensors}
    theirs = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}
    assert {name: t.n_bytes for name, t in ours.items()} == theirs
    assert ours["token_embd.weight"].type_name == "Q8_0"


def test_gguf_bytes_per_token_by_hand(tmp_path):
    # Q8_0: blocks of 32 weights in 34 bytes (32 int8 + one fp16 scale)
    embedding = 10 * 64 // 32 * 34
    ffn = 8 * 64 * 2  # F16
    norm = 64 * 4  # F32
    tied = tmp_path / "tied.gguf"
    _write_gguf(tied, with_output=False)
    assert timing.gguf_bytes_per_token(tied) == embedding + ffn + norm
    untied = tmp_path / "untied.gguf"
    _write_gguf(untied, with_output=True)
    assert timing.gguf_bytes_per_token(untied) == embedding // 10 + ffn + norm + 10 * 64 * 2


def test_not_a_gguf_is_refused(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"<html>nope</html>")
    with pytest.raises(CourseError, match="not a GGUF"):
        timing.gguf_bytes_per_token(path)


def test_course_gguf_bytes_per_token(course_cache):
    from course import models as course_models

    path = course_models.model_path("gguf")
    tensors = read_gguf(path).tensors
    assert "output.weight" not in {
        t.name for t in tensors
    }  # Gemma 3 ties its head to the embedding
    total = timing.gguf_bytes_per_token(path)
    assert total == sum(t.n_bytes for t in tensors)
    assert 0.9 < total / path.stat().st_size < 1.0  # the file is the tensors plus metadata
    assert timing.decode_ceiling(20e9, total) == pytest.approx(20e9 / total)
