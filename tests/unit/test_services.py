"""
Missing PostgreSQL binaries skip the tests that need them, or fail them when
CI requires every service.
"""

import pytest

import tests.services as services


def test_missing_binaries_skip(monkeypatch):
    monkeypatch.setattr(services, "_find", lambda *args: None)
    monkeypatch.delenv("RUSTORIUM_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        services.start_service(services.PostgresServer)
    assert "PostgreSQL is not installed" in str(skipped.value)


def test_missing_binaries_fail_when_required(monkeypatch):
    monkeypatch.setattr(services, "_find", lambda *args: None)
    monkeypatch.setenv("RUSTORIUM_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        services.start_service(services.PostgresServer)
    assert "RUSTORIUM_REQUIRE_SERVICES=1" in str(failed.value)
