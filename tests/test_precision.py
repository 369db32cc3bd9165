"""helpers.precision: the compute-dtype rule, and its detection on both kinds of CPU.

The detection is tested natively and under the AVX2 emulation (ATEN_CPU_CAPABILITY=avx2,
ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2), which `python -m bench.cpu_dtype --both`
shows to reproduce an AVX2-only CPU's slow bf16 products. No timings are asserted here.
"""

import json
import os
import subprocess
import sys

import pytest

from helpers import env, loading, memory, precision

EMULATE_AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
PROBE = (
    "import json; from helpers import precision; native, found = precision.cpu_bf16(); "
    "print(json.dumps({'native': native, 'found': found, "
    "'batch': precision.compute_dtype('cpu', 'batch').dtype, "
    "'decode': precision.compute_dtype('cpu', 'decode').dtype}))"
)


def _probe(extra_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in EMULATE_AVX2}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_detection_on_this_cpu_follows_its_flags():
    """Natively: native bf16 exactly when the CPU lists avx512_bf16/amx_bf16 (x86) and oneDNN
    agrees.
    """
    import torch

    result = _probe({})
    flags = env.cpu_flags()
    if torch.backends.cpu.get_cpu_capability().startswith("AVX"):  # x86
        assert result["native"] == bool(flags & {"avx512_bf16", "amx_bf16"}), result
    assert result["batch"] == ("bfloat16" if result["native"] else "float32")
    assert result["decode"] == "bfloat16"


def test_detection_under_the_avx2_emulation_says_no_native_bf16():
    """The same machine made to compute like an AVX2-only CPU: fp32 for many-row work, bf16 for
    decoding.
    """
    result = _probe(EMULATE_AVX2)
    assert result["native"] is False
    assert "AVX2" in result["found"]
    assert (result["batch"], result["decode"]) == ("float32", "bfloat16")


@pytest.mark.parametrize(
    "native, work, expected",
    [
        (True, "batch", "bfloat16"),
        (True, "decode", "bfloat16"),
        (False, "batch", "float32"),
        (False, "decode", "bfloat16"),
    ],
)
def test_cpu_rule(monkeypatch, native, work, expected):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (native, "test"))
    choice = precision.compute_dtype("cpu", work)
    assert choice.dtype == expected
    assert choice.reason and "test" in choice.reason  # the one-line reason names what was found


@pytest.mark.parametrize(
    "capability, expected", [((7, 5), "float16"), ((8, 0), "bfloat16"), ((9, 0), "bfloat16")]
)
def test_cuda_rule_fp16_before_ampere(monkeypatch, capability, expected):
    """A T4 (sm_75) gets fp16: no fast bf16 there, and GPTQ Marlin needs fp16."""
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    choice = precision.compute_dtype("cuda", "decode")
    assert choice.dtype == expected
    assert f"sm_{capability[0]}{capability[1]}" in choice.reason


def test_unknown_work_is_a_clear_error():
    with pytest.raises(ValueError, match="'batch'.*'decode'.*'calibration'"):
        precision.compute_dtype("cpu", "training")


def test_resolve_dtype(tmp_path, monkeypatch):
    """auto: the rule (4-bit CPU kernels: bf16); None: the checkpoint's own; a name: as asked."""
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (False, "test"))
    (tmp_path / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    assert memory.resolve_dtype(tmp_path, "hf", "cpu", "auto", "batch").dtype == "float32"
    assert memory.resolve_dtype(tmp_path, "hf", "cpu", "auto", "decode").dtype == "bfloat16"
    gptq = memory.resolve_dtype(tmp_path, "gptq", "cpu", "auto", "batch")
    assert gptq.dtype == "bfloat16" and "4-bit" in gptq.reason
    assert memory.resolve_dtype(tmp_path, "hf", "cpu", None).dtype == "bfloat16"
    assert memory.resolve_dtype(tmp_path, "hf", "cpu", "fp32").reason == "asked for"


def test_load_model_reports_its_dtype_and_why(course_cache):
    from course import models as course_models

    lm = loading.load_model(course_models.model_path("hf"), device="cpu", work="batch")
    assert lm.dtype == precision.compute_dtype("cpu", "batch").dtype
    assert lm.dtype_reason and lm.dtype_reason in repr(lm)


@pytest.mark.parametrize("native", [False, True])
def test_quantizing_computes_in_float32_on_every_cpu(monkeypatch, native):
    """The rule's answer for calibration, which the course build takes as its BUILD_DTYPE."""
    from course import models as course_models

    monkeypatch.setattr(precision, "cpu_bf16", lambda: (native, "faked"))
    assert precision.compute_dtype("cpu", "calibration").dtype == "float32"
    assert course_models.BUILD_DTYPE == "float32"


def test_products_in_fp32_leaves_fp32_layers_and_few_rows_alone():
    import torch

    linear = torch.nn.Linear(64, 8).to(torch.bfloat16)
    few = torch.randn(4, 64, dtype=torch.bfloat16)
    with precision.products_in_fp32(min_rows=16):
        assert torch.equal(linear(few), torch.nn.functional.linear(few, linear.weight, linear.bias))
        full = torch.nn.Linear(64, 8)
        x = torch.randn(32, 64)
        assert torch.equal(full(x), torch.nn.functional.linear(x, full.weight, full.bias))


@pytest.mark.parametrize("native", [False, True])
def test_perplexity_products_in_fp32_only_where_bf16_is_emulated(tmp_path, monkeypatch, native):
    """quality.transformers_logits: on a CPU without native bf16, every bf16 nn.Linear multiplies in
    fp32, the output layer in chunks with fp32 logits, the others rounding back to bf16 (the model
    stays bf16); with native bf16 nothing changes; and the model is left as it was."""
    import numpy as np
    import torch

    from helpers import quality

    from .conftest import tiny_gemma3

    model = tiny_gemma3(tmp_path, vocab_size=1000).eval()
    monkeypatch.setattr(precision, "cpu_bf16", lambda: (native, "faked"))
    ids = list(range(2, 40))
    head, q_proj = model.get_output_embeddings(), model.model.layers[0].self_attn.q_proj
    seen = {}
    q_proj.register_forward_hook(lambda module, args, out: seen.update(q=(args[0], out)))
    head.register_forward_hook(lambda module, args, out: seen.update(head=(args[0], out)))
    logits = quality.transformers_logits(model, ids)
    (x, q_out), (hidden, head_out) = seen["q"], seen["head"]
    assert q_out.dtype == torch.bfloat16  # between layers the model computes in bf16 either way
    fp32_logits = (hidden[0].float() @ head.weight.detach().float().T).numpy()
    if native:  # left alone: bf16 logits, which differ from fp32 ones by rounding
        assert head_out.dtype == torch.bfloat16
        assert not np.array_equal(logits, fp32_logits)
    else:
        assert torch.equal(
            q_out,
            torch.nn.functional.linear(x.float(), q_proj.weight.detach().float()).to(
                torch.bfloat16
            ),
        )
        assert head_out.dtype == torch.float32
        np.testing.assert_allclose(logits, fp32_logits, rtol=1e-5, atol=1e-5)
        # 4 chunks, one ragged
        with torch.inference_mode(), precision.products_in_fp32(head=head, rows=300):
            chunked = model(torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(chunked, logits, rtol=1e-5, atol=1e-5)
    linear_forward = torch.nn.Linear.forward
    assert linear_forward.__qualname__ == "Linear.forward"  # the patch is gone
    assert not any("forward" in vars(m) for m in model.modules())
    np.testing.assert_allclose(quality.transformers_logits(model, ids), logits)  # and repeatable


# ---- float16 overflow (issue 33) ------------------------------------------------------------
# Gemma computes NaN in float16, the rule and a load guard know it

GEMMA = "gemma3_text"  # the course models' model_type


def _fake_gpu(monkeypatch, capability):
    """torch.cuda.get_device_capability answers `capability`, as a GPU of that kind would."""
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


@pytest.mark.parametrize(
    "model_type, capability, expected",
    [
        (GEMMA, (7, 5), "float32"),  # a T4: fp16 overflows, bf16 is emulated
        ("gemma2", (7, 0), "float32"),
        (GEMMA, (8, 0), "bfloat16"),
        (GEMMA, (9, 0), "bfloat16"),
        ("llama", (7, 5), "float16"),  # safe in fp16: still the T4's fast half type
        (None, (7, 5), "float16"),
    ],
)
def test_cuda_rule_knows_which_models_overflow_float16(
    monkeypatch, model_type, capability, expected
):
    _fake_gpu(monkeypatch, capability)
    choice = precision.compute_dtype("cuda", "decode", model_type)
    assert choice.dtype == expected
    if expected == "float32":
        assert f"{model_type} overflows" in choice.reason


@pytest.mark.parametrize(
    "model_type, mac_runs_bf16, expected",
    [
        (GEMMA, True, "bfloat16"),
        (GEMMA, False, "float32"),
        ("llama", True, "float16"),
        ("llama", False, "float16"),
    ],
)
def test_mps_rule_knows_which_models_overflow_float16(
    monkeypatch, model_type, mac_runs_bf16, expected
):
    monkeypatch.setattr(precision, "mps_bf16", lambda: mac_runs_bf16)
    choice = precision.compute_dtype("mps", "decode", model_type)
    assert choice.dtype == expected
    assert ("overflows fp16" in choice.reason) == (model_type == GEMMA)


def test_a_measured_overflow_overrides_the_architecture_list(monkeypatch):
    _fake_gpu(monkeypatch, (7, 5))
    assert precision.compute_dtype("cuda", "decode", "llama", overflows=True).dtype == "float32"
    assert precision.compute_dtype("cuda", "decode", GEMMA, overflows=False).dtype == "float16"


def test_overflows_float16_names_the_gemma_family():
    for model_type in ("gemma", "gemma2", "gemma3", "gemma3_text", "Gemma3ForCausalLM"):
        assert precision.overflows_float16(model_type), model_type
    for model_type in ("llama", "mistral", "qwen2", "", None):
        assert not precision.overflows_float16(model_type), model_type


@pytest.mark.parametrize("fmt", ["hf", "gptq", "awq"])
def test_resolve_dtype_on_a_t4_reads_the_architecture(tmp_path, monkeypatch, fmt):
    """config.json's model_type decides: Gemma on a T4 gets fp32, or bf16 for the 4-bit formats
    (no GPTQModel GPU kernel takes fp32); a Llama keeps fp16."""
    _fake_gpu(monkeypatch, (7, 5))
    gemma = tmp_path / "gemma"
    llama = tmp_path / "llama"
    gemma.mkdir()
    llama.mkdir()
    (gemma / "config.json").write_text(json.dumps({"model_type": GEMMA, "dtype": "float16"}))
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "float16"}))
    choice = memory.resolve_dtype(gemma, fmt, "cuda", "auto")
    assert choice.dtype == ("float32" if fmt == "hf" else "bfloat16")
    assert "overflows" in choice.reason
    if fmt != "hf":
        assert "PyTorch kernel" in choice.reason
    assert memory.resolve_dtype(llama, fmt, "cuda", "auto").dtype == "float16"


def test_checkpoint_model_type_reads_the_text_config_too(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"model_type": GEMMA}}))
    assert memory.checkpoint_model_type(tmp_path) == GEMMA
    assert memory.checkpoint_model_type({"model_type": "llama"}) == "llama"
    assert memory.checkpoint_model_type(tmp_path / "missing") is None


@pytest.mark.parametrize(
    "fmt, device, capability, dtype, overflows, backend",
    [
        ("gptq", "cuda", (7, 5), "bfloat16", True, "gptq_torch"),  # Marlin needs fp16 on sm_75
        ("awq", "cuda", (7, 5), "bfloat16", True, "torch_awq"),
        ("awq", "cuda", (9, 0), "bfloat16", True, "torch_awq"),  # Transformers makes AWQ fp16
        ("gptq", "cuda", (8, 0), "bfloat16", True, None),  # Marlin computes bf16 from Ampere on
        ("gptq", "cuda", (7, 5), "float16", False, None),  # a Llama: GPTQModel's own pick
        ("awq", "cuda", (9, 0), "bfloat16", False, None),
        ("hf", "cuda", (7, 5), "float32", True, None),
        ("gptq", "cpu", None, "bfloat16", True, None),
    ],
)
def test_pick_backend_only_where_the_fast_kernels_compute_in_fp16(
    monkeypatch, fmt, device, capability, dtype, overflows, backend
):
    from helpers import kernels

    if capability:
        _fake_gpu(monkeypatch, capability)
    picked, reason = kernels.pick_backend(fmt, device, dtype, overflows)
    assert picked == backend
    assert bool(reason) == bool(backend)
    if backend:
        assert f"sm_{capability[0]}{capability[1]}" in reason and "overflows" in reason


def test_a_chosen_torch_kernel_is_expected_not_a_trap():
    """The kernel report: TorchLinear on a GPU is the SLOW KERNEL trap, unless it was chosen."""
    from helpers import kernels

    layers = [("TorchLinear", "cuda:0")] * 3
    trap = kernels.classify_kernels(layers)
    assert trap["slow_fallback"] and trap["warning"].startswith("SLOW KERNEL")
    reason = "GPTQModel's PyTorch kernel, chosen: on sm_75 ..."
    chosen = kernels.classify_kernels(layers, chosen=reason)
    assert chosen["warning"] is None
    assert chosen["slow_fallback"] is False
    assert chosen["expected"] == reason


def test_loading_the_course_model_in_float16_is_a_clear_error(course_cache):
    """The guard: a float16 load is checked by one forward pass; Gemma's NaN becomes an error."""
    from course import models as course_models
    from helpers.errors import Float16OverflowError

    with pytest.raises(Float16OverflowError, match=r'overflows float16.*dtype="bfloat16"'):
        loading.load_model(course_models.model_path("hf"), device="cpu", dtype="float16")


def test_auto_reloads_a_model_that_measures_an_overflow(course_cache, monkeypatch):
    """A rule that chose float16 for a model it does not know to overflow: the guard measures the
    NaN, and "auto" loads again in what the device runs instead, saying why."""
    from course import models as course_models

    real_rule = memory.compute_dtype

    def rule_that_trusts_float16(device, work, model_type=None, overflows=None):
        if overflows:
            return real_rule(device, work, model_type, overflows)
        return precision.DtypeChoice("float16", "a rule that does not know Gemma")

    monkeypatch.setattr(memory, "compute_dtype", rule_that_trusts_float16)
    lm = loading.load_model(course_models.model_path("hf"), device="cpu")
    assert lm.dtype == precision.compute_dtype("cpu", "decode").dtype
    assert "measured: a float16 test forward pass gave inf or NaN" in lm.dtype_reason
    assert not loading.overflows_in_float16(lm)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, course_cache):
    """A random Llama with the course tokenizer: an architecture that computes fine in float16."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from course import models as course_models

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=262144,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).to(torch.float16).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(course_models.model_dir("hf") / name, folder / name)
    return folder


def test_a_model_safe_in_float16_keeps_float16(tiny_llama, monkeypatch):
    """On a T4 and on a Mac a Llama still gets float16, and the guard lets its float16 load pass."""
    _fake_gpu(monkeypatch, (7, 5))
    assert memory.resolve_dtype(tiny_llama, "hf", "cuda", "auto").dtype == "float16"
    monkeypatch.setattr(precision, "mps_bf16", lambda: True)
    assert memory.resolve_dtype(tiny_llama, "hf", "mps", "auto").dtype == "float16"
    lm = loading.load_model(tiny_llama, device="cpu", dtype="float16")
    assert lm.dtype == "float16"
    assert not loading.overflows_in_float16(lm)


# Each device kind the rule knows, faked where this machine has no such device:
# (name, device for the rule, GPU capability, Mac runs bf16, CPU has native bf16)
DEVICE_KINDS = [
    ("cpu-native-bf16", "cpu", None, None, True),
    ("cpu-avx2", "cpu", None, None, False),
    ("cuda-sm75", "cuda", (7, 5), None, None),
    ("cuda-sm86", "cuda", (8, 6), None, None),
    ("mps-bf16", "mps", None, True, None),
    ("mps-no-bf16", "mps", None, False, None),
]
_continuations: dict = {}  # (format, dtype) -> (finite logits?, continuation), one load each


def _continuation(path, fmt: str, dtype: str) -> tuple[bool, str]:
    """Load on this CPU in `dtype`; finite logits for a short text, and 12 greedy tokens."""
    import torch

    key = (fmt, dtype)
    if key not in _continuations:
        lm = loading.load_model(path, device="cpu", dtype=dtype)
        assert lm.dtype == dtype
        ids = lm.tokenizer(loading.FLOAT16_CHECK_TEXT, return_tensors="pt").input_ids
        with torch.inference_mode():
            logits = lm.model(ids).logits
            out = lm.model.generate(ids, max_new_tokens=12, do_sample=False)
        text = lm.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        _continuations[key] = (bool(torch.isfinite(logits).all()), text)
    return _continuations[key]


@pytest.mark.parametrize("fmt", ["hf", "gptq", "awq"])
@pytest.mark.parametrize("kind", DEVICE_KINDS, ids=[k[0] for k in DEVICE_KINDS])
def test_every_course_model_computes_in_the_rules_dtype_on_every_device(
    course_cache, monkeypatch, kind, fmt
):
    """load_model(dtype="auto")'s choice for each device kind, computed on this CPU: finite logits
    and a real continuation (words, not padding) for every Transformers course model."""
    from course import models as course_models

    name, device, capability, mac_bf16, cpu_native = kind
    if capability:
        _fake_gpu(monkeypatch, capability)
    if mac_bf16 is not None:
        monkeypatch.setattr(precision, "mps_bf16", lambda: mac_bf16)
    if cpu_native is not None:
        monkeypatch.setattr(precision, "cpu_bf16", lambda: (cpu_native, "faked"))
    path = course_models.model_path(fmt)
    dtype = memory.resolve_dtype(path, fmt, device, "auto").dtype
    assert dtype != "float16", f"{name}: the rule picked float16 for Gemma"
    monkeypatch.undo()  # load with this machine's own CPU detection
    finite, text = _continuation(path, fmt, dtype)
    assert finite, f"{name}: {fmt} in {dtype} gave inf/NaN logits"
    assert sum(ch.isalpha() for ch in text) >= 8, f"{name}: {fmt} in {dtype} wrote {text!r}"


@pytest.mark.parametrize("fmt", ["gguf", "gguf-from-hf"])
def test_the_gguf_course_models_continue_on_llama_cpp(course_cache, fmt):
    """llama.cpp chooses its own compute types on every device: the GGUFs are unaffected by the
    rule."""
    from course import models as course_models
    from helpers import generation

    lm = loading.load_model(course_models.model_path(fmt), device="cpu", n_ctx=256)
    text = generation.generate(lm, loading.FLOAT16_CHECK_TEXT, max_new_tokens=12)
    assert sum(ch.isalpha() for ch in text) >= 8, text


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_the_torch_backend_loads_by_name(course_cache, fmt):
    """The load path pick_backend drives on a T4, run on this CPU: the checkpoint's quantization
    settings with GPTQModel's PyTorch kernel named, its reason kept for the kernel report."""
    import torch

    from course import models as course_models
    from helpers import kernels

    path = course_models.model_path(fmt)
    reason = "chosen for this test"
    lm = loading._load_transformers(
        path, fmt, "cpu", "bfloat16", 2, False, kernels.TORCH_BACKEND[fmt], reason
    )
    report = kernels.kernel_report(lm)
    assert set(report["quantized_linear"]) == {"TorchLinear" if fmt == "gptq" else "AwqTorchLinear"}
    assert report["expected"] == reason
    ids = lm.tokenizer(loading.FLOAT16_CHECK_TEXT, return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.isfinite(lm.model(ids).logits).all()
