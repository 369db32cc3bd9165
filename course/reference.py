"""The course's full-precision reference: the shipped Q4_K_M weights moved off every quantization
grid, with what the model computes unchanged.

    move_off_grid(model)          # in place, on a Gemma 3 text model (Transformers)

Why. The only Gemma 3 270M reachable offline is a Q4_K_M file. Dequantized, each of its weights is
still a multiple of its block's scale, so quantizing that copy to Q4_K_M again returns the very same
numbers: GGUF would pay nothing and GPTQ/AWQ would pay for a second quantization onto another grid.
A real bf16 release is not on any grid. This makes one that is not, without training and without
changing a single output:

    y = W x  ==  (W diag(c)) (x / c)      for any factors c > 0, one per input column of W

Every linear layer's input columns are multiplied by their own factor (log-uniform in
[1/SPREAD, SPREAD], seeded), and the step that produces its input divides by it:

    q_proj, k_proj, v_proj  <- input_layernorm            (Gemma's RMSNorm multiplies by 1 + weight)
    gate_proj, up_proj      <- pre_feedforward_layernorm
    down_proj               <- up_proj's rows             (act(gate) * up is linear in up)
    o_proj                  <- v_proj's rows              (attention averages the rows of V)

Products of grid values and unrelated factors are no longer on a 4-bit grid of 32- or 256-weight
blocks (the build measures it: quantizing this copy to Q4_K_M costs perplexity, like any 4-bit
quantization). The tied token embedding cannot be rescaled this way and keeps the shipped file's
values.
"""

from __future__ import annotations

# 0.8 to 1.25: where Q4_K_M's cost stops growing, off the grid and no farther (docs/measurements.md)
SPREAD = 1.25
SEED = 270


def _factors(n: int, generator, spread: float):
    import torch

    return spread ** (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1)


def _scale_columns(linear, c) -> None:
    w = linear.weight.data
    linear.weight.data = (w.double() * c[None, :]).to(w.dtype)


def _scale_rows(linear, c) -> None:
    w = linear.weight.data
    linear.weight.data = (w.double() / c[:, None]).to(w.dtype)
    if linear.bias is not None:
        linear.bias.data = (linear.bias.data.double() / c).to(linear.bias.dtype)


def _divide_norm(norm, c) -> None:
    w = norm.weight.data  # Gemma's RMSNorm: x / rms(x) * (1 + weight)
    norm.weight.data = ((1 + w.double()) / c - 1).to(w.dtype)


def move_off_grid(model, spread: float = SPREAD, seed: int = SEED) -> None:
    """Rescale a Gemma 3 text model's weights in place so that none sits on a quantization grid; the
    model computes the same function (up to the rounding of its dtype)."""
    import torch

    from helpers.errors import CourseError

    layers = getattr(getattr(model, "model", None), "layers", None)
    if getattr(model.config, "model_type", None) != "gemma3_text" or layers is None:
        raise CourseError(
            f"move_off_grid knows Gemma 3 text models only, not {type(model).__name__} "
            f"({getattr(model.config, 'model_type', '?')})."
        )
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    group = (
        config.num_attention_heads // config.num_key_value_heads
    )  # query heads per key/value head
    with torch.no_grad():
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            c_attn = _factors(attn.q_proj.in_features, generator, spread)
            _divide_norm(layer.input_layernorm, c_attn)
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                _scale_columns(proj, c_attn)
            c_mlp = _factors(mlp.gate_proj.in_features, generator, spread)
            _divide_norm(layer.pre_feedforward_layernorm, c_mlp)
            for proj in (mlp.gate_proj, mlp.up_proj):
                _scale_columns(proj, c_mlp)
            c_down = _factors(mlp.down_proj.in_features, generator, spread)
            _scale_rows(mlp.up_proj, c_down)
            _scale_columns(mlp.down_proj, c_down)
            c_v = _factors(attn.v_proj.out_features, generator, spread)  # one per value channel
            _scale_rows(attn.v_proj, c_v)
            # o_proj reads every query head's output; heads that share a value head share its
            # factors
            head_dim = attn.v_proj.out_features // config.num_key_value_heads
            c_o = (
                c_v.view(config.num_key_value_heads, 1, head_dim).expand(-1, group, -1).reshape(-1)
            )
            _scale_columns(attn.o_proj, c_o)
