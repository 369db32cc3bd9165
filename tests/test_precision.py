"""helpers.precision: the compute-dtype rule, and its detection on both kinds of CPU.

The detection is tested natively and under the AVX2 emulation (ATEN_CPU_CAPABILITY=avx2,
ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2), which `tools/cpu_dtype_bench.py --both`
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
    """Natively: native bf16 exactly when the CPU lists avx512_bf16/amx_bf16 (x86) and oneDNN agrees."""
    import torch

    result = _probe({})
    flags = env.cpu_flags()
    if torch.backends.cpu.get_cpu_capability().startswith("AVX"):  # x86
        assert result["native"] == bool(flags & {"avx512_bf16", "amx_bf16"}), result
    assert result["batch"] == ("bfloat16" if result["native"] else "float32")
    assert result["decode"] == "bfloat16"


def test_detection_under_the_avx2_emulation_says_no_native_bf16():
    """The same machine made to compute like an AVX2-only CPU: fp32 for many-row work, bf16 for decoding."""
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
    with pytest.raises(ValueError, match="'batch'.*'decode'"):
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
def test_perplexity_products_in_fp32_only_where_bf16_is_emulated(tmp_path, monkeypatch, native):
    """quality.transformers_logits: on a CPU without native bf16, every bf16 nn.Linear multiplies in fp32,
    the output layer in chunks with fp32 logits, the others rounding back to bf16 (the model stays bf16);
    with native bf16 nothing changes; and the model is left as it was."""
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
        with (
            torch.inference_mode(),
            quality._products_in_fp32(model, rows=300),
        ):  # 4 chunks, one ragged
            chunked = model(torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(chunked, logits, rtol=1e-5, atol=1e-5)
    assert not any("forward" in vars(m) for m in model.modules())  # the patches are gone
    np.testing.assert_allclose(quality.transformers_logits(model, ids), logits)  # and repeatable
