"""Network exposure (issue 12): the local Ray ablate starts listens on loopback only, joining a cluster
without an auth token warns, and `ablate ui` on an address other machines reach needs --allow-remote."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner


def test_local_ray_listens_on_loopback_only(ray_local):
    """Every socket the local Ray's processes (GCS, raylet, agents, workers: all children of this
    process) listen on is a loopback address; before the fix GCS and raylet listened on '::'."""
    import psutil
    import ray

    @ray.remote
    def node_ip() -> str:
        return ray.util.get_node_ip_address()

    assert ray.get(node_ip.remote()) == "127.0.0.1"  # a worker started, and sees the loopback node
    me = psutil.Process()
    ours = {me.pid} | {p.pid for p in me.children(recursive=True)}
    listening = [
        c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in ours
    ]
    names = {c.pid: psutil.Process(c.pid).name() for c in listening}
    assert {"gcs_server", "raylet"} <= set(names.values()), names
    exposed = [
        (names[c.pid], c.laddr.ip, c.laddr.port)
        for c in listening
        if not ipaddress.ip_address(c.laddr.ip.removeprefix("::ffff:")).is_loopback
    ]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    return tmp_path


def test_address_without_a_token_warns(no_token, monkeypatch, caplog):
    from ablate.run.raynet import has_auth_token, warn_without_token

    with caplog.at_level(logging.WARNING, logger="ablate.run.raynet"):
        assert warn_without_token("10.1.2.3:6379")
    message = caplog.text
    assert "10.1.2.3:6379" in message and "unauthenticated jobs" in message
    assert "RAY_AUTH_TOKEN" in message and "RAY_AUTH_MODE=token ray start --head" in message

    monkeypatch.setenv("RAY_AUTH_TOKEN", "t0ken")
    assert has_auth_token() and not warn_without_token("10.1.2.3:6379")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a token, but not sent
    assert not has_auth_token()
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    token = Path(no_token) / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("t0ken\n")
    assert has_auth_token()
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(no_token / "missing"))
    assert not has_auth_token()


def test_ui_on_a_reachable_host_needs_allow_remote(tmp_path):
    from ablate.cli import main
    from ablate.commands.report import _is_loopback, _reachable_host

    for host in ("0.0.0.0", "::", "192.0.2.10"):
        res = CliRunner().invoke(main, ["ui", "--db", f"sqlite:///{tmp_path}/none.db", "--host", host])
        assert res.exit_code == 2, res.output
        assert "without authentication" in res.output and "--allow-remote" in res.output
    assert all(_is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.5"))
    assert not any(_is_loopback(h) for h in ("0.0.0.0", "::", "192.0.2.10"))
    shown = _reachable_host("0.0.0.0")
    assert shown not in ("0.0.0.0", "::", "localhost") and not shown.startswith("127.")
    assert _reachable_host("192.0.2.10") == "192.0.2.10"
