"""course.reference.move_off_grid: the same model, its weights no longer on a grid (tiny random
configs)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _tiny(heads: int, kv_heads: int, layers: int = 2):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=16,
        max_position_embeddings=256,
        sliding_window=32,
        layer_types=["sliding_attention", "full_attention"][:layers],
    )
    model = Gemma3ForCausalLM(config).float().eval()
    with torch.no_grad():  # gains around 1, and a dead channel (1 + w = 0) as the real model has
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.pre_feedforward_layernorm):
                norm.weight.normal_(0.0, 0.5)
            layer.pre_feedforward_layernorm.weight[3] = -1.0
    return model


@pytest.mark.parametrize("heads,kv_heads", [(4, 1), (4, 2), (2, 2)])
def test_same_outputs_other_weights(heads, kv_heads):
    from course.reference import move_off_grid

    model = _tiny(heads, kv_heads)
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    move_off_grid(model)
    with torch.no_grad():
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)  # fp32: the same function
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, weights[name])}
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        for i in range(2):
            name = next(
                n
                for n in weights
                if n.endswith(f"layers.{i}.self_attn.{proj}.weight")
                or n.endswith(f"layers.{i}.mlp.{proj}.weight")
            )
            assert name in changed, name
            # every column moves by its own factor, between 1/1.25 and 1.25 (up_proj and v_proj:
            # their rows too)
            bound = 1.25 ** (2 if proj in ("up_proj", "v_proj") else 1)
            ratio = (model.get_parameter(name) / weights[name]).nan_to_num(nan=1.0)
            assert ratio.min() >= 1 / bound - 1e-6 and ratio.max() <= bound + 1e-6
            assert ratio.std() > 0.05
    assert "model.embed_tokens.weight" not in changed  # tied with the output layer: kept


def test_bf16_model_stays_close_and_seed_repeats():
    from course.reference import move_off_grid

    model = _tiny(4, 1).to(torch.bfloat16)
    twin = _tiny(4, 1).to(torch.bfloat16)
    ids = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(ids).logits.float()
    move_off_grid(model)
    move_off_grid(twin)
    with torch.no_grad():
        after = model(ids).logits.float()
    assert all(  # seeded
        torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(), strict=True)
    )
    assert (after.argmax(-1) == before.argmax(-1)).float().mean() > 0.9  # bf16 rounding only
    assert torch.corrcoef(torch.stack([after.flatten(), before.flatten()]))[0, 1] > 0.999


def test_refuses_other_architectures():
    from transformers import LlamaConfig, LlamaForCausalLM

    from course.reference import move_off_grid
    from helpers.errors import CourseError

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    with pytest.raises(CourseError, match="Gemma 3 text models only"):
        move_off_grid(model)
