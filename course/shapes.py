"""Real models' shapes with cheap weights: checkpoints for measuring speed and memory at 7B.

    python -m course.shapes list
    python -m course.shapes make --shape mistral-7b --format gguf     # Q4_K_M, ~4.4 GB
    python -m course.shapes make --shape qwen2.5-7b --format gptq     # or awq
    python -m course.shapes path --shape mistral-7b --format gguf

Each checkpoint has the exact tensor names, shapes, dtypes and quantization layout of the real
model (for GGUF, the Q4_K_M type mix llama.cpp's quantizer picks), filled with random values of a
realistic spread instead of trained weights: valid quantized blocks, small finite scales. They are
made offline in seconds to minutes, under `cache_dir() / "shapes" / <shape> / <format>`, written to
a temporary folder and renamed when complete, with a stamp: making one again is a no-op.

They measure speed and memory only, never quality: their text is noise.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from helpers.env import cache_dir, installed_version
from helpers.errors import CourseError
from helpers.hub import human_size

from .models import build_lock, check_free_disk

NOTICE = (
    "These models have the shapes of real models and random weights: they measure speed and "
    "memory only, never quality."
)
FORMATS = ("gguf", "gptq", "awq")
STAMP = "shape-made.json"
# a change here means every made folder is remade
RECIPE_VERSION = 1
GROUP_SIZE = 128  # GPTQ and AWQ
GGUF_FTYPE_Q4_K_M = 15  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_K_M, recorded as general.file_type
# room beyond the tensors: headers, the tokenizer files, the folder a forced remake replaces
DISK_MARGIN = 1.05
SHARD_BYTES = 2 * 10**9  # safetensors shards no larger than this, as hub repos split them


class ShapeError(CourseError):
    """A shaped checkpoint could not be made."""


@dataclass(frozen=True)
class Shape:
    """One model's dimensions, as its config.json on the Hub records them (`source`)."""

    name: str
    source: str
    gguf_arch: str  # llama.cpp's architecture name
    hf_architecture: str
    hf_model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    rope_scaling: dict | None = None
    real: bool = True  # False: a made-up small shape for the tests
    extra_config: dict = field(default_factory=dict)


# The one shape table. Values are the models' config.json on the Hub; the test shapes are not
# models anyone trained, only the same layout made small enough for CI.
_REAL_SHAPES = (
    Shape(
        name="mistral-7b",
        source="mistralai/Mistral-7B-v0.3, config.json",
        gguf_arch="llama",
        hf_architecture="MistralForCausalLM",
        hf_model_type="mistral",
        vocab_size=32768,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        rope_theta=1000000.0,
        rms_norm_eps=1e-05,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        attention_bias=False,
        extra_config={"sliding_window": None},
    ),
    Shape(
        name="qwen2.5-7b",
        source="Qwen/Qwen2.5-7B-Instruct, config.json",
        gguf_arch="qwen2",
        hf_architecture="Qwen2ForCausalLM",
        hf_model_type="qwen2",
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        head_dim=128,
        rope_theta=1000000.0,
        rms_norm_eps=1e-06,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        attention_bias=True,  # Qwen2 has q, k and v biases (no config key: the class has them)
        extra_config={"use_sliding_window": False, "sliding_window": 131072},
    ),
    Shape(
        name="llama-3.2-1b",
        source="meta-llama/Llama-3.2-1B, config.json",
        gguf_arch="llama",
        hf_architecture="LlamaForCausalLM",
        hf_model_type="llama",
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        rope_theta=500000.0,
        rms_norm_eps=1e-05,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
        attention_bias=False,
        rope_scaling={
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
    ),
)
# Small enough for CI: the same layout (head, biases, tied or not), other dimensions
_TEST_SIZE = dict(
    vocab_size=2048,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=2048,
    real=False,
)
_MISTRAL, _QWEN2 = _REAL_SHAPES[0], _REAL_SHAPES[1]
_TEST_SHAPES = (
    replace(
        _MISTRAL,
        name="test-llama",
        source="none: Mistral's layout made small for the tests",
        **_TEST_SIZE,
    ),
    replace(
        _QWEN2,
        name="test-qwen2",
        source="none: Qwen2.5's layout (attention biases, tied head) made small for the tests",
        tie_word_embeddings=True,
        extra_config={"use_sliding_window": False, "sliding_window": 2048},
        **_TEST_SIZE,
    ),
)
SHAPES = {shape.name: shape for shape in (*_REAL_SHAPES, *_TEST_SHAPES)}


def shape_of(name: str) -> Shape:
    if name not in SHAPES:
        raise ShapeError(f"Unknown shape {name!r}; choose one of {', '.join(SHAPES)}.")
    return SHAPES[name]


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ShapeError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")


# ---- GGUF Q4_K_M: which type each tensor gets --------------------------------------------------


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's rule (src/llama-quant.cpp) for the layers that get more bits in a _M mix."""
    return (
        i_layer < n_layers // 8
        or i_layer >= 7 * n_layers // 8
        or (i_layer - n_layers // 8) % 3 == 2
    )


def _fallback(type_name: str, ncols: int) -> str:
    """llama.cpp's tensor_type_fallback: rows not of whole 256-blocks take a 32-block type."""
    if ncols % 256 == 0:
        return type_name
    return {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}[type_name]


def q4_k_m_type(name: str, ncols: int, n_layers: int, tied: bool) -> str:
    """The type llama.cpp's quantizer gives tensor `name` (ne[0] = `ncols`) in a Q4_K_M file made
    from a float model with `n_layers` layers (src/llama-quant.cpp, llama_tensor_get_type_impl, for
    an architecture other than Falcon, without experts or an imatrix)."""
    if not name.endswith(".weight") or name.endswith("_norm.weight") or name == "rope_freqs.weight":
        return "F32"
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return "Q8_0" if ncols % 256 else "Q6_K"
    if name.startswith("blk."):
        layer = int(name.split(".")[1])
        if name.endswith((".attn_v.weight", ".ffn_down.weight")) and use_more_bits(layer, n_layers):
            return _fallback("Q6_K", ncols)
    return _fallback("Q4_K", ncols)


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    rows: int  # numpy order: (rows, ncols); GGUF's ne is (ncols, rows)
    ncols: int
    type_name: str

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.ncols,) if self.rows == 1 else (self.rows, self.ncols)


def gguf_tensors(shape: Shape) -> list[GGUFTensor]:
    """Every tensor of the shape's Q4_K_M GGUF, in the order llama.cpp's converter writes them."""
    s = shape
    q_out = s.num_attention_heads * s.head_dim
    kv_out = s.num_key_value_heads * s.head_dim
    plan: list[tuple[str, int, int]] = [("token_embd.weight", s.vocab_size, s.hidden_size)]
    if s.rope_scaling and s.rope_scaling.get("rope_type") == "llama3":
        plan.append(("rope_freqs.weight", 1, s.head_dim // 2))
    for i in range(s.num_hidden_layers):
        b = f"blk.{i}"
        plan.append((f"{b}.attn_norm.weight", 1, s.hidden_size))
        for part, rows in (("q", q_out), ("k", kv_out), ("v", kv_out)):
            plan.append((f"{b}.attn_{part}.weight", rows, s.hidden_size))
            if s.attention_bias:
                plan.append((f"{b}.attn_{part}.bias", 1, rows))
        plan += [
            (f"{b}.attn_output.weight", s.hidden_size, q_out),
            (f"{b}.ffn_norm.weight", 1, s.hidden_size),
            (f"{b}.ffn_gate.weight", s.intermediate_size, s.hidden_size),
            (f"{b}.ffn_up.weight", s.intermediate_size, s.hidden_size),
            (f"{b}.ffn_down.weight", s.hidden_size, s.intermediate_size),
        ]
    plan.append(("output_norm.weight", 1, s.hidden_size))
    if not s.tie_word_embeddings:
        plan.append(("output.weight", s.vocab_size, s.hidden_size))
    return [
        GGUFTensor(
            name=name,
            rows=rows,
            ncols=ncols,
            type_name=q4_k_m_type(name, ncols, s.num_hidden_layers, s.tie_word_embeddings),
        )
        for name, rows, ncols in plan
    ]


# ---- random blocks of a realistic spread -------------------------------------------------------

# Where each block type keeps its fp16 scale, and its fp16 min (dmin) if it has one (ggml-common.h)
SCALE_OFFSETS = {"Q4_K": (0, 2), "Q6_K": (208, None), "Q5_0": (0, None), "Q8_0": (0, None)}
SCALE_JITTER = 0.3  # log-normal spread of the block scales around the tensor's


def _gguf_types():
    import gguf

    return gguf.GGMLQuantizationType, gguf.GGML_QUANT_SIZES


def tensor_bytes(type_name: str, rows: int, ncols: int) -> int:
    types, sizes = _gguf_types()
    block, size = sizes[types[type_name]]
    return rows * (ncols // block) * size


class RandomBlocks:
    """Quantized blocks with random quants and scales set so the weights have a given spread."""

    def __init__(self, seed: int):
        self.bits = np.random.SFC64(seed)  # the fastest numpy generator: ~3 GB/s of raw bits
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._unit_std: dict[str, float] = {}

    def raw(self, n_bytes: int) -> np.ndarray:
        words = self.bits.random_raw(-(-n_bytes // 8))
        return words.view(np.uint8)[:n_bytes]

    def unit_std(self, type_name: str) -> float:
        """The spread of weights decoded from random blocks whose scales are all 1 (and whose mins
        centre them), measured once per type with gguf's dequantizer."""
        if type_name not in self._unit_std:
            import gguf

            types, sizes = _gguf_types()
            block, size = sizes[types[type_name]]
            blocks = self._scaled(self.raw(256 * size).reshape(256, size), type_name, 1.0, 0.0)
            values = gguf.quants.dequantize(blocks.reshape(1, -1), types[type_name])
            self._unit_std[type_name] = float(np.std(values))
        return self._unit_std[type_name]

    def _scaled(self, blocks: np.ndarray, type_name: str, scale: float, jitter: float):
        d_at, dmin_at = SCALE_OFFSETS[type_name]
        n = blocks.shape[0]
        d = scale * np.exp(jitter * self.rng.standard_normal(n, dtype=np.float32))
        blocks[:, d_at : d_at + 2] = d.astype(np.float16).view(np.uint8).reshape(n, 2)
        if dmin_at is not None:
            # a 6-bit min of mean 31.5 times dmin offsets the mean of 6-bit scale x 4-bit quant
            dmin = d * (7.5 * np.exp(jitter * self.rng.standard_normal(n, dtype=np.float32)))
            blocks[:, dmin_at : dmin_at + 2] = dmin.astype(np.float16).view(np.uint8).reshape(n, 2)
        return blocks

    def tensor(self, type_name: str, rows: int, ncols: int, std: float) -> np.ndarray:
        """One tensor's bytes: random blocks of `type_name` whose weights have spread `std`."""
        if type_name == "F32":
            return (1.0 + std * self.rng.standard_normal(rows * ncols, dtype=np.float32)).astype(
                np.float32
            )
        if type_name not in SCALE_OFFSETS:
            raise ShapeError(f"No random blocks for GGUF type {type_name}.")
        _, sizes = _gguf_types()
        n_bytes = tensor_bytes(type_name, rows, ncols)
        size = sizes[_gguf_types()[0][type_name]][1]
        blocks = self.raw(n_bytes).reshape(-1, size)
        return self._scaled(blocks, type_name, std / self.unit_std(type_name), SCALE_JITTER)


def weight_std(ncols: int) -> float:
    """The spread trained weights have: about 1/sqrt(fan-in), so activations keep their scale."""
    return 1.0 / math.sqrt(ncols)


def _f32_values(tensor: GGUFTensor, shape: Shape, rng: RandomBlocks) -> np.ndarray:
    if tensor.name == "rope_freqs.weight":
        return np.asarray(llama3_rope_factors(shape), dtype=np.float32)
    if tensor.name.endswith(".bias"):
        return (0.02 * rng.rng.standard_normal(tensor.ncols, dtype=np.float32)).astype(np.float32)
    return rng.tensor("F32", 1, tensor.ncols, 0.05)  # norms: about 1


def llama3_rope_factors(shape: Shape) -> list[float]:
    """rope_freqs for llama3 rope scaling, as llama.cpp's converter computes them."""
    cfg = shape.rope_scaling or {}
    factor = cfg["factor"]
    low, high = cfg["low_freq_factor"], cfg["high_freq_factor"]
    old = cfg["original_max_position_embeddings"]
    dim = shape.head_dim
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * shape.rope_theta ** (i / dim)
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


# ---- the minimal vocabulary (no real tokenizer: benchmarks feed token ids) ---------------------

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


def vocabulary(size: int) -> list[str]:
    """<unk>, <s>, </s>, the 256 byte tokens llama.cpp's SPM vocabulary needs, then t<N>."""
    tokens = list(SPECIAL_TOKENS) + [f"<0x{b:02X}>" for b in range(256)]
    return tokens + [f"t{i}" for i in range(len(tokens), size)]


def _add_gguf_vocabulary(writer, size: int) -> None:
    import gguf

    tokens = vocabulary(size)
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (size - 259)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * size)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def write_gguf(shape: Shape, path: Path, seed: int = 0) -> None:
    """The shape's Q4_K_M GGUF at `path`, one tensor in memory at a time."""
    import gguf

    s = shape
    writer = gguf.GGUFWriter(path, s.gguf_arch)
    writer.add_name(f"{s.name} (shape only, random weights)")
    writer.add_description(NOTICE)
    writer.add_context_length(s.max_position_embeddings)
    writer.add_embedding_length(s.hidden_size)
    writer.add_block_count(s.num_hidden_layers)
    writer.add_feed_forward_length(s.intermediate_size)
    writer.add_rope_dimension_count(s.head_dim)
    writer.add_head_count(s.num_attention_heads)
    writer.add_head_count_kv(s.num_key_value_heads)
    writer.add_key_length(s.head_dim)
    writer.add_value_length(s.head_dim)
    writer.add_layer_norm_rms_eps(s.rms_norm_eps)
    writer.add_rope_freq_base(s.rope_theta)
    writer.add_vocab_size(s.vocab_size)
    writer.add_file_type(GGUF_FTYPE_Q4_K_M)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_gguf_vocabulary(writer, s.vocab_size)
    tensors = gguf_tensors(s)
    types, _ = _gguf_types()
    for t in tensors:
        writer.add_tensor_info(
            t.name,
            (t.rows, t.ncols) if t.rows > 1 else (t.ncols,),
            np.dtype(np.float32),
            tensor_bytes(t.type_name, t.rows, t.ncols),
            raw_dtype=types[t.type_name],
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = RandomBlocks(seed)
    for t in tensors:
        if t.type_name == "F32":
            writer.write_tensor_data(_f32_values(t, s, rng))
        else:
            writer.write_tensor_data(rng.tensor(t.type_name, t.rows, t.ncols, weight_std(t.ncols)))
    writer.close()


# The bytes of each block type that scale it (fp16 d and dmin, and sub-block scales); the rest
# are its quants (ggml-common.h)
SCALE_BYTES = {"Q4_K": (0, 16), "Q6_K": (192, 210), "Q5_0": (0, 2), "Q8_0": (0, 2)}
KEEPABLE = ("f32", "scales", "quants")


def write_gguf_like(reference, path: Path, seed: int = 0, keep: tuple[str, ...] = ()) -> None:
    """A GGUF with `reference`'s metadata (tokenizer included), tensor names, shapes and types, and
    random weights of the same spread rule as `write_gguf`; `keep` takes some parts from the
    reference instead: its "f32" tensors (norms), its blocks' "scales", or their "quants"."""
    import gguf

    reader = gguf.GGUFReader(reference)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(path, arch)
    for key, fld in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = fld.types[0]
        sub = fld.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, fld.contents(), vtype, sub)
    for t in reader.tensors:
        writer.add_tensor_info(
            t.name,
            tuple(int(n) for n in reversed(t.shape.tolist())),
            np.dtype(np.float32),
            int(t.n_bytes),
            raw_dtype=t.tensor_type,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = RandomBlocks(seed)
    for t in reader.tensors:
        ne = [int(n) for n in t.shape.tolist()]
        ncols, rows = ne[0], int(np.prod(ne[1:])) if len(ne) > 1 else 1
        kind = t.tensor_type.name
        if kind == "F32":
            data = np.array(t.data) if "f32" in keep else rng.tensor("F32", rows, ncols, 0.05)
        else:
            data = rng.tensor(kind, rows, ncols, weight_std(ncols))
            real = np.asarray(t.data).reshape(data.shape)
            start, end = SCALE_BYTES[kind]
            if "scales" in keep:
                data[:, start:end] = real[:, start:end]
            if "quants" in keep:
                data[:, :start] = real[:, :start]
                data[:, end:] = real[:, end:]
        writer.write_tensor_data(data.reshape(-1))
    writer.close()


# ---- GPTQ and AWQ checkpoints -----------------------------------------------------------------

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# GPTQ's v1 checkpoint format stores each symmetric zero point (8) minus one: nibbles of 7
GPTQ_SYM_ZEROS = 0x77777777
# the spread of (q - zero) over random 4-bit quants and zero points around 8
INT4_STD = 4.6


def linear_shapes(shape: Shape) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each quantized Linear of one layer."""
    s = shape
    q_out = s.num_attention_heads * s.head_dim
    kv_out = s.num_key_value_heads * s.head_dim
    return {
        "q_proj": (s.hidden_size, q_out),
        "k_proj": (s.hidden_size, kv_out),
        "v_proj": (s.hidden_size, kv_out),
        "o_proj": (q_out, s.hidden_size),
        "gate_proj": (s.hidden_size, s.intermediate_size),
        "up_proj": (s.hidden_size, s.intermediate_size),
        "down_proj": (s.intermediate_size, s.hidden_size),
    }


def _module_path(name: str) -> str:
    return ("self_attn." if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp.") + name


def _int4_words(rng: RandomBlocks, n: int) -> np.ndarray:
    return rng.raw(4 * n).view(np.int32)


def _scales(rng: RandomBlocks, groups: int, out: int, in_features: int) -> np.ndarray:
    base = weight_std(in_features) / INT4_STD
    jitter = np.exp(SCALE_JITTER * rng.rng.standard_normal((groups, out), dtype=np.float32))
    return (base * jitter).astype(np.float16)


def quantized_linear(fmt: str, in_features: int, out_features: int, rng: RandomBlocks) -> dict:
    """One Linear's packed tensors, named as GPTQ (checkpoint_format gptq) or AWQ GEMM store
    them, with random 4-bit values."""
    groups = in_features // GROUP_SIZE
    scales = _scales(rng, groups, out_features, in_features)
    if fmt == "gptq":
        return {
            "qweight": _int4_words(rng, in_features // 8 * out_features).reshape(
                in_features // 8, out_features
            ),
            "qzeros": np.full(
                (groups, out_features // 8), np.uint32(GPTQ_SYM_ZEROS).view(np.int32)
            ),
            "scales": scales,
            "g_idx": (np.arange(in_features, dtype=np.int32) // GROUP_SIZE).astype(np.int32),
        }
    return {
        "qweight": _int4_words(rng, in_features * out_features // 8).reshape(
            in_features, out_features // 8
        ),
        "qzeros": _int4_words(rng, groups * out_features // 8).reshape(groups, out_features // 8),
        "scales": scales,
    }


def hf_tensor_groups(shape: Shape, fmt: str, rng: RandomBlocks):
    """The checkpoint's tensors, a layer at a time (name -> numpy array), in the hub's naming."""
    s = shape

    def dense(rows: int, cols: int) -> np.ndarray:
        values = rng.rng.standard_normal((rows, cols), dtype=np.float32)
        return (values * weight_std(cols)).astype(np.float16)

    def norm() -> np.ndarray:
        return rng.tensor("F32", 1, s.hidden_size, 0.05).astype(np.float16)

    yield {"model.embed_tokens.weight": dense(s.vocab_size, s.hidden_size)}
    for i in range(s.num_hidden_layers):
        layer = {
            f"model.layers.{i}.input_layernorm.weight": norm(),
            f"model.layers.{i}.post_attention_layernorm.weight": norm(),
        }
        for name, (k, n) in linear_shapes(s).items():
            prefix = f"model.layers.{i}.{_module_path(name)}"
            for part, value in quantized_linear(fmt, k, n, rng).items():
                layer[f"{prefix}.{part}"] = value
            if s.attention_bias and name in ("q_proj", "k_proj", "v_proj"):
                bias = 0.02 * rng.rng.standard_normal(n, dtype=np.float32)
                layer[f"{prefix}.bias"] = bias.astype(np.float16)
        yield layer
    yield {"model.norm.weight": norm()}
    if not s.tie_word_embeddings:
        yield {"lm_head.weight": dense(s.vocab_size, s.hidden_size)}


def quantization_config(fmt: str) -> dict:
    """What hub repos of these formats record (GPTQModel's keys; AutoAWQ's for AWQ)."""
    if fmt == "gptq":
        return {
            "bits": 4,
            "group_size": GROUP_SIZE,
            "desc_act": False,
            "sym": True,
            "lm_head": False,
            "damp_percent": 0.05,
            "true_sequential": True,
            "static_groups": False,
            "quant_method": "gptq",
            "checkpoint_format": "gptq",
            "pack_dtype": "int32",
        }
    return {
        "bits": 4,
        "group_size": GROUP_SIZE,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": None,
        "quant_method": "awq",
    }


def hf_config(shape: Shape, fmt: str) -> dict:
    s = shape
    config = {
        "architectures": [s.hf_architecture],
        "model_type": s.hf_model_type,
        "vocab_size": s.vocab_size,
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_hidden_layers": s.num_hidden_layers,
        "num_attention_heads": s.num_attention_heads,
        "num_key_value_heads": s.num_key_value_heads,
        "head_dim": s.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": s.rms_norm_eps,
        "rope_theta": s.rope_theta,
        "max_position_embeddings": s.max_position_embeddings,
        "tie_word_embeddings": s.tie_word_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float16",
        **s.extra_config,
        "quantization_config": quantization_config(fmt),
    }
    if s.hf_model_type == "llama":
        config["attention_bias"] = s.attention_bias
        config["mlp_bias"] = False
    if s.rope_scaling:
        config["rope_scaling"] = s.rope_scaling
    return config


def write_tokenizer(folder: Path, size: int, max_length: int) -> None:
    """A word-level tokenizer over `vocabulary(size)`: what AutoTokenizer needs to load the folder
    (the benchmarks feed token ids; its text is no language)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(vocabulary(size))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "unk_token": "<unk>",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "model_max_length": max_length,
            },
            indent=2,
        )
        + "\n"
    )


def write_hf(shape: Shape, fmt: str, folder: Path, seed: int = 0) -> None:
    """The shape's GPTQ or AWQ checkpoint in `folder`: config, tokenizer, safetensors shards (one
    shard in memory at a time)."""
    from safetensors.numpy import save_file

    rng = RandomBlocks(seed)
    written: list[tuple[str, list[str], int]] = []  # (file, tensor names, bytes)
    shard: dict = {}

    def flush() -> None:
        name = f"part-{len(written):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        written.append((name, list(shard), sum(v.nbytes for v in shard.values())))
        shard.clear()

    for group in hf_tensor_groups(shape, fmt, rng):
        group_bytes = sum(v.nbytes for v in group.values())
        if shard and sum(v.nbytes for v in shard.values()) + group_bytes > SHARD_BYTES:
            flush()
        shard.update(group)
    flush()
    if len(written) == 1:
        (folder / written[0][0]).rename(folder / "model.safetensors")
    else:
        weight_map = {}
        for i, (name, keys, _) in enumerate(written):
            final_name = f"model-{i + 1:05d}-of-{len(written):05d}.safetensors"
            (folder / name).rename(folder / final_name)
            weight_map.update({key: final_name for key in keys})
        index = {"metadata": {"total_size": sum(n for *_, n in written)}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(hf_config(shape, fmt), indent=2) + "\n")
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "do_sample": False}, indent=2) + "\n"
    )
    write_tokenizer(folder, shape.vocab_size, shape.max_position_embeddings)


# ---- sizes, folders, stamps --------------------------------------------------------------------


def gguf_filename(shape: Shape) -> str:
    return f"{shape.name}-Q4_K_M.gguf"


def expected_bytes(shape: Shape, fmt: str) -> int:
    """What making the checkpoint writes: its tensors, plus the vocabulary."""
    _check_format(fmt)
    vocab_bytes = shape.vocab_size * 32
    if fmt == "gguf":
        tensors = sum(tensor_bytes(t.type_name, t.rows, t.ncols) for t in gguf_tensors(shape))
        return tensors + vocab_bytes
    s = shape
    per_layer = 2 * s.hidden_size * 2
    for k, n in linear_shapes(s).values():
        groups = k // GROUP_SIZE
        per_layer += k * n // 2 + groups * n * 2 + groups * n // 2
        per_layer += 4 * k if fmt == "gptq" else 0
    biases = 2 * 2 * (s.num_attention_heads + 2 * s.num_key_value_heads) * s.head_dim
    per_layer += biases if s.attention_bias else 0
    heads = 1 if s.tie_word_embeddings else 2
    return s.num_hidden_layers * per_layer + heads * s.vocab_size * s.hidden_size * 2 + vocab_bytes


def shapes_dir() -> Path:
    return cache_dir() / "shapes"


def made_dir(shape_name: str, fmt: str) -> Path:
    _check_format(fmt)
    return shapes_dir() / shape_of(shape_name).name / fmt


def made_path(shape_name: str, fmt: str, base: Path | None = None) -> Path:
    """What a loader takes: the .gguf file, or the checkpoint folder."""
    folder = (base / shape_name / fmt) if base else made_dir(shape_name, fmt)
    return folder / gguf_filename(shape_of(shape_name)) if fmt == "gguf" else folder


def recipe(shape: Shape, fmt: str, seed: int) -> dict:
    return {
        "shape": asdict(shape),
        "format": fmt,
        "seed": seed,
        "recipe_version": RECIPE_VERSION,
        "gguf": installed_version("gguf"),
        "safetensors": installed_version("safetensors"),
        "numpy": installed_version("numpy"),
        "notice": NOTICE,
    }


def is_made(folder: Path, shape: Shape, fmt: str, seed: int = 0) -> bool:
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("recipe") == json.loads(json.dumps(recipe(shape, fmt, seed)))


def readme(shape: Shape, fmt: str) -> str:
    return (
        f"# {shape.name}, {fmt}: the shape of a real model, random weights\n\n"
        f"{NOTICE}\n\n"
        f"Shape from: {shape.source}. Made by `python -m course.shapes make --shape {shape.name} "
        f"--format {fmt}`.\n"
        "The tokenizer is a made-up vocabulary of the model's size (t0, t1, ...): feed token ids.\n"
    )


def make(
    shape_name: str,
    fmt: str,
    base: Path | None = None,
    seed: int = 0,
    force: bool = False,
    free_bytes: int | None = None,
    quiet: bool = False,
) -> Path:
    """Make the checkpoint (unless a complete one is there) and return what a loader takes."""
    shape = shape_of(shape_name)
    _check_format(fmt)
    base = Path(base) if base else shapes_dir()
    final = base / shape.name / fmt
    if not force and is_made(final, shape, fmt, seed):
        if not quiet:
            print(f"{final}: already made. {NOTICE}")
        return made_path(shape.name, fmt, base)
    need = int(expected_bytes(shape, fmt) * DISK_MARGIN)
    check_free_disk(
        need,
        f"Making the {shape.name} {fmt} checkpoint",
        folder=base,
        free_bytes=free_bytes,
        error=ShapeError,
    )
    with build_lock(base):
        if not force and is_made(final, shape, fmt, seed):  # made while we waited for the lock
            return made_path(shape.name, fmt, base)
        _write_atomically(shape, fmt, final, seed, need, quiet)
    return made_path(shape.name, fmt, base)


def _write_atomically(shape: Shape, fmt: str, final: Path, seed: int, need: int, quiet: bool):
    """Write into <fmt>.partial-XXXX beside `final`, and rename it into place when complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for left_over in final.parent.glob(f"{fmt}.partial-*"):
        shutil.rmtree(left_over, ignore_errors=True)
    if not quiet:
        print(f"Making {final} (about {human_size(need)}). {NOTICE}", flush=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{fmt}.partial-", dir=final.parent))
    try:
        if fmt == "gguf":
            write_gguf(shape, partial / gguf_filename(shape), seed=seed)
        else:
            write_hf(shape, fmt, partial, seed=seed)
        (partial / "README.md").write_text(readme(shape, fmt))
        stamp = {"recipe": recipe(shape, fmt, seed), "bytes": _folder_bytes(partial)}
        (partial / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def describe(shape: Shape) -> str:
    s = shape
    sizes = ", ".join(f"{fmt} {human_size(expected_bytes(s, fmt))}" for fmt in FORMATS)
    return (
        f"{s.name:13} {s.gguf_arch:6} vocab {s.vocab_size:>6}, {s.num_hidden_layers:2} layers, "
        f"hidden {s.hidden_size}, ffn {s.intermediate_size}, heads {s.num_attention_heads}/"
        f"{s.num_key_value_heads} kv; {sizes}  ({s.source})"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course.shapes",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the shapes, their sources and sizes")
    for name in ("make", "path"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--shape", required=True, choices=list(SHAPES))
        cmd.add_argument("--format", required=True, choices=list(FORMATS))
        if name == "make":
            cmd.add_argument("--force", action="store_true", help="make it again")
            cmd.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print(NOTICE)
            for shape in SHAPES.values():
                print(describe(shape))
        elif args.command == "path":
            print(made_path(args.shape, args.format))
        else:
            print(make(args.shape, args.format, seed=args.seed, force=args.force))
    except CourseError as err:
        print(f"course.shapes: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
