"""``perkbridge serve`` binds before it announces: a busy port is one line and exit 1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from bridge.cli import common


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERKBRIDGE_", "PERKAMO_"))}
    env["PERKBRIDGE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'serve.db'}"
    return env


def test_a_busy_port_is_one_line_and_exit_1_without_announcing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for json_flag in ([], ["--json"]):
            done = subprocess.run(
                [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", str(port), *json_flag],
                env=_env(tmp_path), capture_output=True, text=True, timeout=120, check=False,
            )
            assert done.returncode == common.EXIT_FAILURE, done.stderr
            assert done.stdout == ""
            lines = done.stderr.splitlines()
            assert lines == [f"error: cannot serve on 127.0.0.1:{port}: the port is already in use; "
                             "stop the other server or choose another --port"]


def test_serve_announces_the_address_it_listens_on(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--host", "127.0.0.1", "--port", "0", "--json", "--no-access-log"],
        env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        announced = json.loads(server.stdout.readline())
        assert announced["status"] == "starting"
        # The socket already listens when the line is printed: the first request is served.
        response = httpx.get(f"{announced['url']}/healthz", timeout=60)
        assert response.status_code == 200 and response.json() == {"status": "ok"}
        assert not announced["url"].endswith(":0")
    finally:
        server.terminate()
        server.wait(timeout=30)
        for stream in (server.stdout, server.stderr):
            if stream is not None:
                stream.close()


def test_the_listener_hands_asyncio_tcp_sockets_so_nagle_is_off_for_keep_alive_clients() -> None:
    """asyncio sets TCP_NODELAY only on accepted sockets whose proto is TCP; with a proto-0
    listener a keep-alive client waited a delayed ACK (~40 ms) on every response."""
    import asyncio

    from bridge.cli.serve_cmd import bind_listener

    listener = bind_listener("127.0.0.1", 0)
    assert listener.proto == socket.IPPROTO_TCP
    port = listener.getsockname()[1]

    async def accept_one() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            nodelay = await asyncio.wait_for(seen, timeout=30)
            writer.close()
            return nodelay
        finally:
            server.close()

    assert asyncio.run(accept_one()) != 0
