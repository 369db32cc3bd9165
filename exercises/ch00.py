"""Exercises of notebook 00 (the environment check)."""

from __future__ import annotations

from . import close, say, verdict


def _rule(native_bf16: bool, work: str) -> str:
    """The course's one rule (helpers.precision.compute_dtype), asked about a CPU that is not this
    one."""
    from helpers import precision

    original = precision.cpu_bf16
    precision.cpu_bf16 = lambda: (native_bf16, "the exercise's CPU")
    try:
        return precision.compute_dtype("cpu", work).dtype
    finally:
        precision.cpu_bf16 = original


def check_1(answer: dict) -> bool:
    """Exercise 1: {(cpu, work): dtype} the course computes in, for cpu in ("avx2 laptop",
    "amx server") and work in ("batch", "decode")."""
    truth = {
        (cpu, work): _rule(native, work)
        for cpu, native in (("avx2 laptop", False), ("amx server", True))
        for work in ("batch", "decode")
    }
    answer = answer if isinstance(answer, dict) else {}
    wrong = [
        key
        for key, dtype in truth.items()
        if str(answer.get(key, "")).replace("torch.", "") != dtype
    ]
    return verdict(
        not wrong,
        say(
            en="bf16 wherever it is native; where it is emulated, only for one row at a time.",
            zh="CPU 原生支持 bf16 时处处用 bf16；靠模拟时，只在一次处理一行时用。",
        ),
        say(
            en=f"look again at {wrong}: which work is memory-bound, "
            "and which CPU multiplies bf16 natively?",
            zh=f"再看看 {wrong}：哪种工作受限于内存带宽？哪种 CPU 能原生做 bf16 乘法？",
        ),
    )


BATCH_OR_DECODE = (
    "calibrating GPTQ on 4 x 256 tokens",
    "the perplexity of a 537-token text",
    "reading a 300-token prompt",
    "generating the 50th token of a reply",
)


def check_2(answer: dict) -> bool:
    """Exercise 2: {work: "batch" or "decode"} for each item of `BATCH_OR_DECODE`."""
    truth = dict(zip(BATCH_OR_DECODE, ("batch", "batch", "batch", "decode"), strict=True))
    answer = answer if isinstance(answer, dict) else {}
    wrong = [work for work, kind in truth.items() if answer.get(work) != kind]
    return verdict(
        not wrong,
        say(
            en="many rows at once is batch work, even a prompt; one new token at a time is "
            "decoding.",
            zh="一次处理很多行就是批量工作，读提示词也是；一次生成一个新 token 才是解码。",
        ),
        say(
            en=f"look again at {wrong}: how many rows does each multiply by the weights in one "
            "step?",
            zh=f"再看看 {wrong}：每一项在一步里要拿多少行去乘权重？",
        ),
    )


def check_3(answer: dict, bandwidth_Bps: float = 20e9, path=None) -> bool:
    """Exercise 3: {"bfloat16": tok/s, "float32": tok/s}, the decode ceilings of the course's `hf`
    model at `bandwidth_Bps` bytes per second, if every weight is read once per token in that
    dtype."""
    from safetensors import safe_open

    from course import models as course_models

    params = 0
    for file in sorted((path or course_models.model_path("hf")).glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for name in f.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                n = 1
                for d in f.get_slice(name).get_shape():
                    n *= d
                params += n
    truth = {"bfloat16": bandwidth_Bps / (2 * params), "float32": bandwidth_Bps / (4 * params)}
    answer = answer if isinstance(answer, dict) else {}
    ok = all(close(answer.get(k), v, 0.01) for k, v in truth.items())
    return verdict(
        ok,
        say(
            en="half the bytes, twice the ceiling: why decoding is faster in bf16 even where its "
            "arithmetic is emulated.",
            zh="字节数减半，上限翻倍：这就是为什么即使 bf16 运算靠模拟，用 bf16 解码也更快。",
        ),
        say(
            en="count the parameters in the hf model's safetensors file; a token reads each one "
            "once: 2 bytes in bf16, 4 in fp32; divide the bandwidth by the bytes.",
            zh="数一数 hf 模型 safetensors 文件里的参数个数；每个 token 把每个参数读一次："
            "bf16 是 2 字节，fp32 是 4 字节；用带宽除以字节数。",
        ),
    )
