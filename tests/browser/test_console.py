"""
The operator console in a real headless chromium against the real server:
signing in (and being refused), the live overview following clients as
they connect and leave, a price chart moving as ticks arrive, a
transaction found by id turning from pending to confirmed, keys made and
revoked, a connection disconnected with a chosen close code, the stream's
loss and recovery shown, the back button, and the admin key never in a
URL, a log line or the page. Each view is photographed (``screenshots``).
"""

import re
import signal
import time

import pytest

from tests.browser.conftest import DESKTOP, PHONE
from tests.integration.client import Client

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails) saying why
    expect = None

pytestmark = pytest.mark.browser

ALICE = "0xa11ce00000000000000000000000000000000001"
CAROL = "0x" + "c" * 40
MTK = "0x00000000000000000000000000000000004d544b"


@pytest.fixture
def page(browser, console_server):
    """
    A fresh browser context (no cookies) at laptop size; fails the test
    on any script error, and records every URL the page asks for.
    """
    context = browser.new_context(viewport=DESKTOP, base_url=console_server.base)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.urls = []
    errors = []
    page.on("request", lambda request: page.urls.append(request.url))
    page.on("pageerror", lambda error: errors.append(error))
    yield page
    context.close()
    assert errors == [], f"script errors: {errors}"


def sign_in(page, server) -> None:
    page.goto(server.base)
    page.get_by_label("Admin key").fill(server.admin)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("link", name="Overview", exact=True)).to_be_visible()
    expect(page.locator("#live")).to_have_attribute("data-state", "live")


def figure(page, name: str) -> int:
    text = page.locator(f"#figure-{name}").inner_text()
    return int(text.replace(",", ""))


def shoot(page, screenshots, name: str) -> None:
    page.screenshot(path=str(screenshots / f"console-{name}.png"))


def drain(client: Client, seconds: float) -> None:
    """
    Read what the server sends for C{seconds}, with a ping now and then (a
    client that stops reading would hold the server's close frame behind
    its queue when it leaves).
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.request("ping", request_id=f"p{time.monotonic()}")
        time.sleep(0.1)


def test_sign_in_and_navigate(page, console_server):
    """
    The five views have links and URLs of their own; the back button and a
    reload work.
    """
    sign_in(page, console_server)
    expect(page).to_have_url(console_server.base + "overview")
    for name in ("Markets", "Transactions", "Keys", "Connections"):
        page.get_by_role("link", name=name, exact=True).click()
        expect(page).to_have_url(console_server.base + name.lower())
        expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()
        expect(page.get_by_role("link", name=name, exact=True)).to_have_attribute(
            "aria-current", "page")
    page.go_back()
    expect(page).to_have_url(console_server.base + "keys")
    expect(page.get_by_role("heading", name="Keys", level=1)).to_be_visible()
    page.reload()
    expect(page.get_by_role("heading", name="Keys", level=1)).to_be_visible()
    page.goto(console_server.base + "markets")
    expect(page.get_by_role("heading", name="Markets", level=1)).to_be_visible()


def test_the_overview_follows_connections(page, console_server, screenshots):
    """
    The connection count goes up when a client connects and down when it
    leaves, without a reload; the chart and the node table are there.
    """
    sign_in(page, console_server)
    expect(page.locator("#figure-block-height")).not_to_have_text("—")
    before = figure(page, "connections")
    with Client(f"ws://127.0.0.1:{console_server.port}/v1", console_server.client) as client:
        client.request("subscribe", {"channel": "market_data",
                                    "symbols": ["MTK/USD", "STK/USD", "RST/USD"]})
        expect(page.locator("#figure-connections")).to_have_text(str(before + 1))
        expect(page.locator("#figure-subscriptions")).not_to_have_text("0")
        expect(page.locator("#nodes tbody tr")).to_have_count(1)
        expect(page.locator("#nodes")).to_contain_text("(this node)")
        expect(page.locator("#figure-messages-out")).not_to_have_text("0.0")
        drain(client, 2.0)
        shoot(page, screenshots, "overview")
        page.set_viewport_size(PHONE)
        drain(client, 0.5)
        shoot(page, screenshots, "overview-phone")
        page.set_viewport_size(DESKTOP)
    expect(page.locator("#figure-connections")).to_have_text(str(before))
    assert int(page.locator("#overview-chart").get_attribute("data-points")) >= 3


def test_a_price_chart_moves(page, console_server, screenshots):
    sign_in(page, console_server)
    page.get_by_role("link", name="Markets", exact=True).click()
    chart = page.locator("#chart-mtk-usd")
    expect(chart).to_have_attribute("data-points", re.compile(r"[1-9]\d*"))
    points = int(chart.get_attribute("data-points"))
    last = chart.get_attribute("data-last")
    expect(chart).not_to_have_attribute("data-last", last)
    expect(chart).not_to_have_attribute("data-points", str(points))
    expect(page.locator("#price-mtk-usd")).to_have_text(re.compile(r"^\d[\d,]*\.\d+$"))
    expect(page.get_by_text("24 h change").first).to_be_visible()
    expect(page.get_by_text("Volume 24 h").first).to_be_visible()
    time.sleep(1)
    shoot(page, screenshots, "markets")


def test_a_transaction_becomes_confirmed(page, console_server, screenshots):
    """
    A transfer found by its id shows pending, then confirmed with its
    block, live. It is submitted just after a block, so that the next one
    (two seconds later) comes after the page has shown it pending.
    """
    sign_in(page, console_server)
    page.get_by_role("link", name="Transactions", exact=True).click()
    search = page.get_by_role("searchbox", name="Transaction id or address")
    expect(search).to_have_attribute("type", "search")
    with Client(f"ws://127.0.0.1:{console_server.port}/v1", console_server.client) as client:
        client.request("subscribe", {"channel": "transaction_updates", "address": CAROL})
        transfer = {"from": ALICE, "to": CAROL, "amount": "1.25", "token_id": MTK}
        client.request("execute_transaction", transfer, request_id="warm-up")
        client.until(lambda m: m["type"] == "update"
                     and m["data"].get("status") == "confirmed", timeout=10)
        reply = client.request("execute_transaction", transfer, request_id="watched")
    transaction_id = reply["data"]["transaction_id"]
    search.fill(transaction_id)
    search.press("Enter")
    expect(page).to_have_url(re.compile(r"transactions\?q=0x[0-9a-f]{64}$"))
    status = page.locator("#tx-status")
    expect(status).to_have_text("pending")
    expect(page.locator("#tx-block")).to_have_text("—")
    expect(page.locator("#tx-amount")).to_have_text("1.25 MTK")
    expect(page.locator("#transaction")).to_contain_text(CAROL)
    expect(status).to_have_text("confirmed", timeout=8000)
    expect(page.locator("#tx-block")).to_have_text(re.compile(r"^\d+$"))
    shoot(page, screenshots, "transactions")
    # An address lists its transactions, newest first.
    search = page.get_by_role("searchbox", name="Transaction id or address")
    search.fill(CAROL)
    search.press("Enter")
    expect(page.locator("#address tbody tr").first).to_contain_text("confirmed")


def test_create_and_revoke_a_key(page, console_server, screenshots):
    """
    A new key is shown once, with a copy button; it opens a session; once
    revoked its connection is closed (4001) and it is refused.
    """
    sign_in(page, console_server)
    page.get_by_role("link", name="Keys", exact=True).click()
    expect(page.locator("#keys tbody tr").first).to_be_visible()
    shoot(page, screenshots, "keys")
    page.get_by_label("Name").fill("made-in-browser")
    page.get_by_role("button", name="Create key").click()
    shown = page.locator("#new-key-value")
    expect(shown).to_have_value(re.compile(r"^rk_[A-Za-z0-9_-]{43}$"))
    key = shown.input_value()
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#new-key")).to_contain_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == key
    row = page.locator("#keys tbody tr", has_text="made-in-browser")
    expect(row).to_contain_text("active")
    page.get_by_role("button", name="Done").click()
    expect(page.locator("#new-key")).to_be_hidden()
    assert key not in page.content()
    url = f"ws://127.0.0.1:{console_server.port}/v1"
    with Client(url, key) as client:
        client.request("ping")
        page.once("dialog", lambda dialog: dialog.accept())
        row.get_by_role("button", name=re.compile("^Revoke")).click()
        expect(page.locator("#keys-message")).to_contain_text("1 connections closed")
        expect(row).to_contain_text("revoked")
        assert client.wait_closed()[0] == 4001
    with pytest.raises(Exception):  # noqa: B017 (websockets' InvalidStatus: 401)
        Client(url, key)


def test_disconnect_a_connection(page, console_server, screenshots):
    sign_in(page, console_server)
    page.get_by_role("link", name="Connections", exact=True).click()
    with Client(f"ws://127.0.0.1:{console_server.port}/v1", console_server.client) as client:
        client.request("subscribe", {"channel": "market_data", "symbols": ["MTK/USD"]})
        row = page.locator("#connections tbody tr", has_text="demo")
        expect(row).to_contain_text("market_data")
        expect(row).to_contain_text("127.0.0.1")
        shoot(page, screenshots, "connections")
        row.get_by_role("button", name=re.compile("^Disconnect")).click()
        dialog = page.locator("#disconnect-dialog")
        expect(dialog).to_be_visible()
        page.get_by_label("Close code").select_option("4100")
        page.get_by_label("Reason").fill("maintenance")
        dialog.get_by_role("button", name="Disconnect").click()
        assert client.wait_closed() == (4100, "maintenance")
    expect(page.locator("#connections-message")).to_contain_text("with 4100")
    expect(page.locator("#connections tbody tr", has_text="demo")).to_have_count(0)


def test_the_stream_is_lost_and_comes_back(page, console_server):
    """
    While the server is frozen (SIGSTOP) the live indicator says the
    stream is lost; once it runs again the page reconnects by itself.
    """
    sign_in(page, console_server)
    live = page.locator("#live")
    console_server.process.send_signal(signal.SIGSTOP)
    try:
        expect(live).to_have_attribute("data-state", "lost", timeout=10_000)
        expect(live).to_contain_text("Stream lost")
    finally:
        console_server.process.send_signal(signal.SIGCONT)
    expect(live).to_have_attribute("data-state", "live", timeout=15_000)
    before = page.locator("#overview-chart").get_attribute("data-points")
    expect(page.locator("#overview-chart")).not_to_have_attribute("data-points", before)


def test_wrong_keys_and_no_session_are_refused(page, console_server):
    """
    A client key and an unknown key get a clear message and no console;
    without a session every data call is 401.
    """
    page.goto(console_server.base + "keys")
    expect(page.get_by_label("Admin key")).to_be_visible()
    expect(page.get_by_role("navigation", name="Console")).to_be_hidden()
    for path in ("api/v1/info", "api/v1/keys", "api/v1/connections", "events", "session"):
        assert page.request.get(console_server.base + path).status == 401, path
    page.get_by_label("Admin key").fill(console_server.client)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-error")).to_contain_text("has no admin scope")
    page.get_by_label("Admin key").fill("rk_" + "x" * 43)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-error")).to_contain_text("Unknown or revoked API key")
    expect(page.get_by_role("navigation", name="Console")).to_be_hidden()
    assert page.request.get(console_server.base + "api/v1/info").status == 401
    # A sign-out ends the session for every call.
    page.get_by_label("Admin key").fill(console_server.admin)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Console")).to_be_visible()
    assert page.request.get(console_server.base + "api/v1/info").status == 200
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Admin key")).to_be_visible()
    assert page.request.get(console_server.base + "api/v1/info").status == 401


def test_the_admin_key_is_never_in_a_url_a_log_line_or_the_page(page, console_server):
    sign_in(page, console_server)
    for name in ("Markets", "Transactions", "Keys", "Connections", "Overview"):
        page.get_by_role("link", name=name, exact=True).click()
        expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()
        assert console_server.admin not in page.content()
    assert page.urls and not [url for url in page.urls if console_server.admin in url]
    assert console_server.admin not in page.evaluate("document.cookie + localStorage.length")
    log = console_server.output()
    assert "Console sign-in with API key" in log
    assert console_server.admin not in log
