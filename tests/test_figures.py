"""The concept figures draw, headless, and a GGUF layout carries the counts of the file it is
given."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from helpers import figures  # noqa: E402


@pytest.mark.parametrize(
    "draw", [figures.gptq_update, figures.awq_scaling, figures.prefill_decode, figures.gguf_layout]
)
def test_each_figure_draws_with_a_title(draw):
    plt.close("all")
    draw()
    fig = plt.gcf()
    titles = [ax.get_title() for ax in fig.axes] + [
        fig._suptitle.get_text() if fig._suptitle else ""
    ]
    assert any(titles), draw.__name__
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
