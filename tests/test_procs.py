"""helpers.procs: a child started through the harness dies with its parent, even on kill -9 of the
parent."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from helpers.procs import child_command

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only"
)


def test_the_child_runs_the_module_with_its_arguments(tmp_path):
    (tmp_path / "echo_args.py").write_text("import sys\nprint(sys.argv[1:])\n")
    argv, env = child_command("echo_args", "a", "b c")
    done = subprocess.run(
        argv, env={**env, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['a', 'b c']"


def test_a_child_dies_with_its_parent_on_kill_9(tmp_path):
    (tmp_path / "sleeper.py").write_text("import time\ntime.sleep(120)\n")
    parent_code = textwrap.dedent(f"""
        import subprocess, sys
        from helpers.procs import child_command
        import os
        extra = {{**os.environ, "PYTHONPATH": {str(tmp_path)!r}}}
        argv, env = child_command("sleeper", env=extra)
        child = subprocess.Popen(argv, env=env)
        print(child.pid, flush=True)
        child.wait()
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True
    )
    child = psutil.Process(int(parent.stdout.readline()))
    time.sleep(0.5)  # the child has asked for the signal by now
    assert child.is_running()
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    gone, alive = psutil.wait_procs([child], timeout=10)
    assert not alive, "the child outlived its parent"


def test_a_child_whose_parent_is_already_gone_does_not_start(tmp_path):
    (tmp_path / "never.py").write_text("print('ran')\n")
    argv, env = child_command("never", env={**os.environ, "PYTHONPATH": str(tmp_path)})
    env["QLLM_PARENT_PID"] = (
        "1"  # not our parent: as if the real one had died before the child started
    )
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "ran" not in done.stdout
    assert "is gone" in done.stderr


def test_a_script_runs_as_python_script_py_would(tmp_path):
    (tmp_path / "helper_mod.py").write_text("VALUE = 'found beside the script'\n")
    (tmp_path / "script.py").write_text(
        "import sys, helper_mod\nprint(helper_mod.VALUE, sys.argv[1:], __name__)\n"
    )
    argv, env = child_command(str(tmp_path / "script.py"), "x")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "found beside the script ['x'] __main__"


def test_the_course_machinery_starts_python_children_only_through_the_harness():
    """The model build, the GGUF bench and converter, bench's workers and the servers: one
    harness."""
    root = Path(__file__).resolve().parent.parent
    folders = ("course", "bench", "helpers")
    for path in sorted(path for folder in folders for path in (root / folder).glob("*.py")):
        if path.name == "procs.py":
            continue
        text = path.read_text()
        assert not re.search(
            r"^\s*(import multiprocessing\b(?!\.connection)|from multiprocessing import)",
            text,
            re.M,
        ), path
        for line in (
            text.splitlines()
        ):  # sys.executable only for pip itself, never for a Python child of ours
            if "sys.executable" in line and "subprocess" not in line and "[sys.executable" in line:
                assert '"-m", "pip"' in line, f"{path.name}: {line.strip()}"
