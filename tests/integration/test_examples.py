"""
The spec's own client examples, with only their URL changed, and the
project's example script (``examples/``), against the real server: what a
newcomer does first.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, environment

SPEC_URL = "wss://ws.rustorium.com/v1?api_key=YOUR_API_KEY"

PYTHON_EXAMPLE = '''\
import websockets
import json
import asyncio

async def connect():
    uri = "wss://ws.rustorium.com/v1?api_key=YOUR_API_KEY"
    async with websockets.connect(uri) as websocket:
        # Subscribe to token updates
        await websocket.send(json.dumps({
            "id": "1",
            "type": "subscribe",
            "data": {
                "channel": "token_updates",
                "token_id": "0x..."
            }
        }))

        while True:
            message = await websocket.recv()
            print(f"Received: {json.loads(message)}")

asyncio.get_event_loop().run_until_complete(connect())
'''

NODE_EXAMPLE = '''\
const WebSocket = require('ws');

const ws = new WebSocket('wss://ws.rustorium.com/v1?api_key=YOUR_API_KEY');

ws.on('open', () => {
    // Subscribe to token updates
    ws.send(JSON.stringify({
        id: '1',
        type: 'subscribe',
        data: {
            channel: 'token_updates',
            token_id: '0x...'
        }
    }));
});

ws.on('message', (data) => {
    const message = JSON.parse(data);
    console.log('Received:', message);
});

ws.on('close', () => {
    console.log('Connection closed');
});
'''


def run_for(command: list[str], seconds: float, cwd: Path) -> str:
    """
    Run a client that never exits by itself for a few seconds; return what
    it printed.
    """
    try:
        result = subprocess.run(command, capture_output=True, timeout=seconds, cwd=cwd)
        output = result.stdout + result.stderr
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"") + (e.stderr or b"")
    return output.decode("utf-8", "replace")


def test_examples_match_the_spec():
    """
    The examples above are the spec's, character for character.
    """
    spec = (ROOT.parent / "shared" / "spec" / "websocket-api.md")
    if not spec.exists():
        pytest.skip("the spec is not beside this checkout")
    text = spec.read_text()
    assert PYTHON_EXAMPLE.strip() in text
    assert NODE_EXAMPLE.strip() in text


def test_python_example(server, tmp_path):
    """
    The spec's Python example receives subscription_confirmation and updates.
    """
    script = tmp_path / "example.py"
    script.write_text(PYTHON_EXAMPLE.replace(SPEC_URL, f"{server.url}?api_key={server.demo_key()}"))
    output = run_for([sys.executable, str(script)], 4, tmp_path)
    assert "'type': 'subscription_confirmation'" in output, output
    assert len(re.findall(r"'type': 'update'", output)) >= 6, output


@pytest.fixture(scope="session")
def node_modules():
    """
    The Node ws package, installed once with npm into a cache folder.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js is not installed")
    folder = ROOT / ".cache" / "node"
    if not (folder / "node_modules" / "ws").exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder),
                        "ws@8"], check=True, capture_output=True, timeout=300)
    return folder / "node_modules"


def test_node_example(server, tmp_path, node_modules):
    """
    The spec's Node.js example receives subscription_confirmation and updates.
    """
    script = tmp_path / "example.js"
    script.write_text(NODE_EXAMPLE.replace(SPEC_URL, f"{server.url}?api_key={server.demo_key()}"))
    (tmp_path / "node_modules").symlink_to(node_modules)
    output = run_for(["node", str(script)], 4, tmp_path)
    assert "type: 'subscription_confirmation'" in output, output
    assert len(re.findall(r"type: 'update'", output)) >= 6, output


def test_watch_and_transfer(server):
    """
    examples/watch_and_transfer.py, the complete client script the docs
    point to, run as they say against a fresh server with its demo key:
    it watches Alice, moves 1.5 MTK to Bob, sees the transfer pending then
    confirmed, prints both balances and exits 0.
    """
    env = environment()
    env["RUSTORIUM_API_KEY"] = server.demo_key()
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "watch_and_transfer.py"), "--url", server.url],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    alice = "0xa11ce00000000000000000000000000000000001"
    bob = "0xb0b0000000000000000000000000000000000002"
    watching, sent, pending, confirmed, *balances = result.stdout.splitlines()
    assert watching == f"watching {alice}"
    assert re.fullmatch(r"sent 0x[0-9a-f]{64}: pending", sent), sent
    assert pending == f"transaction pending: 1.5 MTK from {alice} to {bob}"
    assert re.fullmatch(rf"transaction confirmed in block \d+: 1\.5 MTK from {alice} to {bob}",
                        confirmed), confirmed
    assert balances == [f"balance of {alice}: 599998.5 MTK", f"balance of {bob}: 400001.5 MTK"]
