"""One way to start a Python child process that never outlives the process that started it.

    argv, env = child_command("course.models", "_build-one", "gptq", str(folder))
    # or Popen: the model build, the GGUF bench, bench's workers, the server
    subprocess.run(argv, env=env)

The child runs the module exactly as `python -m MODULE ARGS` would (a path ending in .py: as `python
SCRIPT ARGS` would), after asking Linux to send it
`on_parent_death` (SIGKILL unless told otherwise) when its parent dies (prctl PR_SET_PDEATHSIG), and
after checking the parent did not die before that request took effect. Without this, `kill -9` of a
course command left its child running for minutes, still writing. (Linux ties the signal to the
parent *thread*: start children from a thread that lives as long as they should.) Elsewhere the
child runs without the guard.
"""

from __future__ import annotations

import os
import signal
import sys

_BOOT = """
import ctypes, os, runpy, sys
if sys.platform.startswith("linux"):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(os.environ["QLLM_PARENT_DEATH_SIGNAL"]))
    except (OSError, AttributeError):
        pass
    if os.getppid() != int(os.environ["QLLM_PARENT_PID"]):
        sys.exit("the process that started this one is gone")
target = sys.argv[1]
sys.argv = [target, *sys.argv[2:]]
if target.endswith(".py"):  # a script, as `python script.py` runs it: its folder first on sys.path
    sys.path[0] = os.path.dirname(os.path.abspath(target))
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def child_command(
    module: str, *args: str, on_parent_death: int = signal.SIGKILL, env: dict | None = None
) -> tuple[list[str], dict]:
    """(argv, env) that run `python -m module args` (or `python path/to/script.py args`) as a child
    that dies with this process."""
    env = {
        **(os.environ if env is None else env),
        "QLLM_PARENT_PID": str(os.getpid()),
        "QLLM_PARENT_DEATH_SIGNAL": str(int(on_parent_death)),
    }
    return [sys.executable, "-c", _BOOT, module, *map(str, args)], env
