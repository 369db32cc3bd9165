"""Shared fixtures. Tests never download anything: models are the course's own or tiny random
ones."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("QLLM_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that reaches for the hub fails loudly


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """An empty course-model cache for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("QLLM_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def course_cache() -> Path:
    """The real course models (built by `make models` before the tests run)."""
    from course import models as course_models

    course_models.ensure(quiet=True)
    return course_models.cache_dir()


@pytest.fixture(scope="module")
def gguf(course_cache):
    """The course GGUF on llama.cpp (a 1024-token window), one per test module."""
    from course import models as course_models
    from helpers import loading

    return loading.load_model(course_models.model_path("gguf"), n_ctx=1024)


@pytest.fixture(scope="module")
def hf(course_cache):
    """The course's full-precision model on Transformers, one per test module."""
    from course import models as course_models
    from helpers import loading

    return loading.load_model(course_models.model_path("hf"))


@pytest.fixture(params=["gguf", "hf"])
def lm(request):
    """Each backend in turn: the course GGUF (llama.cpp), then `hf` (Transformers)."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, course_cache) -> Path:
    """A tiny random Gemma 3 (1 layer, safetensors, 1024-token window) with the course tokenizer:
    loads in seconds."""
    import shutil

    from course import models as course_models

    folder = tmp_path_factory.mktemp("tiny") / "tiny-gemma3"
    tiny_gemma3(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(course_models.model_dir("hf") / name, folder / name)
    return folder


def tiny_gemma3(path: Path, vocab_size: int = 262144, layers: int = 1, seed: int = 0):
    """A random Gemma 3 text model small enough to quantize in seconds, saved to `path`."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=1024,
        sliding_window=64,
        layer_types=["sliding_attention"] * layers,
    )
    model = Gemma3ForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():  # random (1 + w) gains around 1, one dead channel as in the real model
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.pre_feedforward_layernorm):
                norm.weight.normal_(0.0, 0.5)
            layer.pre_feedforward_layernorm.weight[3] = -1.0
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory) -> bytes:
    """A complete 2-tensor GGUF file (an empty string value included), written with the gguf
    package."""
    import gguf
    import numpy as np

    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.context_length", 64)
    writer.add_string("general.name", "small")
    writer.add_key_value(
        "general.description", "", gguf.GGUFValueType.STRING
    )  # add_string skips ""
    writer.add_tensor("t0", np.arange(32, dtype=np.float32))
    writer.add_tensor("t1", np.ones((4, 8), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def tiny_compressed_tensors(source: Path, out: Path, group_size: int = 128) -> Path:
    """A W4A16 compressed-tensors checkpoint of the model in `source`, made the way llm-compressor
    saves one, with round-to-nearest scales (compressed-tensors' own `calculate_qparams`) instead of
    its GPTQ pass."""
    import shutil

    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    weights = QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=group_size
    )
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    apply_quantization_config(
        model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"])
    )
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight_scale"):
                groups = module.weight.float().reshape(module.weight.shape[0], -1, group_size)
                scale, zero = calculate_qparams(groups.amin(-1), groups.amax(-1), weights)
                module.weight_scale.copy_(scale.reshape(module.weight_scale.shape))
                module.weight_zero_point.copy_(zero.reshape(module.weight_zero_point.shape))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (source / name).exists():
            shutil.copy(source / name, out / name)
    return out
