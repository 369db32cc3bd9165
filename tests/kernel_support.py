"""Talking to a real ipykernel from a test, the way a front end does (jupyter_client)."""

from __future__ import annotations


def run_in_kernel(kc, code: str, allow_stdin: bool, timeout: float = 180) -> list[dict]:
    """Execute code; return every iopub message up to this request's idle status."""
    msg_id = kc.execute(code, allow_stdin=allow_stdin)
    messages = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        messages.append(msg)
        if (
            msg["header"]["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
            and msg["parent_header"].get("msg_id") == msg_id
        ):
            return messages


def kernel_stdout(messages: list[dict]) -> str:
    """The text a run printed to stdout."""
    return "".join(
        m["content"]["text"]
        for m in messages
        if m["header"]["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )
