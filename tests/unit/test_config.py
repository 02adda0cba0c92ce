"""
Settings from flags and TOML, and the twistd Options.
"""

import pytest
from twisted.python import usage

from rustorium.config import SETTINGS, ConfigError, Settings
from rustorium.tap import Options


def parse(*argv):
    options = Options()
    options.parseOptions(list(argv))
    return options.settings


def test_defaults():
    settings = parse()
    assert settings == Settings()
    assert settings.listen == ("tcp:8765:interface=127.0.0.1",)
    assert settings.database == "sqlite:rustorium.db"
    assert settings.heartbeat_interval == 30
    assert settings.silence_timeout == 90
    assert settings.tick_interval == 1
    assert settings.block_interval == 2
    assert settings.max_subscriptions == 100
    assert settings.rate_limit == 10
    assert settings.rate_burst == 10
    assert settings.max_message_size == 65536


def test_flags():
    settings = parse(
        "--listen", "tcp:9000", "--listen", "tcp:9001:interface=127.0.0.2",
        "--database", "sqlite:/tmp/x.db", "--heartbeat-interval", "5",
        "--tick-interval", "0", "--block-interval", "0.5", "--max-subscriptions", "7",
    )
    assert settings == Settings(
        listen=("tcp:9000", "tcp:9001:interface=127.0.0.2"), database="sqlite:/tmp/x.db",
        heartbeat_interval=5.0, tick_interval=0.0, block_interval=0.5, max_subscriptions=7,
    )
    assert settings.silence_timeout == 15


def test_toml_and_flags(tmp_path):
    """
    The TOML file sets what flags do not; flags win.
    """
    config = tmp_path / "rustorium.toml"
    config.write_text(
        'listen = ["tcp:7000", "tcp:7001"]\n'
        'database = "sqlite:from-file.db"\n'
        "heartbeat-interval = 12\n"
        "rate-limit = 50\n"
        "rate-burst = 100\n"
    )
    settings = parse("--config", str(config), "--heartbeat-interval", "3")
    assert settings == Settings(
        listen=("tcp:7000", "tcp:7001"), database="sqlite:from-file.db",
        heartbeat_interval=3.0, rate_limit=50.0, rate_burst=100,
    )


def test_flag_listen_replaces_file_listen(tmp_path):
    config = tmp_path / "rustorium.toml"
    config.write_text('listen = ["tcp:7000"]\n')
    assert parse("--config", str(config), "--listen", "tcp:7100").listen == ("tcp:7100",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1\n", "unknown setting 'colour'"),
        ("heartbeat-interval = -1\n", "'heartbeat-interval' must be a number, zero or more"),
        ("max-subscriptions = 0\n", "'max-subscriptions' must be at least 1"),
        ("rate-limit = true\n", "'rate-limit' must be a number"),
        ("listen = 5\n", "'listen' must be a list of endpoint strings"),
        ("heartbeat-interval = \n", "not valid TOML"),
    ],
)
def test_bad_file(tmp_path, text, message):
    """
    A bad setting in the file is a usage error naming the file and setting.
    """
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(usage.UsageError) as raised:
        parse("--config", str(config))
    assert message in str(raised.value)
    assert str(config) in str(raised.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tick-interval", "soon"], "'tick-interval' must be a number"),
        (["--heartbeat-interval", "0"], "'heartbeat-interval' must be more than zero"),
        (["--database", "mysql://x"], "unsupported scheme 'mysql'"),
        (["--database", "sqlite::memory:"], "in-memory"),
        (["--listen", "carrier-pigeon:1"], "bad --listen endpoint"),
        (["--genesis", "/nonexistent/genesis.json"], "cannot read genesis file"),
        (["--config", "/nonexistent.toml"], "cannot read config file"),
    ],
)
def test_bad_flags(argv, message):
    with pytest.raises(usage.UsageError) as raised:
        parse(*argv)
    assert message in str(raised.value)


def test_malformed_genesis_flag(tmp_path):
    genesis = tmp_path / "genesis.json"
    genesis.write_text('{"tokens": []}')
    with pytest.raises(usage.UsageError) as raised:
        parse("--genesis", str(genesis))
    assert "at least one token" in str(raised.value)


def test_every_setting_documented_in_etc():
    """
    etc/rustorium.toml mentions every setting, with its default.
    """
    from pathlib import Path

    text = (Path(__file__).parents[2] / "etc" / "rustorium.toml").read_text()
    for setting in SETTINGS:
        assert f"# {setting.name} =" in text or f"{setting.name} =" in text, setting.name


def test_from_sources_rejects_unknown():
    with pytest.raises(ConfigError):
        Settings.from_sources({"nope": 1})


def test_every_setting_in_the_operations_guide():
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "operations.rst").read_text()
    for setting in SETTINGS:
        assert f"``{setting.name}``" in text, setting.name


def test_production_example_parses():
    from pathlib import Path

    from rustorium.config import load_toml

    path = Path(__file__).parents[2] / "etc" / "production.toml"
    settings = Settings.from_sources(load_toml(str(path)))
    assert settings.allowed_origins == ("https://app.example.com",)
    assert settings.max_connections_per_key == 50
    assert len(settings.listen) == 2
