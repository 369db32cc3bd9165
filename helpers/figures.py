"""Concept figures the notebooks open their sections with: schematic, drawn with matplotlib, no
image files.

    from helpers import figures
    # 02: one column rounded, its error pushed onto the columns to its right
    figures.gptq_update()
    # 03: scale the salient input channels up, fold 1/s into the previous op
    figures.awq_scaling()
    # 04: header, metadata, tensor table, data (counts from a real header)
    figures.gguf_layout(header)
    # 08: the prompt read at once, then one token at a time: TTFT and decode tok/s
    figures.prefill_decode()

Each draws and shows one figure (plt.show()). The shapes are illustrations, not data;
where a figure carries numbers (the GGUF layout), they come from the file passed in.
"""

from __future__ import annotations

BLUE, ORANGE, GREEN, GREY, RED = "#4c72b0", "#dd8452", "#55a868", "#cccccc", "#c44e52"


def _show():
    import matplotlib.pyplot as plt

    plt.show()


def _axes(width: float, height: float, columns: int = 1):
    """One blank drawing area (columns=1), or `columns` plotting areas side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=(width, height))
    if columns == 1:
        axes.set_axis_off()
    return fig, axes


def _box(ax, x, y, w, h, fill, text="", **text_kw):
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((x, y), w, h, facecolor=fill, edgecolor="white", linewidth=1))
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", **text_kw)


def gptq_update(columns: int = 16, current: int = 5, block: int = 8, group: int = 4):
    """The weight matrix seen column by column (input channels left to right)."""
    _, ax = _axes(9, 3.2)
    for c in range(columns):
        color = (
            GREEN
            if c < current
            else ORANGE
            if c == current
            else BLUE
            if c // block == current // block
            else GREY
        )
        for r in range(6):
            _box(ax, c, r, 1, 1, color)
    for c in range(0, columns + 1, group):  # group boundaries: one scale per group and output row
        ax.plot([c, c], [-0.2, 6.2], color="black", lw=0.8, ls=":")
    ax.plot([block, block], [-0.4, 6.4], color="black", lw=2)
    ax.annotate(
        "",
        xy=(columns - 0.5, 6.6),
        xytext=(current + 0.5, 6.6),
        arrowprops=dict(arrowstyle="->", color=RED, lw=1.5),
    )
    ax.text(
        (current + columns) / 2,
        6.85,
        "error of the rounded column x row of H⁻¹ (Cholesky factor) "
        "→ subtracted from every column to its right",
        ha="center",
        color=RED,
        fontsize=9,
    )
    ax.text(current / 2, -0.8, "rounded: fixed", ha="center", fontsize=9, color=GREEN)
    ax.text(current + 0.5, -0.8, "now", ha="center", fontsize=9, color=ORANGE)
    ax.text(
        (current + 1 + block) / 2,
        -0.8,
        "updated at once\n(lazy batch)",
        ha="center",
        va="top",
        fontsize=9,
        color=BLUE,
    )
    ax.text(
        (block + columns) / 2,
        -0.8,
        "updated once per batch",
        ha="center",
        fontsize=9,
        color="#777777",
    )
    ax.text(-0.3, 3, "output\nrows", ha="right", va="center", fontsize=9)
    ax.text(
        group / 2, 7.5, f"dotted: groups of {group} inputs (one scale each)", ha="left", fontsize=8
    )
    ax.set_xlim(-2, columns + 0.5)
    ax.set_ylim(-1.8, 8)
    ax.set_title(
        "GPTQ: round one input column, push its error onto the columns not yet rounded", fontsize=10
    )
    _show()


def awq_scaling(channels: int = 12, salient=(3, 8)):
    """Activation magnitude per input channel, the scale AWQ picks from it, and where 1/s goes."""
    import numpy as np

    fig, (left, right) = _axes(10, 3, columns=2)
    mean_x = np.full(channels, 1.0)
    for c in salient:
        mean_x[c] = 6.0
    scale = mean_x**0.5
    idx = np.arange(channels)
    colors = [ORANGE if c in salient else BLUE for c in idx]
    left.bar(idx, mean_x, color=colors)
    left.set_title("mean |x| per input channel (calibration text)", fontsize=9)
    left.set_xticks([])
    right.bar(idx, scale, color=colors)
    right.set_title("s = mean|x|^α / mean|w|^(1-α), here α = 0.5", fontsize=9)
    right.set_xticks([])
    fig.text(
        0.5,
        -0.06,
        "W·x = (W·diag(s)) · (diag(s)⁻¹·x):   the weights of salient channels are scaled up "
        "before rounding (finer steps where errors hurt most),\nand 1/s is folded into the "
        "operation before (an RMSNorm's weight, or the previous linear), so inference costs "
        "nothing extra.",
        ha="center",
        va="top",
        fontsize=9,
    )
    fig.suptitle("AWQ: protect the input channels with large activations, then round", fontsize=10)
    fig.tight_layout()
    _show()


def gguf_layout(header=None):
    """A GGUF file from start to end; with a header (helpers.gguf_tools.read_gguf), its real counts
    and sizes."""
    _, ax = _axes(9, 2.6)
    if header is not None:
        n_kv, n_tensors = len(header.metadata), len(header.tensors)
        data_bytes = sum(t.n_bytes for t in header.tensors)
        labels = [
            f"header\nmagic GGUF,\nversion {header.version}",
            f"metadata: {n_kv} keys\n(architecture, tokenizer,\nchat template, ...)",
            f"tensor table: {n_tensors} entries\n(name, shape, type, offset)",
            f"tensor data: {data_bytes / 1e6:,.0f} MB\n(aligned blocks, one type per tensor)",
        ]
    else:
        labels = [
            "header\nmagic GGUF, version",
            "metadata\n(architecture, tokenizer,\nchat template, ...)",
            "tensor table\n(name, shape, type, offset)",
            "tensor data\n(aligned blocks, one type per tensor)",
        ]
    widths = [1.4, 2.6, 2.9, 4.5]
    colors = [GREY, BLUE, GREEN, ORANGE]
    x = 0.0
    for label, w, color in zip(labels, widths, colors, strict=True):
        _box(ax, x, 0, w, 1, color, label, fontsize=8, color="black")
        x += w
    ax.annotate(
        "", xy=(x, -0.25), xytext=(0, -0.25), arrowprops=dict(arrowstyle="->", color="#555555")
    )
    first = f"{header.data_offset / 1e6:.1f} MB" if header is not None else "few MB"
    ax.text(
        x / 2,
        -0.45,
        f"one file, read from the start: a Range request for its first {first} gives everything "
        "but the data (notebook 01 sizes a download that way)",
        ha="center",
        va="top",
        fontsize=8,
    )
    ax.set_xlim(-0.1, x + 0.1)
    ax.set_ylim(-0.9, 1.3)
    ax.set_title("A GGUF file: everything llama.cpp needs, in one file", fontsize=10)
    _show()


def prefill_decode(prompt_tokens: int = 8, new_tokens: int = 6):
    """The timeline of one generation call, with the course's two speed definitions."""
    _, ax = _axes(9, 2.4)
    prefill = 2.0
    step = 0.8
    _box(
        ax,
        0,
        0,
        prefill,
        1,
        BLUE,
        f"prefill: all {prompt_tokens} prompt tokens\nat once (compute-bound)",
        fontsize=8,
        color="white",
    )
    for i in range(new_tokens):
        _box(
            ax, prefill + i * step, 0, step, 1, ORANGE if i == 0 else GREEN, f"t{i + 1}", fontsize=8
        )
    end = prefill + new_tokens * step
    ax.annotate(
        "",
        xy=(prefill + step, 1.25),
        xytext=(0, 1.25),
        arrowprops=dict(arrowstyle="<->", color=BLUE),
    )
    ax.text(
        (prefill + step) / 2,
        1.35,
        "TTFT: call → first new token",
        ha="center",
        fontsize=8,
        color=BLUE,
    )
    ax.annotate(
        "",
        xy=(end, -0.25),
        xytext=(prefill + step, -0.25),
        arrowprops=dict(arrowstyle="<->", color=GREEN),
    )
    ax.text(
        (prefill + step + end) / 2,
        -0.45,
        f"decode tok/s = ({new_tokens} − 1) tokens / (last − first): one token "
        "per step, each reading every weight (memory-bound)",
        ha="center",
        va="top",
        fontsize=8,
        color="#2d6b3a",
    )
    ax.set_xlim(-0.1, end + 0.1)
    ax.set_ylim(-1.0, 1.7)
    ax.set_title("One generation call: prefill, then decoding", fontsize=10)
    _show()
