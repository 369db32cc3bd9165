"""The `bench` command: a small subset writes a complete JSON; bad requests fail clearly.

No duration is asserted: only that the numbers are there, positive and consistent.
"""

import json
from pathlib import Path

import pytest

from bench import compare
from bench.__main__ import main
from course.models import QUALITY_GATE

ROOT = Path(__file__).resolve().parent.parent


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(
        compare.BenchError, match="gguf, gptq, awq, hf-bf16, hf-fp32, gguf-transformers"
    ):
        compare.parse_formats("gguf,ggml")
    assert compare.parse_formats("gguf, hf-bf16,gguf") == ["gguf", "hf-bf16"]


def test_cli_bad_arguments_exit_2(capsys):
    assert main(["--formats", "exl2"]) == 2
    assert "Unknown format" in capsys.readouterr().err
    assert main(["--formats", "gguf", "--source", "gguf"]) == 2
    assert "FORMAT=PATH" in capsys.readouterr().err


def test_quality_refuses_sources_that_are_not_one_model(tmp_path, course_cache, capsys):
    from course import models as course_models

    other = tmp_path / "tiny-llama"
    other.mkdir()
    config = {"model_type": "llama", "vocab_size": 32000, "num_hidden_layers": 2, "hidden_size": 64}
    (other / "config.json").write_text(json.dumps(config))
    course = {
        "gguf": str(course_models.model_path("gguf")),
        "gptq": str(course_models.model_path("gptq")),
    }
    compare.check_one_model(course)  # the course's formats are one model
    code = main(["--formats", "gguf,gptq", "--source", f"gptq={other}", "--new-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "needs one model in every format" in err
    assert "gptq: 32,000 tokens, 2 layers, hidden 64" in err
    assert "gguf: 262,144 tokens, 18 layers, hidden 640" in err
    assert "--no-quality" in err


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, course_cache):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    code = main(
        [
            "--formats",
            "gguf,hf-bf16",
            "--new-tokens",
            "3",
            "--warmup",
            "1",
            "--repeats",
            "2",
            "--prompt",
            "The printing press",
            "--threads",
            "2",
            "--progress",
            "none",
            "--out",
            str(out),
            "--long-prompt",
            "The printing press spread across Europe in a few decades. " * 8,
        ]
    )
    return code, out


def test_small_run_writes_complete_json(small_run):
    code, out = small_run
    assert code == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert {
        "schema",
        "created",
        "machine",
        "versions",
        "settings",
        "bandwidth",
        "results",
        "ratios",
        "runs",
    } <= set(report)
    assert report["settings"]["new_tokens"] == 3
    assert (
        report["logs"] is None and not out.with_name("results-logs").exists()
    )  # no failure, no logs left
    assert report["bandwidth"]["cpu_Bps"] > 0
    rows = {r["format"]: r for r in report["results"]}
    assert list(rows) == ["gguf", "hf-bf16"]
    for name, row in rows.items():
        assert "error" not in row, row.get("error")
        for key in compare.TABLE_COLUMNS:
            assert row[key] is not None and row[key] >= 0, (name, key)
        assert row["new_tokens"] == 3 and row["runs"] == 2
        assert row["peak_rss_MiB"] > row["runtime_rss_MiB"] > 0
        assert row["ceiling_tok_s"] == pytest.approx(
            report["bandwidth"]["cpu_Bps"] / row["bytes_per_token"]
        )
        assert row["pct_of_ceiling"] == pytest.approx(
            100 * row["decode_tok_s"] / row["ceiling_tok_s"]
        )
    assert rows["gguf"]["backend"] == "llama.cpp" and rows["hf-bf16"]["backend"] == "transformers"
    assert rows["hf-bf16"]["top1_agreement"] == 1.0  # the reference agrees with itself
    assert 0.5 < rows["gguf"]["top1_agreement"] <= 1.0
    assert (
        rows["gguf"]["heldout_tokens"] == rows["hf-bf16"]["heldout_tokens"]
    )  # same tokens, comparable
    # the gguf is Q4_K_M quantized from hf-bf16 (the off-grid reference): it pays a 4-bit cost,
    # within the gate
    assert 1.0 < rows["gguf"]["perplexity"] / rows["hf-bf16"]["perplexity"] <= QUALITY_GATE
    # and the same on the Chinese held-out text, measured separately (its own tokens, its own
    # reference)
    assert (
        rows["hf-bf16"]["top1_agreement_zh"] == 1.0
        and 0.5 < rows["gguf"]["top1_agreement_zh"] <= 1.0
    )
    assert (
        rows["gguf"]["heldout_tokens_zh"]
        == rows["hf-bf16"]["heldout_tokens_zh"]
        != rows["gguf"]["heldout_tokens"]
    )
    assert 1.0 < rows["gguf"]["perplexity_zh"] / rows["hf-bf16"]["perplexity_zh"] <= QUALITY_GATE
    assert rows["gguf"]["perplexity_zh"] != rows["gguf"]["perplexity"]
    assert rows["gguf"]["bytes_per_token"] < rows["hf-bf16"]["bytes_per_token"]
    assert report["ratios"]["gguf"]["decode_speed"] == 1.0
    hf = report["ratios"]["hf-bf16"]
    assert hf["decode_speed"] == pytest.approx(
        rows["hf-bf16"]["decode_tok_s"] / rows["gguf"]["decode_tok_s"]
    )
    assert len(report["runs"]) == 2 * 2  # repeats x formats x one prompt
    assert {r["new_tokens"] for r in report["runs"]} == {3}
    # the long prompt ran on the formats asked for that were in the run (hf-fp32 was not), and only
    # there
    assert report["settings"]["long_prompt_formats"] == ["hf-bf16"]
    assert rows["hf-bf16"]["long_prompt_tokens"] > 8 * rows["hf-bf16"]["prompt_tokens"] / 2
    assert rows["hf-bf16"]["long_prompt_tok_s"] > 0
    assert "long_prompt_tok_s" not in rows["gguf"]


def test_rounds_alternate_the_order(small_run):
    report = json.loads(small_run[1].read_text(encoding="utf-8"))
    firsts = [next(r["format"] for r in report["runs"] if r["round"] == n) for n in (1, 2)]
    assert firsts == ["gguf", "hf-bf16"]


def test_table_shows_the_json_numbers(small_run):
    report = compare.load_results(small_run[1])
    table = compare.results_table(report)
    assert list(table.index) == ["gguf", "hf-bf16"]
    assert table.loc["gguf", "decode tok/s"] == report["results"][0]["decode_tok_s"]
    assert any(
        "hf-bf16" in line and "x llama.cpp's speed" in line
        for line in compare.ratio_sentences(report)
    )


def _notebook_cell(notebook: Path, text: str) -> str:
    """The source of the one code cell of `notebook` that contains `text`."""
    import nbformat

    cells = [
        c.source
        for c in nbformat.read(notebook, as_version=4).cells
        if c.cell_type == "code" and text in c.source
    ]
    assert len(cells) == 1, f"{notebook.name}: {len(cells)} code cells contain {text!r}"
    return cells[0]


def test_the_compare_plot_of_notebook_08_shows_every_format(small_run, monkeypatch):
    """Notebook 08's own cells (parameters, table, plot) on the small run's results: one disc per
    format where its decode speed and perplexity are, sized by its file, labelled with its name and
    size, inside the axes, with the axis labels and the machine in the title; drawn, not blank."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.collections import PathCollection

    notebook = ROOT / "notebooks" / "08_compare.ipynb"
    report = compare.load_results(small_run[1])
    rows = {r["format"]: r for r in report["results"]}
    plt.close("all")
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)  # keep the figure to look at
    namespace = {"json": json, "results_path": small_run[1]}
    for text in ("FORMATS = [", "report = json.loads(results_path", "ax.scatter("):
        exec(_notebook_cell(notebook, text), namespace)
    assert plt.get_fignums() == [1]
    fig = plt.gcf()
    (ax,) = fig.axes
    assert ax.get_xlabel() == "decode speed (tokens/s, median; higher is better)"
    assert ax.get_ylabel() == "perplexity, English held-out text (lower is better)"
    machine, threads = report["machine"], report["settings"]["threads"]
    assert ax.get_title() == f"Gemma 3 270M on {machine['cpu']}, {threads} threads"

    # the discs, drawn in order of perplexity, one per format, each where its figures are
    by_perplexity = sorted(rows, key=lambda name: rows[name]["perplexity"])
    assert by_perplexity == ["hf-bf16", "gguf"]  # the 4-bit file is the less exact one
    discs = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(discs) == len(rows) == 2
    for disc, name in zip(discs, by_perplexity, strict=True):
        row = rows[name]
        assert disc.get_offsets().tolist() == [[row["decode_tok_s"], row["perplexity"]]], name
        assert disc.get_sizes().tolist() == [pytest.approx(row["size_MB"] * 1.5)], name
    # one colour per format, in the table's order (the results' order: gguf, then hf-bf16)
    colours = [tuple(disc.get_facecolor()[0][:3]) for disc in discs]
    tab10 = plt.cm.tab10.colors
    assert colours == [tuple(tab10[list(rows).index(name)]) for name in by_perplexity]
    labels = [(t.get_text(), tuple(t.xy)) for t in ax.texts]
    assert labels == [
        (
            f"{name}, {rows[name]['size_MB']:.0f} MB",
            (rows[name]["decode_tok_s"], rows[name]["perplexity"]),
        )
        for name in by_perplexity
    ]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for row in rows.values():  # every disc inside the axes, none cut off at an edge
        assert x0 < row["decode_tok_s"] < x1 and y0 < row["perplexity"] < y1

    # the picture: the figure's size, mostly white, with both formats' colours in it
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close("all")
    pixels = plt.imread(io.BytesIO(buffer.getvalue()), format="png")[..., :3]
    assert pixels.shape == (450, 750, 3)  # figsize=(7.5, 4.5)
    inked = (pixels < 0.9).any(axis=-1).mean()
    assert 0.01 < inked < 0.5, inked
    for colour in colours:  # alpha 0.55 over white: where the disc does not overlap another
        blended = 0.55 * np.array(colour) + 0.45
        near = (np.abs(pixels - blended) < 0.03).all(axis=-1).sum()
        assert near > 200, (colour, near)


def test_a_format_that_fails_to_load_is_reported_not_fatal(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(
        [
            "--formats",
            "gguf",
            "--source",
            f"gguf={tmp_path / 'missing.gguf'}",
            "--no-quality",
            "--new-tokens",
            "2",
            "--repeats",
            "1",
            "--progress",
            "none",
            "--out",
            str(out),
        ]
    )
    assert code == 1
    report = json.loads(out.read_text(encoding="utf-8"))
    assert "does not exist" in report["results"][0]["error"]
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "r-logs" in printed
    assert (tmp_path / "r-logs" / "gguf.log").exists()  # kept because it failed
    assert not list(tmp_path.glob("*.partial"))


# ---- predicted decode speed, and GGUF types as extra llama.cpp formats -------------------------


def test_predictions_are_calibrated_on_one_row_per_backend():
    results = [
        {"format": "gguf", "backend": "llama.cpp", "decode_tok_s": 50.0, "ceiling_tok_s": 100.0},
        {"format": "gguf-F16", "backend": "llama.cpp", "decode_tok_s": 20.0, "ceiling_tok_s": 50.0},
        {
            "format": "hf-bf16",
            "backend": "transformers",
            "decode_tok_s": 10.0,
            "ceiling_tok_s": 40.0,
        },
        {"format": "gptq", "backend": "transformers", "decode_tok_s": 5.0, "ceiling_tok_s": 60.0},
        {"format": "awq", "error": "failed to load"},
    ]
    predicted = compare.predictions(results)
    # ceiling x the efficiency of the backend's calibration row: gguf 50/100, hf-bf16 10/40
    assert predicted["gguf"] == {
        "predicted_tok_s": 50.0,
        "predicted_vs_measured": 1.0,
    }  # 1.00 by construction
    assert predicted["hf-bf16"]["predicted_vs_measured"] == 1.0
    assert predicted["gguf-F16"] == {"predicted_tok_s": 25.0, "predicted_vs_measured": 1.25}
    assert predicted["gptq"] == {"predicted_tok_s": 15.0, "predicted_vs_measured": 3.0}
    assert "awq" not in predicted
    report = {"results": [dict(r, **predicted.get(r["format"], {})) for r in results]}
    assert compare.prediction_sentences(report) == [
        "gguf-F16           predicted   25.0 tok/s, measured   20.0: 1.25 (within ±30%)",
        "gptq               predicted   15.0 tok/s, measured    5.0: 3.00 (outside ±30%)",
    ]
    assert compare.predictions(results[1:]).keys() == {
        "hf-bf16",
        "gptq",
    }  # no gguf row: no llama.cpp prediction


def test_gguf_types_become_llama_cpp_formats_named_by_their_type(tmp_path):
    from gguf import LlamaFileType

    from bench import worker
    from tests.test_plan import write_gguf

    write_gguf(tmp_path / "a.gguf", False, LlamaFileType.MOSTLY_Q8_0)
    write_gguf(tmp_path / "b.gguf", False, LlamaFileType.MOSTLY_F16)
    (tmp_path / "b.gguf.log").write_text("not a model")
    assert compare.gguf_type_formats(tmp_path) == {
        "gguf-Q8_0": str(tmp_path / "a.gguf"),
        "gguf-F16": str(tmp_path / "b.gguf"),
    }
    assert worker.spec("gguf-Q8_0") == ("gguf", {}, "llama.cpp, GGUF Q8_0")
    assert worker.spec("gguf-transformers") == worker.FORMATS["gguf-transformers"]
    with pytest.raises(compare.BenchError, match="no such folder"):
        compare.gguf_type_formats(tmp_path / "missing")


def test_gguf_types_are_timed_in_llama_cpp_without_quality(tmp_path, course_cache, capsys):
    from course import models as course_models

    types = tmp_path / "types"
    types.mkdir()
    (types / "a-copy.gguf").symlink_to(
        course_models.model_path("gguf")
    )  # the same file, as a second format
    out = tmp_path / "r.json"
    code = main(
        [
            "--formats",
            "gguf",
            "--gguf-types",
            str(types),
            "--new-tokens",
            "3",
            "--repeats",
            "1",
            "--prompt",
            "The printing press",
            "--threads",
            "2",
            "--progress",
            "none",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    rows = {r["format"]: r for r in report["results"]}
    assert list(rows) == ["gguf", "gguf-Q4_K_M"] and report["settings"]["gguf_types"] == [
        "gguf-Q4_K_M"
    ]
    assert (
        rows["gguf-Q4_K_M"]["backend"] == "llama.cpp"
        and rows["gguf-Q4_K_M"]["what"] == "llama.cpp, GGUF Q4_K_M"
    )
    assert (
        "perplexity" in rows["gguf"] and "perplexity" not in rows["gguf-Q4_K_M"]
    )  # quality only where asked
    assert rows["gguf"]["predicted_vs_measured"] == 1.0  # the llama.cpp calibration row, exactly
    # the same bytes per token as the calibration row: predicted = what the calibration row measured
    assert rows["gguf-Q4_K_M"]["predicted_tok_s"] == pytest.approx(rows["gguf"]["decode_tok_s"])
    printed = capsys.readouterr().out
    assert "1.00 by construction" in printed and "gguf-Q4_K_M        predicted" in printed
