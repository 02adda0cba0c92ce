"""
Starts that go wrong, as a newcomer meets them: the port taken, the
database held by another server, a server killed outright.
"""

import signal
import socket

from tests.integration.client import Client
from tests.integration.conftest import KEY_PATTERN, ServerProcess


def test_port_taken_keeps_the_demo_key(start_server, tmp_path):
    """
    A first start whose port is taken ends with one line naming the address
    and --listen, no traceback, and no demo key made; the next start, with
    the port free, makes the demo key, shows it, and it works.
    """
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        status, output = ServerProcess(tmp_path, port=port).run_refused()
    assert status != 0
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if "cannot listen" in line]
    assert f"127.0.0.1:{port}" in line and "--listen" in line
    assert "address already in use" in line
    assert not KEY_PATTERN.search(output.encode())

    server = start_server(port=port)
    with Client(server.url, server.demo_key()) as client:
        assert client.request("ping")["type"] == "pong"


def test_second_server_on_one_database_refused(start_server, tmp_path):
    """
    A second server on the database of a live one refuses to start with one
    line naming the database, while `rustorium keys` still works beside the
    running server; after the first is killed outright (SIGKILL, so nothing
    is released by hand) a new server starts on the database at once.
    """
    first = start_server()
    key = first.demo_key()
    status, output = ServerProcess(tmp_path).run_refused()
    assert status != 0
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if "in use" in line]
    assert str(tmp_path / "rustorium.db") in line
    assert f"pid {first.process.pid}" in line

    late = first.create_key("--name", "beside")
    with Client(first.url, late) as client:
        assert client.request("ping")["type"] == "pong"

    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    again = start_server(port=first.port)
    for presented in (key, late):
        with Client(again.url, presented) as client:
            assert client.request("ping")["type"] == "pong"
