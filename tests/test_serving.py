"""helpers.serving: llama-cpp-python's OpenAI-compatible server as a managed process that never
outlives its owner (with-block exit, a raising body, atexit, a killed parent), and clear errors when
it cannot start."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from course import models as course_models
from helpers import serving
from helpers.errors import NotAModelError

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def gone(pid: int, port: int, wait_s: float = 20.0) -> bool:
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if not serving.process_exists(pid) and not serving.port_is_open(HOST, port):
            return True
        time.sleep(0.1)
    return False


def test_serves_openai_completions_chat_and_streams_then_stops(course_cache):
    import openai

    with serving.llama_server(course_models.model_path("gguf"), n_ctx=512, n_threads=2) as server:
        pid, port, log = server.pid, server.port, server.log_path
        assert (
            server.running
            and serving.port_is_open(HOST, port)
            and server.base_url.startswith("http://127.0.0.1:")
        )
        client = openai.OpenAI(base_url=server.base_url, api_key="not-needed")
        assert [m.id for m in client.models.list().data] == [server.model_alias]
        plain = client.completions.create(
            model=server.model_alias, prompt="The capital of France is", max_tokens=8, temperature=0
        )
        assert plain.usage.completion_tokens == 8 and plain.choices[0].text.strip()
        pieces = [
            c.choices[0].text
            for c in client.completions.create(
                model=server.model_alias,
                prompt="The capital of France is",
                max_tokens=8,
                temperature=0,
                stream=True,
            )
        ]
        assert "".join(pieces) == plain.choices[0].text and len(pieces) > 1
        answer = client.chat.completions.create(
            model=server.model_alias,
            max_tokens=8,
            temperature=0,
            messages=[{"role": "user", "content": "你好"}],
        )
        assert answer.choices[0].message.role == "assistant" and answer.usage.prompt_tokens > 0
        assert (
            server.command[:3] == ["python", "-m", "llama_cpp.server"]
            and "--chat_format" in server.command
        )
    assert gone(pid, port) and not server.running
    assert not log.exists()  # a temporary log goes with a normal stop


def test_nothing_is_left_behind_when_the_body_raises(course_cache):
    with (
        pytest.raises(RuntimeError, match="a cell failed"),
        serving.llama_server(course_models.model_path("gguf"), n_ctx=256, n_threads=1) as server,
    ):
        pid, port = server.pid, server.port
        assert serving.process_exists(pid)
        raise RuntimeError("a cell failed")
    assert gone(pid, port)
    with pytest.raises(ConnectionRefusedError):
        __import__("socket").create_connection((HOST, port), timeout=1).close()
    server.stop()  # stopping twice is fine


def test_a_server_that_cannot_start_is_a_clear_error_with_its_log(course_cache, tmp_path):
    before = set(serving._running)
    log = tmp_path / "server.log"
    with pytest.raises(
        serving.ServerError, match=r"exited with code \d+ before it was ready.*(?s:.*)n_ctx"
    ) as err:
        serving.start_llama_server(
            course_models.model_path("gguf"), extra_args=["--n_ctx", "not-a-number"], log_path=log
        )
    assert set(serving._running) == before
    assert (
        str(log) in str(err.value) and "not-a-number" in log.read_text()
    )  # the log is kept for reading


def test_a_server_that_never_answers_is_stopped_after_the_timeout(course_cache, tmp_path):
    with pytest.raises(serving.ServerError, match="did not answer .* within 0 s"):
        serving.start_llama_server(
            course_models.model_path("gguf"), ready_timeout_s=0.0, log_path=tmp_path / "server.log"
        )
    assert not serving._running


def test_refuses_what_is_not_a_gguf_file_before_starting(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>not found</html>")
    with pytest.raises(NotAModelError, match="not a GGUF file"):
        serving.start_llama_server(fake)
    with pytest.raises(serving.ServerError, match="No GGUF file"):
        serving.start_llama_server(tmp_path / "missing.gguf")


def test_a_busy_port_is_refused(course_cache):
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        with pytest.raises(serving.ServerError, match="already in use"):
            serving.start_llama_server(course_models.model_path("gguf"), port=sock.getsockname()[1])


OWNER = """
import sys, time
from course import models as course_models
from helpers import serving
server = serving.start_llama_server(course_models.model_path("gguf"), n_ctx=256, n_threads=1,
                                   log_path=sys.argv[2])
print(server.pid, server.port, flush=True)
if sys.argv[1] == "exit":
    sys.exit(0)          # no stop(): the atexit hook must do it
time.sleep(600)          # killed from outside: the parent-death signal must do it
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_the_server_does_not_outlive_the_python_that_started_it(course_cache, how, tmp_path):
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, how, str(tmp_path / "server.log")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "QLLM_THREADS": "1"},
    )
    try:
        pid, port = map(int, owner.stdout.readline().split())
        if how == "kill":
            assert serving.process_exists(pid)
            owner.send_signal(signal.SIGKILL)
        owner.wait(60)
        assert gone(pid, port), f"server {pid} still running after its owner ended ({how})"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def test_free_port_and_port_checks():
    port = serving.free_port()
    assert 1024 < port < 65536 and not serving.port_is_open(HOST, port)
    assert serving.process_exists(os.getpid()) and not serving.process_exists(2**22 + 12345)


def test_a_notebook_whose_cell_fails_leaves_no_server_behind(course_cache, tmp_path):
    """What nbmake does: run cells in a kernel; a later cell fails; the kernel is shut down."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    pid_file = tmp_path / "pid"
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(f"""
from pathlib import Path
from course import models as course_models
from helpers import serving
server = serving.start_llama_server(course_models.model_path("gguf"), n_ctx=256, n_threads=1)
Path({str(pid_file)!r}).write_text(f"{{server.pid}} {{server.port}}")
"""),
            nbformat.v4.new_code_cell(
                "import time; time.sleep(1); assert serving.process_exists(server.pid)"
            ),
            nbformat.v4.new_code_cell("raise RuntimeError('a cell failed')"),
            nbformat.v4.new_code_cell("server.stop()  # never reached"),
        ]
    )
    client = NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    with pytest.raises(CellExecutionError, match="a cell failed"):
        client.execute()
    pid, port = map(int, pid_file.read_text().split())
    assert gone(pid, port), "the server outlived the notebook's kernel"


def test_vllm_is_refused_clearly_where_it_is_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    with pytest.raises(serving.ServerError, match="vLLM is not installed.*pip install vllm"):
        serving.start_vllm_server(
            "neuralmagic/Mistral-7B-Instruct-v0.3-GPTQ-4bit", quantization="gptq_marlin"
        )
