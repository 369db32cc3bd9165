"""How far must the reference's weights move off the grid? Measure course/reference.py's SPREAD.

    # spreads 1.0,1.1,1.25,1.5; GGUF types only (~5 min)
    .venv/bin/python tools/reference_spread.py
    # + GPTQ as the course builds it (~10 min on 2 cores)
    .venv/bin/python tools/reference_spread.py --gptq
    .venv/bin/python tools/reference_spread.py --spreads 1.0,1.25

For each spread it rebuilds the reference the way `course.models` builds `hf` (the shipped GGUF
loaded by Transformers, then `move_off_grid(spread)`), converts it to f16 with llama.cpp, quantizes
that to Q4_K_M, Q4_0 and Q8_0, and prints each one's held-out perplexity as a ratio to the
reference's. Spread 1.0 is the plain dequantized model, still on the shipped file's grid: Q4_K_M
costs nothing there. Too small a spread leaves most weights next to their old grid point; too large
a one makes every format's job harder. The course's value is where Q4_K_M's cost stops growing
quickly. Needs the course models (`make models`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spreads", default="1.0,1.1,1.25,1.5")
    parser.add_argument(
        "--gptq", action="store_true", help="also quantize each reference with GPTQ (slow)"
    )
    args = parser.parse_args()
    # as `course.models` sets them for its builds
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from course import models as course_models
    from course import reference
    from helpers.gguf_convert import convert_hf_to_gguf, find_converter, quantize_gguf
    from helpers.env import default_threads
    from helpers.quality import gguf_perplexity, transformers_perplexity

    torch.set_num_threads(default_threads())
    paths = course_models.ensure(["gguf", "hf"])
    gguf, hf = paths["gguf"], paths["hf"]
    converter = find_converter(download=True)
    _, model = course_models.load_dequantized()  # as the hf build does, before move_off_grid
    dequantized = {k: v.clone() for k, v in model.state_dict().items()}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spread in [float(s) for s in args.spreads.split(",")]:
            model.load_state_dict(dequantized)
            reference.move_off_grid(model, spread=spread)
            folder = Path(tmp) / f"spread-{spread}"
            model.save_pretrained(folder)
            for f in hf.iterdir():  # the course's tokenizer files (with its added tokens)
                if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
                    shutil.copy(f, folder / f.name)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            fp32 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            ppl = {"reference": transformers_perplexity(fp32, tokenizer)}
            del fp32
            f16 = Path(tmp) / "f16.gguf"
            convert_hf_to_gguf(folder, f16, outtype="f16", vocab_from=gguf, converter=converter)
            for qtype in ("Q4_K_M", "Q4_0", "Q8_0"):
                quantize_gguf(f16, Path(tmp) / "q.gguf", qtype)
                ppl[qtype] = gguf_perplexity(Path(tmp) / "q.gguf", n_threads=default_threads())
            if args.gptq:
                from gptqmodel import GPTQModel, QuantizeConfig

                from helpers.quantize import save_as

                quantized = GPTQModel.load(
                    str(folder),
                    QuantizeConfig(bits=4, group_size=128, sym=True),
                    dtype=getattr(torch, course_models.BUILD_DTYPE),
                )
                quantized.quantize(course_models.calibration_rows(tokenizer), batch_size=1)
                save_as(quantized, Path(tmp) / "gptq", "bfloat16")
                del quantized
                reloaded = AutoModelForCausalLM.from_pretrained(
                    Path(tmp) / "gptq", dtype=torch.bfloat16
                )
                ppl["GPTQ"] = transformers_perplexity(reloaded, tokenizer)
                shutil.rmtree(Path(tmp) / "gptq")
            shutil.rmtree(folder)
            rows[spread] = {"reference ppl": ppl.pop("reference")} | ppl
            print(
                f"spread {spread}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[spread].items()),
                flush=True,
            )
    table = pd.DataFrame(rows).T
    for column in table.columns[1:]:
        table[column] = table[column] / table["reference ppl"]
    print("\nperplexity of each quantized file / the reference's (held-out English text):")
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
