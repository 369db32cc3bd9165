"""Make GPTQModel 7.6.0's AWQ correct for Gemma 3 (used while building the course AWQ model).

As shipped, AWQ on Gemma 3 produces garbage: held-out perplexity ~196,000, where the same run with
these fixes gives ~30 and the bf16 model ~24 (measured while building this course; the build
stamps of `course/models.py` hold the current figures).
Three things go wrong; `gemma3_awq_fixes()` patches each one for the duration of a build:

1. Layer map. GPTQModel's Gemma 3 definition reuses Llama's, so AWQ folds the gate/up
   scales into `post_attention_layernorm`. In Gemma 3 that norm scales the attention
   *output*; the MLP is fed by `pre_feedforward_layernorm`. We use a map in which each
   group's previous op is its real input: input_layernorm -> q/k/v,
   pre_feedforward_layernorm -> gate/up, up_proj -> down_proj (v_proj -> o_proj is
   skipped by GPTQModel itself because the shapes differ under GQA).
2. Norm folding. Gemma3RMSNorm computes x_norm * (1 + w), but `scale_ln_fcs` only knows
   that for GemmaRMSNorm/Gemma2RMSNorm and falls back to `w /= s`. The right fold is
   w' = (1 + w) / s - 1. In bf16 that alone is not enough: AWQ scales are only defined up
   to a common factor, and GPTQModel normalises them so that (1 + w)/s is often ~0.02,
   where bf16 keeps no useful digits of (1 + w'). We pick the common factor so every
   folded gain is >= 1, and multiply the next linears by the scale that was actually
   stored (exact, rounding included).
3. Rotary embeddings. Gemma 3 has one rotary embedding per layer type, and GPTQModel's
   re-computation calls it without `layer_type` (TypeError); we ask it to reuse the
   position embeddings the layer was called with.

Settings that are not patches, chosen by the caller (see `course/models.py`):
calibration rows of equal length (with ragged rows GPTQModel's AWQ keeps only the last
row's activations for the scale search), a small clip search (`clip_tokens`, `clip_grid`: the
course build uses 32 tokens and 5 thresholds; GPTQModel's default of 512 tokens made the CPU build
about 6x slower) and a scale search scored on fewer rows (`scale_rows`: the course build scores its
20 candidate scales on 1 of its 4 rows; the activation means that shape the candidates still use
all 4).

Upstream-ready: (1) is a `module_tree` for `Gemma3QModel`, (2) a `Gemma3RMSNorm` branch in
`quantization/awq/quantize/scale.py::scale_ln_fcs`, (3) `awq_preserve_explicit_position_embeddings
= True` on `Gemma3QModel`.
"""

from __future__ import annotations

import contextlib

import torch

FIX_VERSION = "2"  # bump when the patch changes, so course models rebuild
STOCK_HELDOUT_PERPLEXITY = (
    196_000  # GPTQModel 7.6.0's AWQ on Gemma 3 without these fixes (measured once, above)
)

GEMMA3_AWQ_MODULE_TREE = [
    "model",
    "layers",
    "#",
    {
        "input_layernorm": ("input_layernorm:!",),
        "self_attn": ("q_proj:0:in=x", "k_proj:0:in=x", "v_proj:0:in=x", "o_proj:1"),
        "pre_feedforward_layernorm": ("pre_feedforward_layernorm:!",),
        "mlp": ("gate_proj:0:in=x", "up_proj:0:in=x", "down_proj:1"),
    },
]


@torch.inference_mode()
def fold_scales_into_gemma_norm(norm: torch.nn.Module, linears: list, scales: torch.Tensor) -> None:
    """Divide a (1 + w) RMSNorm's output by `scales` and multiply the next linears' inputs by it.

    `scales` is updated in place to the scale that was really applied, so callers that
    rescale cached activations with it stay consistent.
    """
    gain = 1.0 + norm.weight.float()
    s = scales.to(gain.device).float()
    live = gain != 0
    if live.any():  # a common factor is free: choose it so every folded |gain| >= 1
        s = s / (s[live] / gain[live].abs()).max()
    new_w = (gain / s - 1.0).to(norm.weight.dtype)
    stored_gain = 1.0 + new_w.float()
    applied = torch.where(live, gain / torch.where(live, stored_gain, torch.ones_like(s)), s)
    if not (torch.isfinite(applied).all() and (applied > 0).all()):
        raise FloatingPointError("AWQ produced a non-finite scale while folding into a Gemma norm")
    norm.weight.copy_(new_w)
    for linear in linears:
        linear.weight.copy_((linear.weight.float() * applied.view(1, -1)).to(linear.weight.dtype))
    scales.copy_(applied.to(device=scales.device, dtype=scales.dtype))


@contextlib.contextmanager
def gemma3_awq_fixes(clip_tokens: int = 64, clip_grid: int = 20, scale_rows: int | None = None):
    """Patch GPTQModel 7.6.0 for a correct Gemma 3 AWQ run; everything is restored on exit.

    `scale_rows`: score each candidate scale on this many calibration rows (spread over them), not
    all.
    """
    import gptqmodel.looper.awq_processor as awq_processor
    import gptqmodel.models.auto as auto
    import gptqmodel.quantization.awq.quantize.scale as scale
    from gptqmodel.models.definitions.gemma3 import Gemma3QModel

    class CourseGemma3QModel(Gemma3QModel):
        module_tree = GEMMA3_AWQ_MODULE_TREE
        awq_preserve_explicit_position_embeddings = True

    original_scale_ln_fcs = scale.scale_ln_fcs
    original_clip = awq_processor.AWQProcessor._compute_best_clip
    original_best_scale = awq_processor.AWQProcessor._compute_best_scale

    def scale_ln_fcs(ln, fcs, scales):
        if type(ln).__name__ == "Gemma3RMSNorm":
            return fold_scales_into_gemma_norm(ln, fcs if isinstance(fcs, list) else [fcs], scales)
        return original_scale_ln_fcs(ln, fcs, scales)

    def compute_best_clip(self, w, input_feat, n_grid=20, max_shrink=0.5, n_sample_token=512):
        return original_clip(
            self,
            w,
            input_feat,
            n_grid=min(n_grid, clip_grid),
            max_shrink=max_shrink,
            n_sample_token=min(n_sample_token, clip_tokens),
        )

    def compute_best_scale(
        self,
        x,
        w_mean,
        x_mean,
        module2inspect,
        linears2scale,
        fp16_output,
        kwargs={},  # noqa: B006 - GPTQModel's own default; only read and rebound here
    ):
        # x holds one calibration row per entry of dim 0; the reference output matches it row for
        # row (a tensor, or a list of per-row chunks when GPTQModel runs one row at a time), and so
        # does any per-row argument such as an attention mask
        if scale_rows and x.dim() == 3 and x.shape[0] > scale_rows:
            rows, step = x.shape[0], x.shape[0] // scale_rows

            def pick(value):
                if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows:
                    return value[::step][:scale_rows]
                if isinstance(value, dict):
                    return {k: pick(v) for k, v in value.items()}
                return value

            x, fp16_output = x[::step][:scale_rows], fp16_output[::step][:scale_rows]
            kwargs = {k: pick(v) for k, v in kwargs.items()}
        return original_best_scale(
            self, x, w_mean, x_mean, module2inspect, linears2scale, fp16_output, kwargs
        )

    saved_model_class = auto.MODEL_MAP.get("gemma3_text")
    auto.MODEL_MAP["gemma3_text"] = CourseGemma3QModel
    scale.scale_ln_fcs = scale_ln_fcs
    awq_processor.AWQProcessor._compute_best_clip = compute_best_clip
    awq_processor.AWQProcessor._compute_best_scale = compute_best_scale
    try:
        yield
    finally:
        auto.MODEL_MAP["gemma3_text"] = saved_model_class
        scale.scale_ln_fcs = original_scale_ln_fcs
        awq_processor.AWQProcessor._compute_best_clip = original_clip
        awq_processor.AWQProcessor._compute_best_scale = original_best_scale
