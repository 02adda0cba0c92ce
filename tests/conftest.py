"""
Shared fixtures.

Plain pytest does not fail a test when Twisted logs an error (trial does),
so L{logged_errors} collects every error logged during a test and fails the
test unless it inspected and cleared them.
"""

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from txaio.testutil import replace_loop

from rustorium.storage import engine_from_url

# Throwaway PostgreSQL servers, for any test to use.
from tests.services import postgres_server, postgres_url  # noqa: F401


@pytest.fixture(autouse=True)
def logged_errors():
    """
    Errors logged during the test; a test that expects some asserts on
    them and then clears the list.
    """
    errors: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical) or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    yield errors
    globalLogPublisher.removeObserver(observe)
    if errors:
        details = []
        for event in errors:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            details.append(text)
        pytest.fail("errors were logged:\n" + "\n".join(details))


@pytest.fixture
def clock():
    """
    A fake reactor clock, also used by Autobahn's timers for the test.
    """
    fake = Clock()
    fake.advance(1_700_000_000)
    with replace_loop(fake):
        yield fake



@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """
    The URL of an empty database, once on each engine: tests taking it (or
    L{engine}) run on SQLite and on a throwaway PostgreSQL.
    """
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'rustorium.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def engine(database_url):
    """
    The engine of an empty database, once on each engine.
    """
    return engine_from_url(database_url)
