"""Pointing the hub client at a local hub server in a test, as a learner points it at a mirror."""

from __future__ import annotations


def point_at(server, tmp_path, monkeypatch):
    """Point the hub client at `server` exactly as a learner points it at a mirror; no token set."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # conftest blocks the internet; this server is local
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # restored after the test
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    server.clear_log()
    return server
