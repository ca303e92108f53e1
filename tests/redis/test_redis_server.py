"""The private redis-server launcher itself: a missing binary fails loudly, never skips."""

from __future__ import annotations

import pytest

from tests.support.redis_server import RedisServer, RedisServerMissing, new_server


def test_a_missing_redis_server_fails_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(RedisServerMissing, match=r"tools/ensure-deps\.sh"):
        RedisServer()
    with pytest.raises(pytest.fail.Exception, match=r"tools/ensure-deps\.sh"):
        new_server()


@pytest.mark.redis
def test_restart_keeps_the_port_and_kill_stops_at_once() -> None:
    with new_server() as server:
        port = server.port
        assert server.command("SET", "k", "v").startswith(b"+OK")
        server.restart()
        assert server.port == port and server.running
        assert server.command("GET", "k") == b"$-1\r\n"  # no persistence by default
        server.kill()
        assert not server.running
        server.start()
        assert server.command("PING") == b"+PONG\r\n"
