"""The concept figures draw, headless, and a GGUF layout carries the counts of the file it is
given."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from helpers import figures  # noqa: E402


@pytest.mark.parametrize(
    "draw, titles, suptitle",
    [
        (
            figures.gptq_update,
            ["GPTQ: round one input column, push its error onto the columns not yet rounded"],
            "",
        ),
        (
            figures.awq_scaling,
            [
                "mean |x| per input channel (calibration text)",
                "s = mean|x|^α / mean|w|^(1-α), here α = 0.5",
            ],
            "AWQ: protect the input channels with large activations, then round",
        ),
        (figures.prefill_decode, ["One generation call: prefill, then decoding"], ""),
        (figures.gguf_layout, ["A GGUF file: everything llama.cpp needs, in one file"], ""),
    ],
    ids=["gptq_update", "awq_scaling", "prefill_decode", "gguf_layout"],
)
def test_each_figure_draws_with_its_title(draw, titles, suptitle):
    plt.close("all")
    draw()
    fig = plt.gcf()
    assert [ax.get_title() for ax in fig.axes] == titles
    assert fig.get_suptitle() == suptitle
    plt.close("all")


def test_gguf_layout_shows_the_files_own_counts(tmp_path, small_gguf):
    from helpers import gguf_tools

    path = tmp_path / "small.gguf"
    path.write_bytes(small_gguf)
    header = gguf_tools.read_gguf(path)
    plt.close("all")
    figures.gguf_layout(header)
    texts = " ".join(t.get_text() for t in plt.gcf().axes[0].texts)
    assert (
        f"metadata: {len(header.metadata)} keys" in texts
        and f"tensor table: {len(header.tensors)} entries" in texts
    )
    plt.close("all")
