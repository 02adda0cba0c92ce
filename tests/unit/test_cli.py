"""
The rustorium command: keys create, list, revoke (on SQLite and on a
throwaway PostgreSQL: the C{database_url} fixture).
"""

import pytest

from rustorium.apikeys import hash_key
from rustorium.cli import main
from rustorium.storage import engine_from_url, run_blocking
from rustorium.storage.keys import find_key

ADDRESS = "0x" + "A" * 40


def test_create_prints_key_last(database_url, capsys):
    url = database_url
    assert main(["keys", "create", "--database", url, "--create-database", "--name", "bot",
                 "--address", ADDRESS]) == 0
    lines = capsys.readouterr().out.splitlines()
    key = lines[-1]
    assert key.startswith("rk_")
    found = run_blocking(engine_from_url(url), find_key, hash_key(key))
    assert found.name == "bot"
    assert found.addresses == frozenset({ADDRESS.lower()})


def test_scopes(database_url, capsys):
    """
    A key is a client key unless --scope says otherwise; several --scope
    flags make a key with each; the listing shows them.
    """
    url = database_url
    engine = engine_from_url(url)
    main(["keys", "create", "--database", url, "--create-database", "--name", "app"])
    app = capsys.readouterr().out.splitlines()[-1]
    main(["keys", "create", "--database", url, "--name", "feed", "--scope", "publish"])
    out = capsys.readouterr().out
    assert "scopes: publish" in out
    feed = out.splitlines()[-1]
    main(["keys", "create", "--database", url, "--name", "console",
          "--scope", "admin", "--scope", "client"])
    console = capsys.readouterr().out.splitlines()[-1]
    assert run_blocking(engine, find_key, hash_key(app)).scopes == {"client"}
    assert run_blocking(engine, find_key, hash_key(feed)).scopes == {"publish"}
    assert run_blocking(engine, find_key, hash_key(console)).scopes == {"client", "admin"}
    main(["keys", "list", "--database", url])
    listing = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[-1] for line in listing] == ["client", "publish", "client admin"]


def test_unknown_scope(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["keys", "create", "--database", f"sqlite:{tmp_path / 'r.db'}",
              "--scope", "root"])
    assert "invalid choice: 'root'" in capsys.readouterr().err


def test_list_and_revoke(database_url, capsys):
    url = database_url
    main(["keys", "create", "--database", url, "--create-database", "--name", "one"])
    key = capsys.readouterr().out.splitlines()[-1]
    assert main(["keys", "list", "--database", url]) == 0
    listing = capsys.readouterr().out
    assert "one" in listing and "active" in listing
    assert key not in listing
    assert main(["keys", "revoke", "--database", url, "1"]) == 0
    capsys.readouterr()
    main(["keys", "list", "--database", url])
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "revoke", "--database", url, "1"]) == 1


def test_bad_address(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["keys", "create", "--database", f"sqlite:{tmp_path / 'r.db'}",
              "--address", "alice"])
    assert "not 0x followed by 40 hex digits" in capsys.readouterr().err


def test_bad_database(capsys):
    assert main(["keys", "list", "--database", "mysql:x"]) == 1
    assert "unsupported scheme" in capsys.readouterr().err


@pytest.mark.parametrize("action", [["list"], ["revoke", "1"], ["create", "--name", "bot"]])
def test_missing_database_is_an_error(tmp_path, capsys, monkeypatch, action):
    """
    A database that does not exist is an error with a one-line message
    naming the file, and none is created: a mistyped --database (or the
    default one, in the wrong directory) used to make a new, empty one.
    """
    monkeypatch.chdir(tmp_path)
    assert main(["keys", *action[:1], "--database", "sqlite:typo.db", *action[1:]]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"rustorium: no database at {tmp_path / 'typo.db'} "
                           "(--database sqlite:typo.db); ")
    hint = "--create-database" if action[0] == "create" else "the server creates it"
    assert hint in line
    assert main(["keys", *action[:1], *action[1:]]) == 1  # the default, rustorium.db
    assert "rustorium.db" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unreachable_postgresql(capsys):
    from tests.services import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/rustorium"
    assert main(["keys", "list", "--database", url]) == 1
    assert "cannot connect" in capsys.readouterr().err
