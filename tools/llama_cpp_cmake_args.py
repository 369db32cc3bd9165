"""Print the CMAKE_ARGS that `make setup` builds llama-cpp-python with (standard library only).

    python tools/llama_cpp_cmake_args.py            # e.g. -DLLAVA_BUILD=OFF
    python tools/llama_cpp_cmake_args.py --explain  # and why, on stderr

Always: -DLLAVA_BUILD=OFF (the multimodal part: the course does not use it, a quarter of the build).

On x86 CPUs that list AMX (Xeon Sapphire Rapids and newer; no laptop has it): llama.cpp's default
build (GGML_NATIVE, i.e. -march=native) compiles its AMX matrix kernels in, and on a virtual machine
of this kind they died with "Illegal instruction" (SIGILL at `tileloadd`) on the first prompt of
more than one token, while a plain AMX test program ran fine: ggml configures the tile registers
once per thread and expects them to stay configured. So there the build names every instruction set
the CPU lists, AMX left out (GGML_NATIVE=OFF). Everywhere else llama.cpp's native build is kept.
"""

from __future__ import annotations

import platform
import sys

# ggml option -> the /proc/cpuinfo flags it needs (all of them)
GGML_X86 = {
    "GGML_SSE42": ["sse4_2"],
    "GGML_AVX": ["avx"],
    "GGML_AVX2": ["avx2"],
    "GGML_FMA": ["fma"],
    "GGML_F16C": ["f16c"],
    "GGML_BMI2": ["bmi2"],
    "GGML_AVX_VNNI": ["avx_vnni"],
    "GGML_AVX512": ["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"],
    "GGML_AVX512_VBMI": ["avx512vbmi"],
    "GGML_AVX512_VNNI": ["avx512_vnni"],
    "GGML_AVX512_BF16": ["avx512_bf16"],
}
AMX_FLAGS = {"amx_tile", "amx_int8", "amx_bf16"}


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cmake_args(flags: set[str] | None = None, machine: str | None = None) -> tuple[list[str], str]:
    """(the -D arguments, one line on why) for a CPU with `flags` (default: this one)."""
    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    args = ["-DLLAVA_BUILD=OFF"]
    if machine not in ("x86_64", "amd64") or not flags & AMX_FLAGS:
        return args, "native build (-march=native): this CPU lists no AMX"
    args.append("-DGGML_NATIVE=OFF")
    for option, needs in GGML_X86.items():
        args.append(f"-D{option}={'ON' if all(f in flags for f in needs) else 'OFF'}")
    args += ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    return args, (
        "this CPU lists AMX, whose llama.cpp kernels crashed (SIGILL) on such machines: building "
        "for its other instruction sets, AMX off"
    )


if __name__ == "__main__":
    found, why = cmake_args()
    if "--explain" in sys.argv:
        print(f"llama-cpp-python CMAKE_ARGS: {why}", file=sys.stderr)
    print(" ".join(found))
