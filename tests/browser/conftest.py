"""
Browser fixtures: the real server (``twistd -n rustorium``, one per test
module, with fast ticks and blocks) and Debian's headless ``chromium``
driven by Playwright for Python.

Playwright is launched with ``executable_path`` set to the system's
chromium: never ``playwright install``, which downloads a browser of its
own. Without chromium (or Playwright) the tests are skipped, saying why,
unless ``RUSTORIUM_REQUIRE_SERVICES=1`` (as CI sets), when they fail.

Screenshots go to a temporary directory, or to the directory named by
``RUSTORIUM_SCREENSHOTS`` (``RUSTORIUM_SCREENSHOTS=docs/images`` refreshes
the ones the docs show).
"""

import os
import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess
from tests.services import skip_or_fail

CHROMIUM = "/usr/bin/chromium"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def chromium_path() -> str:
    """
    The system's chromium, or a skip (a failure when services are
    required).
    """
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        skip_or_fail("chromium is not installed (Debian package chromium)")
    return path


@pytest.fixture(scope="module")
def browser():
    """
    A headless chromium for the module.
    """
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("Playwright for Python is not installed (pip install '.[test]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def console_server(tmp_path_factory):
    """
    A server with fast ticks and blocks, an admin key (``admin``) and the
    demo key (``client``).
    """
    directory = tmp_path_factory.mktemp("console")
    server = ServerProcess(directory, "--tick-interval", "0.2", "--block-interval", "2",
                           "--key-check-interval", "1").start()
    try:
        server.client = server.demo_key()
        server.admin = server.create_key("--name", "ops", "--scope", "admin")
        server.base = f"http://127.0.0.1:{server.port}/admin/"
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """
    Where the tests' screenshots go.
    """
    target = os.environ.get("RUSTORIUM_SCREENSHOTS")
    if target:
        path = Path(target)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("screenshots")
