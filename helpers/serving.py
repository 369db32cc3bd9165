"""Run an OpenAI-compatible server (llama-cpp-python's, or vLLM's on a GPU) as a managed background
process.

    with llama_server(course_models.model_path("gguf"), chat_format="gemma") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="not-needed")
        client.completions.create(model=server.model_alias, prompt="The capital of France is")
    # here the server is gone: its whole process group stopped and reaped, its port closed

The server is `python -m llama_cpp.server --model ... --host 127.0.0.1 --port <free port>` (or
`python -m vllm.entrypoints.openai.api_server ...`, the same as `vllm serve`), started in its own
process group with its output in a log file. Starting waits until `GET /v1/models` answers, or
fails with the log's last lines. Stopping is guaranteed three ways: the
`with` block's exit (also when the body raises), an atexit hook (the Python process ends), and, on
Linux, a parent-death signal (the kernel that started it is killed outright).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CourseError

from .procs import child_command


class ServerError(CourseError):
    """The server did not start, or did not stop."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def process_exists(pid: int) -> bool:
    """True if a process with this id exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill(0); /proc tells the truth on Linux
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@dataclass(eq=False)
class ManagedServer:
    """A running server process: where it listens, its log, and stop()."""

    process: subprocess.Popen
    host: str
    port: int
    model_alias: str
    log_path: Path
    command: list[str]
    started_s: float = 0.0  # seconds from launch until it answered
    temp_log: bool = (
        False  # a log file we made: removed after a normal stop, kept after a failed start
    )
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as base_url."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of the server's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the whole process group (SIGTERM, then SIGKILL after `timeout` s) and reap it.
        Idempotent."""
        if self._stopped:
            return
        try:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
                if self.process.poll() is not None:
                    break
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
            self.process.wait(10.0)  # reap it: no zombie left behind
            # anything else left in its group (it started none, but be sure)
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        except subprocess.TimeoutExpired:
            raise ServerError(
                f"{self.command[2]} (pid {self.pid}) did not exit after SIGKILL."
            ) from None
        finally:
            if self.process.poll() is not None:
                self._stopped = True
                _running.discard(self)
                if self.temp_log and self.started_s:
                    self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ManagedServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


_running: set[ManagedServer] = set()


@atexit.register
def stop_all() -> None:
    """Stop every server this process started (also runs when Python exits)."""
    for server in list(_running):
        with suppress(Exception):
            server.stop(timeout=5.0)


def _get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def start_llama_server(
    model,
    port: int | None = None,
    host: str = "127.0.0.1",
    chat_format: str | None = "gemma",
    n_ctx: int = 2048,
    n_threads: int | None = None,
    model_alias: str | None = None,
    ready_timeout_s: float = 120.0,
    log_path=None,
    extra_args: list[str] | tuple = (),
) -> ManagedServer:
    """Start `python -m llama_cpp.server` on a .gguf file and wait until it answers; see the module
    docstring.

    chat_format: how /v1/chat/completions renders messages ("gemma" for the course model, whose
    GGUF has no chat template; None lets llama-cpp-python use the template in the GGUF). Streamed
    requests are not interrupted by newer ones (the server's default would cut a stream short when
    another request arrives). Raises ServerError with the log's tail if it exits or does not answer
    in time.
    Call it from a long-lived thread (a notebook cell runs in the main thread): Linux sends the
    parent-death signal when the *thread* that started the server ends.
    """
    from helpers.env import default_threads
    from helpers.loading import check_gguf_header

    model = Path(model).expanduser()
    if not model.is_file():
        raise ServerError(
            f"No GGUF file at {model}. Build the course models (`python -m course.models "
            "build`) or download one (notebook 01)."
        )
    check_gguf_header(model)
    alias = model_alias or model.stem
    threads = n_threads or default_threads()
    args = [
        "--model",
        str(model),
        "--model_alias",
        alias,
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--interrupt_requests",
        "False",  # a new request must not cut another client's stream short
        "--logits_all",
        "False",  # True (the default) keeps n_ctx x vocab floats: 2 GiB here
        "--use_mlock",
        "False",
    ]
    if chat_format:
        args += ["--chat_format", chat_format]
    return start_server(
        "llama_cpp.server",
        args + [str(a) for a in extra_args],
        model_alias=alias,
        host=host,
        port=port,
        ready_timeout_s=ready_timeout_s,
        log_path=log_path,
    )


def start_vllm_server(
    model: str,
    quantization: str | None = None,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.90,
    port: int | None = None,
    host: str = "127.0.0.1",
    served_model_name: str | None = None,
    ready_timeout_s: float = 1200.0,
    log_path=None,
    extra_args: list[str] | tuple = (),
) -> ManagedServer:
    """Start vLLM's OpenAI-compatible server (`vllm serve` =
    `python -m vllm.entrypoints.openai.api_server`).

    Needs Linux, NVIDIA GPU(s) and `pip install vllm`. quantization: "gptq_marlin" / "awq_marlin"
    pick the fast Marlin kernels (vLLM also picks them by itself when the GPU supports them);
    tensor_parallel_size: split every layer across that many GPUs (notebook 09). The first start
    downloads and compiles: minutes.
    """
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ServerError(
            "vLLM is not installed. It needs Linux and an NVIDIA GPU: `pip install vllm` (best in "
            "its own environment: it pins its own torch)."
        )
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < tensor_parallel_size:
        raise ServerError(
            f"tensor_parallel_size={tensor_parallel_size} needs that many GPUs; torch sees {gpus}."
        )
    alias = served_model_name or model
    args = [
        "--model",
        model,
        "--served-model-name",
        alias,
        "--tensor-parallel-size",
        str(tensor_parallel_size),
        "--gpu-memory-utilization",
        str(gpu_memory_utilization),
    ]
    if quantization:
        args += ["--quantization", quantization]
    if max_model_len:
        args += ["--max-model-len", str(max_model_len)]
    return start_server(
        "vllm.entrypoints.openai.api_server",
        args + [str(a) for a in extra_args],
        model_alias=alias,
        host=host,
        port=port,
        ready_timeout_s=ready_timeout_s,
        log_path=log_path,
    )


def start_server(
    module: str,
    args: list[str],
    model_alias: str,
    host: str = "127.0.0.1",
    port: int | None = None,
    ready_timeout_s: float = 120.0,
    log_path=None,
) -> ManagedServer:
    """Run `python -m MODULE ARGS --host HOST --port PORT` as a managed server; wait until
    /v1/models answers."""
    port = port or free_port(host)
    if port_is_open(host, port):
        raise ServerError(
            f"Port {port} on {host} is already in use: pass another port, "
            "or port=None for a free one."
        )
    args = [*args, "--host", host, "--port", str(port)]
    temp_log = log_path is None
    if temp_log:
        fd, name = tempfile.mkstemp(prefix=f"{module.split('.')[0]}-server-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log_path = Path(log_path)
    argv, env = child_command(
        module,
        *args,
        on_parent_death=signal.SIGTERM,  # the server shuts down cleanly
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )  # its own process group: killpg stops it all
    server = ManagedServer(
        process=process,
        host=host,
        port=port,
        model_alias=model_alias,
        log_path=log_path,
        command=["python", "-m", module, *args],
        temp_log=temp_log,
    )
    _running.add(server)
    try:
        _wait_ready(server, ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    server.started_s = time.perf_counter() - started
    return server


def _wait_ready(server: ManagedServer, timeout_s: float) -> None:
    name = server.command[2]
    deadline = time.monotonic() + timeout_s
    while True:
        code = server.process.poll()
        if code is not None:
            raise ServerError(
                f"{name} exited with code {code} before it was ready. Its log "
                f"({server.log_path}) ends with:\n{server.log_tail()}"
            )
        try:
            _get_json(f"{server.base_url}/models", timeout=1.0)
            return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise ServerError(
                f"{name} did not answer on {server.base_url} within {timeout_s:.0f} s "
                f"(it was stopped). Its log ({server.log_path}) ends with:\n{server.log_tail()}"
            )
        time.sleep(0.2)


@contextmanager
def llama_server(model, **kwargs):
    """`with llama_server(path) as server:` a started llama_cpp.server, always stopped at the
    end."""
    server = start_llama_server(model, **kwargs)
    try:
        yield server
    finally:
        server.stop()
