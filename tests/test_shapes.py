"""course/shapes.py: real models' layouts with random weights, for speed and memory only."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from course import models as course_models
from course import shapes
from course.shapes import ShapeError
from helpers.gguf_tools import read_gguf


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """Both test shapes in every format, made once for the module."""
    base = tmp_path_factory.mktemp("shapes")
    for name in ("test-llama", "test-qwen2"):
        for fmt in shapes.FORMATS:
            shapes.make(name, fmt, base=base, quiet=True)
    return base


def test_the_q4_k_m_rule_gives_the_course_gguf_its_own_types(course_cache):
    """llama.cpp's quantizer chose the course GGUF's types; the rule must choose the same,
    fallbacks for its 640-wide rows included."""
    header = read_gguf(course_models.model_path("gguf"))
    layers = header.metadata["gemma3.block_count"]
    for t in header.tensors:
        assert t.type_name == shapes.q4_k_m_type(t.name, t.shape[0], layers, tied=True), t.name


def test_the_7b_shapes_have_the_real_files_tensor_counts_and_mix():
    mistral = Counter(t.type_name for t in shapes.gguf_tensors(shapes.SHAPES["mistral-7b"]))
    # 32 layers x (2 norms + 7 linears) + embedding, final norm, head
    assert sum(mistral.values()) == 291
    # the head, and the "more bits" half of attn_v and ffn_down (use_more_bits: 16 of 32)
    assert mistral == {"F32": 65, "Q6_K": 1 + 16 + 16, "Q4_K": 1 + 32 * 7 - 32}
    qwen = shapes.gguf_tensors(shapes.SHAPES["qwen2.5-7b"])
    assert len(qwen) == 28 * 12 + 3  # q, k and v biases
    by_name = {t.name: t for t in qwen}
    assert by_name["blk.0.attn_k.bias"].shape == (512,)
    assert by_name["blk.0.ffn_down.weight"].shape == (3584, 18944)
    assert by_name["output.weight"].type_name == "Q6_K"
    assert by_name["token_embd.weight"].type_name == "Q4_K"
    llama = {t.name: t for t in shapes.gguf_tensors(shapes.SHAPES["llama-3.2-1b"])}
    assert "output.weight" not in llama  # tied: the embedding is the head, so it gets Q6_K
    assert llama["token_embd.weight"].type_name == "Q6_K"
    assert llama["rope_freqs.weight"].shape == (32,)


@pytest.mark.parametrize("name", ["test-llama", "test-qwen2"])
def test_the_gguf_holds_the_planned_tensors(made, name):
    shape = shapes.SHAPES[name]
    header = read_gguf(shapes.made_path(name, "gguf", base=made))
    plan = shapes.gguf_tensors(shape)
    assert [t.name for t in header.tensors] == [t.name for t in plan]
    for t, want in zip(header.tensors, plan, strict=True):
        assert t.shape == tuple(reversed(want.shape)), t.name
        assert t.type_name == want.type_name, t.name
    assert header.metadata["general.file_type"] == shapes.GGUF_FTYPE_Q4_K_M
    assert header.metadata[f"{shape.gguf_arch}.block_count"] == shape.num_hidden_layers
    assert header.metadata["tokenizer.ggml.tokens"].length == shape.vocab_size
    types = Counter(t.type_name for t in header.tensors if ".ffn_down." in t.name)
    assert types == {"Q6_K": 4, "Q4_K": 4}  # use_more_bits(i, 8): layers 0, 3, 6, 7


@pytest.mark.parametrize("type_name", ["Q4_K", "Q6_K", "Q5_0", "Q8_0"])
def test_random_blocks_decode_to_the_spread_asked_for(type_name):
    import gguf

    blocks = shapes.RandomBlocks(seed=1).tensor(type_name, 64, 1024, std=0.03)
    values = gguf.quants.dequantize(blocks.reshape(64, -1), gguf.GGMLQuantizationType[type_name])
    assert np.isfinite(values).all()
    assert 0.02 < float(np.std(values)) < 0.045  # the asked 0.03, with the scales' jitter
    assert abs(float(np.mean(values))) < 0.005


@pytest.mark.parametrize("name", ["test-llama", "test-qwen2"])
def test_llama_cpp_decodes_the_gguf(made, name):
    from helpers.loading import new_llama

    llm = new_llama(shapes.made_path(name, "gguf", base=made), n_ctx=64, logits_all=True)
    try:
        llm.eval([1, 500, 600, 700])
        assert np.isfinite(np.asarray(llm.scores[: llm.n_tokens])).all()
        tokens = []
        for token in llm.generate([1, 5, 6], temp=0.0):
            tokens.append(token)
            if len(tokens) == 4:
                break
        assert len(tokens) == 4
        assert llm.detokenize(tokens)  # ids decode to text (a made-up vocabulary's)
    finally:
        llm.close()


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
@pytest.mark.parametrize("name", ["test-llama", "test-qwen2"])
def test_load_model_runs_the_4bit_checkpoints(made, name, fmt):
    import torch

    from helpers.loading import load_model

    lm = load_model(shapes.made_path(name, fmt, base=made), device="cpu")
    kernel = "TorchAtenLinear" if fmt == "gptq" else "TorchAtenAwqLinear"
    assert f"kernel: {kernel}" in lm.notes
    q_proj = lm.model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == kernel
    assert (q_proj.bias is not None) == shapes.SHAPES[name].attention_bias
    ids = torch.tensor([[1, 500, 600, 700]])
    with torch.inference_mode():
        logits = lm.model(ids).logits
        out = lm.model.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert bool(torch.isfinite(logits).all())
    assert out.shape == (1, 6)


def test_the_checkpoint_folders_say_what_they_are_for(made):
    for fmt in shapes.FORMATS:
        folder = made / "test-llama" / fmt
        assert shapes.NOTICE in (folder / "README.md").read_text()
        stamp = json.loads((folder / shapes.STAMP).read_text())
        assert stamp["recipe"]["notice"] == shapes.NOTICE
    config = json.loads((made / "test-qwen2" / "gptq" / "config.json").read_text())
    assert config["quantization_config"]["checkpoint_format"] == "gptq"
    assert config["quantization_config"]["sym"] is True
    assert config["quantization_config"]["desc_act"] is False


def test_making_again_is_a_no_op(made, capsys):
    path = shapes.made_path("test-llama", "gguf", base=made)
    before = path.stat().st_mtime_ns
    assert shapes.make("test-llama", "gguf", base=made) == path
    assert path.stat().st_mtime_ns == before
    assert "already made" in capsys.readouterr().out
    assert not list(path.parent.parent.glob("*.partial-*"))


def test_the_size_estimate_is_what_is_written(made):
    for name in ("test-llama", "test-qwen2"):
        for fmt in shapes.FORMATS:
            folder = made / name / fmt
            written = sum(p.stat().st_size for p in folder.iterdir())
            assert 0.9 < written / shapes.expected_bytes(shapes.SHAPES[name], fmt) < 1.1


def test_make_refuses_a_disk_too_small_before_writing(tmp_cache):
    """One line: the space needed, the space free, and where (QLLM_CACHE_DIR to move it)."""
    shape = shapes.SHAPES["mistral-7b"]
    need = int(shapes.expected_bytes(shape, "gguf") * shapes.DISK_MARGIN)
    with pytest.raises(ShapeError) as caught:
        shapes.make("mistral-7b", "gguf", free_bytes=700 * 10**6)
    message = str(caught.value)
    assert "\n" not in message
    assert f"needs about {shapes.human_size(need)} of free disk in {tmp_cache / 'shapes'}" in (
        message
    )
    assert "and 700.0 MB is free there" in message
    assert "QLLM_CACHE_DIR" in message
    assert not tmp_cache.exists()  # nothing was written


def test_the_cli_says_these_measure_speed_only(capsys):
    assert shapes.main(["list"]) == 0
    out = capsys.readouterr().out
    assert shapes.NOTICE in out
    assert all(name in out for name in shapes.SHAPES)


def test_an_unknown_shape_is_a_clear_error():
    with pytest.raises(ShapeError, match="choose one of mistral-7b"):
        shapes.make("mistral-8b", "gguf")


def test_a_twin_keeps_the_layout_and_takes_only_what_it_is_told(made, tmp_path):
    """bench.shapes times a file against its random twin: same header, tensors and types; with
    every part kept, the same bytes."""
    reference = shapes.made_path("test-qwen2", "gguf", base=made)
    twin = tmp_path / "twin.gguf"
    shapes.write_gguf_like(reference, twin, seed=7)
    copy = tmp_path / "copy.gguf"
    shapes.write_gguf_like(reference, copy, keep=shapes.KEEPABLE)
    assert copy.read_bytes() == reference.read_bytes()
    ref, made_twin = read_gguf(reference), read_gguf(twin)
    assert [(t.name, t.shape, t.type_name) for t in made_twin.tensors] == [
        (t.name, t.shape, t.type_name) for t in ref.tensors
    ]
    assert made_twin.metadata == ref.metadata
    assert twin.read_bytes() != reference.read_bytes()


def test_the_benchmark_refuses_an_unknown_part_to_keep(capsys):
    from bench import shapes as bench_shapes

    assert bench_shapes.main(["--keep", "weights"]) == 2
    err = capsys.readouterr().err
    assert "--keep weights: choose from" in err
    assert "\n" not in err.strip()
