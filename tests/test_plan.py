"""helpers.plan: a plan before the download, from headers only, against the local hub serving tiny
repos.

Every figure must equal what the course computes on the same files once they are here: load_model's
fit rule (helpers.memory) and the bytes read per token (helpers.timing).
"""

import json

import numpy as np
import pytest

from course.local_hub import LocalHub, Repo, repo_from_folder
from helpers import loading, memory, plan, timing
from helpers.errors import NoMatchingFilesError, RepoNotFoundError
from tests.hub_support import point_at

GIB = 2**30
LAYER = "model.layers.0.mlp.down_proj"


def write_gguf(path, with_output: bool, file_type=None, body: bool = True):
    """A tiny GGUF: a Q8_0 embedding (10 x 64) and an F16 matrix (`body`), an F16 output head if
    asked."""
    from gguf import GGMLQuantizationType, GGUFWriter, quants

    writer = GGUFWriter(str(path), "llama")
    if file_type is not None:
        writer.add_file_type(file_type)
    if body:
        embedding = quants.quantize(
            np.random.rand(10, 64).astype(np.float32), GGMLQuantizationType.Q8_0
        )
        writer.add_tensor(
            "token_embd.weight",
            embedding,
            raw_shape=embedding.shape,
            raw_dtype=GGMLQuantizationType.Q8_0,
        )
        writer.add_tensor("blk.0.ffn_up.weight", np.ones((8, 64), dtype=np.float16))
    if with_output:
        writer.add_tensor("output.weight", np.ones((10, 64), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def model_folder(folder, tensors: dict, config: dict):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    ggufs = root / "ggufs"
    ggufs.mkdir()
    write_gguf(ggufs / "m-tied.gguf", with_output=False)
    write_gguf(ggufs / "m-untied.gguf", with_output=True)
    write_gguf(
        ggufs / "mmproj-m-f16.gguf", with_output=False
    )  # a vision projector, not a model to run
    (ggufs / "README.md").write_text("# two GGUF files\n")
    split = root / "split"  # llama.cpp's split files: one model in two parts
    split.mkdir()
    write_gguf(split / "m-00001-of-00002.gguf", with_output=False)
    write_gguf(split / "m-00002-of-00002.gguf", with_output=True, body=False)
    f32 = {
        "model.embed_tokens.weight": np.ones((100, 64), np.float32),
        f"{LAYER}.weight": np.ones((64, 64), np.float32),
    }
    return {
        "me/ggufs": ggufs,
        "me/split": split,
        # fp32 on disk: load_model casts it to bf16, and the plan must count that
        "me/hf": model_folder(root / "hf", f32, {"model_type": "llama", "dtype": "float32"}),
        "me/hf-untied": model_folder(
            root / "hf-untied",
            {**f32, "lm_head.weight": np.ones((100, 64), np.float32)},
            {"model_type": "llama", "dtype": "float32", "tie_word_embeddings": False},
        ),
        "me/gptq": model_folder(
            root / "gptq",
            {
                "model.embed_tokens.weight": np.ones((100, 64), np.float16),
                f"{LAYER}.qweight": np.ones((8, 64), np.int32),
                f"{LAYER}.scales": np.ones((1, 64), np.float16),
            },
            {
                "model_type": "llama",
                "dtype": "bfloat16",
                "quantization_config": {"quant_method": "gptq", "bits": 4},
            },
        ),
        # compressed-tensors: the packed layer is decompressed to the dense shape its weight_shape
        # holds
        "me/ct": model_folder(
            root / "ct",
            {
                "model.embed_tokens.weight": np.ones((100, 64), np.float16),
                f"{LAYER}.weight_packed": np.ones((64, 8), np.int32),
                f"{LAYER}.weight_scale": np.ones((64, 1), np.float16),
                f"{LAYER}.weight_shape": np.array([64, 64], np.int64),
            },
            {
                "model_type": "llama",
                "dtype": "float16",
                "quantization_config": {"quant_method": "compressed-tensors"},
            },
        ),
    }


@pytest.fixture(scope="module")
def plan_hub(folders):
    repos = {repo_id: repo_from_folder(repo_id, folder) for repo_id, folder in folders.items()}
    repos["me/readme-only"] = Repo("me/readme-only", {})
    with LocalHub(repos) as server:
        yield server


@pytest.fixture
def served(plan_hub, tmp_path, monkeypatch):
    return point_at(plan_hub, tmp_path, monkeypatch)


def local_need(path) -> int:
    """What load_model's fit check asks for on the CPU, for the same files here."""
    fmt = loading.detect_format(path)
    if fmt == "gguf":
        return memory.estimate_memory_bytes(path, fmt)
    dtype = memory.resolve_dtype(path, fmt, "cpu").dtype
    return memory.estimate_memory_bytes(
        path, fmt, None if dtype == memory.checkpoint_dtype(path) else dtype
    )


def test_gguf_rows_equal_the_local_rules_on_the_same_files(served, folders):
    rows = {r["candidate"]: r for r in plan.plan("me/ggufs", device="cpu", free_ram=64 * GIB)}
    assert list(rows) == [
        "m-tied.gguf",
        "m-untied.gguf",
    ]  # one row per file; README is no candidate
    for name, row in rows.items():
        path = folders["me/ggufs"] / name
        assert row["format"] == "gguf" and row["download_bytes"] == path.stat().st_size
        assert row["memory_bytes"] == local_need(path)
        assert row["bytes_per_token"] == timing.gguf_bytes_per_token(path)
    embedding = 10 * 64 // 32 * 34  # Q8_0: 34 bytes per 32 weights
    assert (
        rows["m-tied.gguf"]["bytes_per_token"] == embedding + 8 * 64 * 2
    )  # tied: the embedding is the head
    assert (
        rows["m-untied.gguf"]["bytes_per_token"] == embedding // 10 + 8 * 64 * 2 + 10 * 64 * 2
    )  # one row


def test_the_parts_of_a_split_gguf_are_one_candidate(served, folders):
    [row] = plan.plan("me/split", device="cpu", free_ram=64 * GIB)
    parts = sorted(folders["me/split"].glob("*.gguf"))
    assert row["candidate"] == "m.gguf" and row["download_bytes"] == sum(
        p.stat().st_size for p in parts
    )
    assert row["memory_bytes"] == memory.memory_needed(row["download_bytes"], "gguf")
    # the head is in the second part, so the embedding in the first counts for one row
    assert row["bytes_per_token"] == 10 * 64 // 32 * 34 // 10 + 8 * 64 * 2 + 10 * 64 * 2


def test_safetensors_rows_equal_the_local_fit_rule(served, folders):
    for repo_id in ("me/hf", "me/hf-untied", "me/gptq", "me/ct"):
        [row] = plan.plan(repo_id, device="cpu", free_ram=64 * GIB)
        folder = folders[repo_id]
        assert row["format"] == loading.detect_format(folder), repo_id
        assert row["memory_bytes"] == local_need(folder), repo_id
        assert row["download_bytes"] == sum(p.stat().st_size for p in folder.iterdir()), repo_id
    bf16 = {"embedding": 100 * 64 * 2, "layer": 64 * 64 * 2}
    [hf] = plan.plan("me/hf", device="cpu", free_ram=64 * GIB)
    assert (
        hf["dtype"] == "bfloat16" and hf["bytes_per_token"] == bf16["embedding"] + bf16["layer"]
    )  # tied head
    [untied] = plan.plan("me/hf-untied", device="cpu", free_ram=64 * GIB)
    assert (
        untied["bytes_per_token"] == 64 * 2 + bf16["layer"] + bf16["embedding"]
    )  # one row + layer + lm_head
    [gptq] = plan.plan("me/gptq", device="cpu", free_ram=64 * GIB)
    assert (
        gptq["bytes_per_token"] == bf16["embedding"] + 8 * 64 * 4 + 64 * 2
    )  # packed int32 as they are
    [ct] = plan.plan("me/ct", device="cpu", free_ram=64 * GIB)
    assert (
        ct["bytes_per_token"] == bf16["embedding"] + bf16["layer"]
    )  # decompressed: its weight_shape, read remotely


def test_fits_follow_the_free_memory_given(served):
    need = {
        r["candidate"]: r["memory_bytes"]
        for r in plan.plan("me/ggufs", device="cpu", free_ram=64 * GIB)
    }
    rows = plan.plan(
        "me/ggufs", device="cpu", free_ram=need["m-tied.gguf"], free_vram=need["m-tied.gguf"] - 1
    )
    fits = {r["candidate"]: (r["fits_RAM"], r["fits_VRAM"]) for r in rows}
    assert fits == {
        "m-tied.gguf": (True, False),
        "m-untied.gguf": (False, False),
    }  # untied is larger
    assert (
        "fits_VRAM" not in plan.plan("me/hf", device="cpu", free_ram=GIB)[0]
    )  # no GPU asked about: no column


def test_predicted_is_the_ceiling_times_the_efficiency_of_its_backend(served):
    assert plan.efficiency(10.0, 100_000_000, 2e9) == pytest.approx(
        0.5
    )  # 10 tok/s of a 20 tok/s ceiling
    efficiency = {"llama.cpp": 0.5, "transformers": 0.25}
    for repo_id, share in (("me/ggufs", 0.5), ("me/gptq", 0.25)):
        for row in plan.plan(
            repo_id, efficiency=efficiency, bandwidth=1e9, device="cpu", free_ram=GIB
        ):
            assert row["ceiling_tok_s"] == pytest.approx(1e9 / row["bytes_per_token"])
            assert row["predicted_tok_s"] == pytest.approx(row["ceiling_tok_s"] * share)
    [row] = plan.plan(
        "me/hf", device="cpu", free_ram=GIB
    )  # nothing measured: no prediction, the rest stands
    assert row["predicted_tok_s"] is None and row["memory_bytes"] > 0


def test_bad_repos_give_the_course_errors(served):
    with pytest.raises(RepoNotFoundError, match="No repo 'me/nothing'"):
        plan.plan("me/nothing")
    with pytest.raises(NoMatchingFilesError, match="nothing to plan"):
        plan.plan("me/readme-only")
