"""helpers.loading, memory, kernels and generation: format detection, clear refusals, the memory-fit
check, the kernel report and generate.

Nothing here downloads: models are the course's own or tiny random ones, and the hub-id tests
point the client at an offline flag or a port where nothing listens.
"""

import importlib.util
import json
import shutil
import socket
import struct
import sys

import pytest

from helpers import generation, kernels, loading, memory
from helpers.errors import (
    CourseError,
    MissingBackendError,
    ModelNotFoundError,
    NotAModelError,
    NotEnoughMemoryError,
    UnsupportedFormatError,
)

GIB = 2**30


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gptq_lm(course_cache):
    from course import models as course_models

    return loading.load_model(course_models.model_path("gptq"), device="cpu")


@pytest.fixture(scope="module")
def awq_lm(course_cache):
    from course import models as course_models

    return loading.load_model(course_models.model_path("awq"), device="cpu")


def _config_folder(path, config=None, files=()):
    path.mkdir(parents=True)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    for name in files:
        (path / name).write_bytes(b"\0" * 16)
    return path


def _fake_safetensors(path, tensors):
    """A valid safetensors file with zero-filled tensors:
    {name: (dtype, n_elements, bytes_each)}."""
    header, offset = {}, 0
    for name, (dtype, count, width) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": [count],
            "data_offsets": [offset, offset + count * width],
        }
        offset += count * width
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * offset)


# ---- what is this path? --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["gguf", "hf", "gptq", "awq"])
def test_detect_format_of_every_course_model(course_cache, fmt):
    from course import models as course_models

    assert loading.detect_format(course_models.model_path(fmt)) == fmt


def test_a_folder_holding_one_gguf_is_gguf_and_two_must_be_chosen(course_cache, tmp_path):
    from course import models as course_models

    one = tmp_path / "one"
    one.mkdir()
    (one / "m.gguf").symlink_to(course_models.model_path("gguf"))
    assert loading.detect_format(one) == "gguf"
    (one / "n.gguf").symlink_to(course_models.model_path("gguf"))
    with pytest.raises(
        NotAModelError, match=r"no config.json\. It holds 2 \.gguf files: pass one of them"
    ):
        loading.detect_format(one)


def test_missing_path_says_how_to_get_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist.*python -m course.models build"):
        loading.detect_format(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        loading.load_model(tmp_path / "nope")  # an absolute path is never taken for a hub id


def test_folder_without_config_json(tmp_path):
    folder = _config_folder(tmp_path / "weights-only", files=["model.safetensors"])
    with pytest.raises(
        NotAModelError, match="has no config.json.*config.json plus \\*.safetensors"
    ):
        loading.load_model(folder)


def test_broken_config_json(tmp_path):
    folder = _config_folder(tmp_path / "broken")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(NotAModelError, match="not valid JSON"):
        loading.detect_format(folder)


def test_a_file_that_is_not_gguf(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(NotAModelError, match=r"not a \.gguf model \(it starts with b'hell'\)"):
        loading.detect_format(text)
    html = tmp_path / "model.gguf"  # what a failed download often leaves: an HTML page
    html.write_text("<!DOCTYPE html><html>404</html>")
    with pytest.raises(NotAModelError, match="not a GGUF file: it starts with b'<!DO'"):
        loading.load_model(html)


@pytest.mark.parametrize("method", ["bitsandbytes", "fp8", "hqq"])
def test_unsupported_quant_method(tmp_path, method):
    folder = _config_folder(
        tmp_path / method, {"model_type": "llama", "quantization_config": {"quant_method": method}}
    )
    with pytest.raises(
        UnsupportedFormatError, match=f"quantized with '{method}'.*GPTQ, AWQ and compressed-tensors"
    ):
        loading.detect_format(folder)


@pytest.fixture(scope="module")
def tiny_ct(tiny_folder, tmp_path_factory):
    from .conftest import tiny_compressed_tensors

    return tiny_compressed_tensors(tiny_folder, tmp_path_factory.mktemp("ct") / "tiny-gemma3-W4A16")


def test_a_compressed_tensors_checkpoint_loads_decompressed_and_generates_on_the_cpu(
    tiny_ct, tiny_folder, monkeypatch
):
    from safetensors import safe_open

    assert loading.detect_format(tiny_ct) == "compressed-tensors"
    with safe_open(
        tiny_ct / "model.safetensors", framework="numpy"
    ) as f:  # what llm-compressor writes
        names = set(f.keys())
    q = "model.layers.0.self_attn.q_proj"
    assert {
        f"{q}.weight_packed",
        f"{q}.weight_scale",
        f"{q}.weight_shape",
    } <= names and f"{q}.weight" not in names
    # the memory check counts the dense weights it will hold, not the packed file
    assert memory.weights_in_memory_bytes(tiny_ct) == memory.weights_in_memory_bytes(
        tiny_folder, "bfloat16"
    )
    assert memory.weights_in_memory_bytes(tiny_ct, "float32") == memory.weights_in_memory_bytes(
        tiny_folder, "float32"
    )
    assert memory.weights_bytes(tiny_ct) < memory.weights_bytes(tiny_folder)
    lm = loading.load_model(tiny_ct, device="cpu", dtype="bfloat16")
    assert lm.format == "compressed-tensors" and lm.backend == "transformers"
    assert any("decompressed to dense bfloat16 layers" in note for note in lm.notes)
    layer = lm.model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "Linear" and layer.weight.shape == (128, 128)
    fp = loading.load_model(tiny_folder, device="cpu", dtype="bfloat16")
    error = (layer.weight.float() - fp.model.model.layers[0].self_attn.q_proj.weight.float()).abs()
    assert 0 < error.max() < 0.05  # 4-bit rounding: close to the source, not equal
    report = kernels.kernel_report(lm)
    assert report["quantized_linear"] == {} and report["expected"].startswith(
        "none: compressed-tensors"
    )
    # it generates: 4 greedy tokens from the decompressed layers, the first the model's own top
    # token after the prompt, and generate() returns their text alone
    import torch

    prompt = "The capital of France is"
    ids = generation.encode_prompt(lm, prompt)
    with torch.inference_mode():
        top = int(lm.model(torch.tensor([ids])).logits[0, -1].argmax())
    outputs = []
    real = lm.model.generate

    def spy(*args, **kwargs):
        outputs.append(real(*args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(lm.model, "generate", spy)
    text = generation.generate(lm, prompt, max_new_tokens=4)
    (out,) = outputs
    assert out[0][: len(ids)].tolist() == ids
    new = out[0][len(ids) :].tolist()
    assert len(new) == 4 and new[0] == top and lm.tokenizer.eos_token_id not in new
    assert text == lm.tokenizer.decode(new, skip_special_tokens=True) != ""


def test_compressed_tensors_without_its_package_is_one_clear_line(tiny_ct, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "compressed_tensors" else real(name, *a),
    )
    with pytest.raises(
        MissingBackendError,
        match=r"^This is a compressed-tensors checkpoint .*pip install "
        r"compressed-tensors==0\.20\.1`, then restart the kernel\.$",
    ):
        loading.load_model(tiny_ct, device="cpu")


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_gptqmodel_missing_is_named_before_transformers_gets_confused(
    course_cache, monkeypatch, fmt
):
    from course import models as course_models

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gptqmodel" else real(name, *a),
    )
    with pytest.raises(
        MissingBackendError,
        match=f"{fmt.upper()} checkpoint.*gptqmodel is not installed.*QuantizeConfig.*pip install",
    ):
        loading.load_model(course_models.model_path(fmt))


def test_gptq_without_optimum(course_cache, monkeypatch):
    from course import models as course_models

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("gptqmodel", "optimum") else real(name, *a),
    )
    with pytest.raises(MissingBackendError, match="gptqmodel and optimum are not installed"):
        loading.load_model(course_models.model_path("gptq"))


# ---- safety defaults -----------------------------------------------------------------------


def test_pickle_only_folder_refused_unless_allowed(tiny_folder, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_folder, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CourseError, match=r"only pickle weights.*allow_pickle=True"):
        loading.load_model(folder, device="cpu")
    with pytest.warns(UserWarning, match="allow_pickle=True: loading pickle weights"):
        lm = loading.load_model(folder, device="cpu", allow_pickle=True)
    assert lm.format == "hf" and lm.model.config.num_hidden_layers == 1


def test_config_without_weights(tmp_path):
    folder = _config_folder(tmp_path / "empty", {"model_type": "gemma3_text"})
    with pytest.raises(NotAModelError, match="no weights"):
        loading.load_model(folder)


def test_trust_remote_code_is_off_by_default(tiny_folder, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = {}
    real_model, real_tok = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def spy(real, key):
        def call(*args, **kwargs):
            seen[key] = kwargs.get("trust_remote_code")
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy(real_model, "model"))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", spy(real_tok, "tokenizer"))
    loading.load_model(tiny_folder, device="cpu")
    assert seen == {"model": False, "tokenizer": False}


def test_custom_code_model_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "code-ran"
    folder = _config_folder(
        tmp_path / "custom",
        {
            "model_type": "my_secret_arch",
            "architectures": ["MyModel"],
            "auto_map": {
                "AutoConfig": "modeling_my.MyConfig",
                "AutoModelForCausalLM": "modeling_my.MyModel",
            },
        },
        files=["model.safetensors"],
    )
    (folder / "modeling_my.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(
        CourseError, match=r"modeling_my\.py.*trust_remote_code=False.*trust_remote_code=True"
    ):
        loading.load_model(folder, check_memory=False)
    assert not marker.exists()


# ---- hub ids -------------------------------------------------------------------------------


def test_hub_id_while_offline(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(
        CourseError,
        match=r"'someone/some-model' is not a file or folder here.*hub id.*HF_HUB_OFFLINE",
    ):
        loading.load_model("someone/some-model")


def test_hub_id_with_unreachable_endpoint(monkeypatch, tmp_path):
    from huggingface_hub import constants

    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(CourseError, match=f"taken as a hub id.*127.0.0.1:{port}"):
        loading.load_model("someone/some-model")
    assert not (tmp_path / "someone").exists()


def test_hub_id_without_the_hub_module(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(
        sys.modules, "helpers.downloading", None
    )  # makes `from .downloading import ...` fail
    with pytest.raises(
        ModelNotFoundError, match="taken as a hub id, but downloading is not available"
    ):
        loading.load_model("someone/some-model")


@pytest.mark.parametrize(
    "text, hub",
    [
        ("owner/name", True),
        ("./owner/name", False),
        ("a/b/c", False),
        ("/abs/path", False),
        ("name", False),
        ("owner/", False),
        ("my models/x", False),
    ],
)
def test_what_counts_as_a_hub_id(text, hub):
    assert loading.looks_like_hub_id(text) is hub


# ---- device and dtype ----------------------------------------------------------------------


def test_device_choices():
    import torch

    assert memory.pick_device("cpu") == "cpu"
    assert memory.pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(CourseError, match="not one the course knows"):
        memory.pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(CourseError, match="sees no CUDA GPU.*CUDA build of torch"):
            memory.pick_device("cuda")


def test_dtype_names():
    import torch

    assert memory.normalize_dtype(None) is None
    assert memory.normalize_dtype("auto") is None
    assert memory.normalize_dtype("bf16") == "bfloat16"
    assert memory.normalize_dtype(torch.float16) == "float16"
    assert memory.normalize_dtype("FP32") == "float32"
    with pytest.raises(CourseError, match="dtype='int4'"):
        memory.normalize_dtype("int4")


# ---- will it fit? --------------------------------------------------------------------------


def test_memory_estimate_counts_float_tensors_in_the_target_dtype(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    # 1000 packed int32 (4000 B) + 1000 bf16 (2000 B) + 500 fp16 (1000 B)
    _fake_safetensors(
        folder / "model.safetensors",
        {"qweight": ("I32", 1000, 4), "embed": ("BF16", 1000, 2), "scales": ("F16", 500, 2)},
    )
    assert memory.weights_in_memory_bytes(folder) == memory.weights_bytes(folder)
    assert memory.weights_in_memory_bytes(folder, "bfloat16") == 7000
    assert (
        memory.weights_in_memory_bytes(folder, "float32") == 4000 + 4000 + 2000
    )  # ints stay packed
    assert memory.estimate_memory_bytes(folder, "gptq", "float32") == int(10000 * 1.5 + 600 * 2**20)


def test_every_safetensors_dtype_counts_its_own_width(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    _fake_safetensors(
        folder / "model.safetensors",
        {
            "fp8": ("F8_E4M3", 100, 1),
            "mask": ("BOOL", 10, 1),
            "ids": ("I64", 10, 8),
            "f64": ("F64", 10, 8),
        },
    )
    assert (
        memory.weights_in_memory_bytes(folder, "bfloat16") == 100 * 2 + 10 + 80 + 10 * 2
    )  # floats cast, ints kept
    assert memory.weights_in_memory_bytes(folder, "float32") == 100 * 4 + 10 + 80 + 10 * 4


def test_weight_files_follow_the_index_and_skip_consolidated(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for name, size in (
        ("model-00001-of-00002.safetensors", 10),
        ("model-00002-of-00002.safetensors", 20),
        ("consolidated.safetensors", 30),
        ("pytorch_model.bin", 40),
    ):
        (folder / name).write_bytes(b"\0" * size)
    assert (
        memory.weights_bytes(folder) == 30
    )  # shards only: no consolidated copy, no pickle duplicate
    (folder / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    "a": "model-00001-of-00002.safetensors",
                    "b": "model-00002-of-00002.safetensors",
                }
            }
        )
    )
    assert [p.name for p in memory.weight_files(folder)] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]


def test_memory_fit_refuses_with_the_numbers(course_cache):
    from course import models as course_models

    path = course_models.model_path("gptq")
    need = memory.estimate_memory_bytes(path, "gptq")
    with pytest.raises(NotEnoughMemoryError) as info:
        memory.check_memory_fit(path, "gptq", free_bytes=GIB // 2)
    message = str(info.value)
    assert f"needs about {need / GIB:.1f} GiB of RAM" in message
    assert "only 0.5 GiB is free on cpu" in message
    assert "+ 50% + 600 MiB overhead" in message and "check_memory=False" in message
    with pytest.raises(NotEnoughMemoryError, match="GiB of GPU memory"):
        memory.check_memory_fit(path, "gptq", device="cuda", free_bytes=GIB // 2)


def test_memory_fit_passes_and_reports(course_cache):
    from course import models as course_models
    from helpers import model_info

    path = course_models.model_path("awq")
    figures = memory.check_memory_fit(path, "awq", free_bytes=64 * GIB)
    assert figures["fits"] and figures["need_bytes"] == memory.estimate_memory_bytes(path, "awq")
    assert figures["weights_bytes"] == memory.weights_bytes(path)
    assert (
        figures["overhead_bytes"] == figures["weights_bytes"] // 2 + 600 * 2**20
    )  # the stated 50% + 600 MiB
    gguf = course_models.model_path("gguf")
    # the mapped file and the copy llama.cpp repacks (on CPUs that repack), + 20% + 300 MiB
    in_memory = gguf.stat().st_size + memory.repacked_bytes(model_info.gguf_header(gguf))
    assert memory.check_memory_fit(gguf, "gguf", free_bytes=64 * GIB)["need_bytes"] == int(
        in_memory * 1.2 + 300 * 2**20
    )


def test_fp32_needs_more_than_the_checkpoint_dtype(course_cache):
    from course import models as course_models

    hf = course_models.model_path("hf")
    bf16 = memory.weights_in_memory_bytes(hf, "bfloat16")
    assert memory.weights_in_memory_bytes(hf, "float32") == 2 * bf16
    gptq = course_models.model_path("gptq")
    ratio = memory.weights_in_memory_bytes(gptq, "float32") / memory.weights_in_memory_bytes(
        gptq, "bfloat16"
    )
    assert 1.5 < ratio < 2  # the bf16 embedding doubles, the packed 4-bit weights do not


def test_load_model_refuses_before_loading_anything(course_cache, monkeypatch):
    from transformers import AutoModelForCausalLM

    from course import models as course_models

    def must_not_load(*args, **kwargs):
        raise AssertionError("from_pretrained was called although the model does not fit")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", must_not_load)
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device="cpu": 256 * 2**20)
    with pytest.raises(NotEnoughMemoryError, match="only 0.2 GiB is free"):
        loading.load_model(course_models.model_path("hf"), device="cpu")


# ---- which kernel? -------------------------------------------------------------------------


def test_classify_cpu_kernels_is_fine():
    report = kernels.classify_kernels(
        [("TorchAtenLinear", "cpu")] * 7 + [("TorchAtenAwqLinear", "cpu")]
    )
    assert report["quantized_linear"] == {"TorchAtenLinear": 7, "TorchAtenAwqLinear": 1}
    assert (
        report["devices"] == ["cpu"] and not report["slow_fallback"] and report["warning"] is None
    )
    assert "TorchAten" in report["expected"]


@pytest.mark.parametrize(
    "kernel",
    [
        "MarlinLinear",
        "ExllamaV2Linear",
        "MacheteLinear",
        "AwqGEMMLinear",
        "AwqMarlinLinear",
        "TritonV2Linear",
    ],
)
def test_classify_fast_gpu_kernels(kernel):
    report = kernels.classify_kernels([(kernel, "cuda:0")] * 4)
    assert not report["slow_fallback"] and not report["offloaded"] and report["warning"] is None
    assert "Marlin" in report["expected"]


@pytest.mark.parametrize("kernel", ["TorchLinear", "AwqTorchLinear", "QQQTorchLinear"])
def test_classify_slow_fallback_on_gpu_is_loud(kernel):
    report = kernels.classify_kernels([(kernel, "cuda:0")] * 4)
    assert report["slow_fallback"]
    assert report["warning"].startswith("SLOW KERNEL") and kernel in report["warning"]
    assert "model.device says cuda" in report["warning"]


def test_slow_kernel_names_are_gptqmodels_real_gpu_fallbacks():
    """The classes the SLOW KERNEL warning and the troubleshooting page name are GPTQModel's own:
    the pure-PyTorch kernels that may run on a GPU. Its CPU kernels (TorchAten*) are CPU-only, so
    they can never be the GPU's fallback."""
    kernels.import_gptqmodel_quietly()
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    from gptqmodel.nn_modules.qlinear.torch_aten_kernel import TorchAtenLinear
    from gptqmodel.nn_modules.qlinear.torch_aten_kernel_awq import TorchAtenAwqLinear
    from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchLinear
    from gptqmodel.models._const import DEVICE

    for cpu_only in (TorchAtenLinear, TorchAtenAwqLinear):
        assert cpu_only.SUPPORTS_DEVICES == [DEVICE.CPU]
    for fallback in (TorchLinear, AwqTorchLinear):
        assert {DEVICE.ALL, DEVICE.CUDA} & set(fallback.SUPPORTS_DEVICES), fallback
        report = kernels.classify_kernels([(fallback.__name__, "cuda:0")])
        assert report["slow_fallback"] and fallback.__name__ in report["warning"]
    from pathlib import Path

    for page in ("docs/troubleshooting.md", "docs/zh-CN/troubleshooting.md"):
        row = next(
            line
            for line in (Path(__file__).parent.parent / page).read_text().splitlines()
            if line.startswith("| `SLOW KERNEL")
        )
        assert "but TorchLinear runs" in row and "AwqTorchLinear" in row, page


def test_classify_same_class_on_cpu_is_not_flagged():
    assert kernels.classify_kernels([("TorchLinear", "cpu")])["warning"] is None


def test_classify_offloaded_layers():
    report = kernels.classify_kernels(
        [("MarlinLinear", "cuda:0"), ("MarlinLinear", "cuda:0"), ("TorchLinear", "cpu")]
    )
    assert report["offloaded"] and not report["slow_fallback"]
    assert report["warning"].startswith("OFFLOADED")


def test_classify_nothing_quantized():
    report = kernels.classify_kernels([])
    assert (
        report["quantized_linear"] == {} and report["warning"] is None and report["expected"] == "-"
    )


def test_kernel_report_walks_a_module_tree():
    import torch

    class BaseQuantLinear(torch.nn.Module):  # recognised by name, like GPTQModel's base class
        def __init__(self):
            super().__init__()
            self.register_buffer("qweight", torch.zeros(2, 2, dtype=torch.int32))

    class TorchLinear(BaseQuantLinear):
        pass

    tree = torch.nn.Sequential(
        TorchLinear(), torch.nn.Sequential(TorchLinear()), torch.nn.Linear(2, 2)
    )
    report = kernels.kernel_report(tree)
    assert report["quantized_linear"] == {"TorchLinear": 2} and report["plain_linear"] == 1
    assert report["devices"] == ["cpu"] and report["warning"] is None


@pytest.mark.parametrize(
    "fmt, kernel", [("gptq", "TorchAtenLinear"), ("awq", "TorchAtenAwqLinear")]
)
def test_kernel_report_on_the_course_models(request, fmt, kernel):
    lm = request.getfixturevalue(f"{fmt}_lm")
    report = kernels.kernel_report(lm)  # a LoadedModel or lm.model both work
    layers = lm.model.config.num_hidden_layers
    assert report["quantized_linear"] == {
        kernel: 7 * layers
    }  # q, k, v, o, gate, up, down per layer
    assert report["plain_linear"] == 1  # lm_head
    assert report["devices"] == ["cpu"] and report["warning"] is None
    assert kernels.kernel_report(lm.model) == report
    assert lm.notes == [f"kernel: {kernel}"]


def test_print_kernel_report_is_loud_about_a_fallback(capsys):
    kernels.print_kernel_report(
        {**kernels.classify_kernels([("TorchLinear", "cuda:0")]), "plain_linear": 1}
    )
    out = capsys.readouterr().out
    assert "!" * 80 in out and "SLOW KERNEL" in out


def test_kernel_report_refuses_llama_cpp():
    from pathlib import Path

    lm = loading.LoadedModel(
        model=object(),
        tokenizer=None,
        format="gguf",
        backend="llama.cpp",
        path=Path("x"),
        device="cpu",
        dtype="Q4_K_M",
        load_seconds=0.0,
        context_length=4096,
    )
    with pytest.raises(CourseError, match="llama_print_system_info"):
        kernels.kernel_report(lm)


# ---- generate ------------------------------------------------------------------------------


def test_generate_passes_mask_pad_and_max_new_tokens(gptq_lm, monkeypatch):
    seen = {}
    real = gptq_lm.model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(gptq_lm.model, "generate", spy)
    prompt = "The capital of France is"
    text = generation.generate(gptq_lm, prompt, max_new_tokens=4)
    assert (
        seen["pad_token_id"] == gptq_lm.tokenizer.pad_token_id == 0
    )  # 0 is a real id, not "missing"
    assert "attention_mask" in seen and seen["max_new_tokens"] == 4 and seen["do_sample"] is False
    assert "max_length" not in seen
    assert text and not text.startswith(prompt)  # only the new tokens come back
    assert len(gptq_lm.tokenizer(text, add_special_tokens=False)["input_ids"]) <= 6
