"""Exercises of notebook 03b (compressed-tensors)."""

from __future__ import annotations

from . import attempt, close, verdict

LAYER = "model.layers.0.mlp.down_proj"


def _shape(path=None) -> tuple[int, int]:
    from safetensors import safe_open

    from course import models as course_models

    folder = path or course_models.model_path("hf")
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            if f"{LAYER}.weight" in f.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                out_features, in_features = f.get_slice(f"{LAYER}.weight").get_shape()
                return out_features, in_features
    raise FileNotFoundError(f"{LAYER}.weight is not in {folder}")


def check_1(answer_bytes, group_size: int = 128, path=None) -> bool:
    """Exercise 1: bytes of `LAYER` in a symmetric W4A16 compressed-tensors checkpoint:
    weight_packed (int32), weight_scale (bf16, one per group and output) and weight_shape (two
    int64)."""
    out_features, in_features = _shape(path)
    truth = out_features * in_features // 2 + out_features * (in_features // group_size) * 2 + 2 * 8
    return verdict(
        close(answer_bytes, truth, 0.001),
        "the same bits as GPTQ's codes and scales, without zero points (symmetric) or g_idx.",
        "three tensors: 4 bits per weight packed into int32, a bf16 scale per group of inputs and "
        "per output, and the two numbers of the original shape as int64. Symmetric: no zero "
        "points.",
    )


def check_2(loader_for) -> bool:
    """Exercise 2: `loader_for(config)` -> "gptq", "awq", "compressed-tensors" or "hf" from a
    config.json dict, as `helpers.loading.detect_format` decides for a folder."""
    import json
    import tempfile
    from pathlib import Path

    from helpers import loading

    configs = [
        {"model_type": "gemma3_text"},
        {"quantization_config": {"quant_method": "gptq", "bits": 4}},
        {"quantization_config": {"quant_method": "awq", "version": "gemm"}},
        {"quantization_config": {"quant_method": "compressed-tensors", "format": "pack-quantized"}},
        {"quantization_config": {"quant_method": "GPTQ"}},
        {"quantization_config": {}},
    ]
    for config in configs:
        folder = Path(tempfile.mkdtemp(prefix="qllm-ex03b-"))
        (folder / "config.json").write_text(json.dumps(config))
        want = loading.detect_format(folder)
        got, error = attempt(loader_for, json.loads(json.dumps(config)))
        if error or got != want:
            return verdict(
                False,
                "",
                error
                or f"wrong for {config}: read quantization_config.quant_method, "
                "lower-case; no method means a plain Transformers model.",
            )
    return verdict(True, "one field of config.json decides which library loads a folder.", "")


def check_3(answer: dict, path=None) -> bool:
    """Exercise 3: {"num_bits", "group_size", "symmetric", "targets"} of the checkpoint section 1
    wrote, read from its config.json (its quantization_config's one config group)."""
    import json

    from course import models as course_models

    folder = path or course_models.cache_dir() / "yours" / "compressed-tensors-w4a16-rtn"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} is missing: run section 1 of notebook 03b first")
    group = next(
        iter(
            json.loads((folder / "config.json").read_text())["quantization_config"][
                "config_groups"
            ].values()
        )
    )
    truth = {
        "num_bits": group["weights"]["num_bits"],
        "group_size": group["weights"]["group_size"],
        "symmetric": group["weights"]["symmetric"],
        "targets": group["targets"],
    }
    answer = answer if isinstance(answer, dict) else {}
    wrong = [k for k, v in truth.items() if answer.get(k) != v]
    return verdict(
        not wrong,
        "config_groups say which layers (targets) get which quantization (weights).",
        f"look again at {', '.join(wrong)}: config.json > quantization_config > config_groups > "
        "group_0 > weights, and its targets.",
    )
