from __future__ import annotations

import traceback

import pytest

from stepstone.errors import ConfigurationError
from stepstone.persistence import _conninfo

PG_ENV = ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD")
BAD_DSNS = [
    "postgresql://u:s3cret@host:5432/db?bad_option_zzz=1",
    "host=x password=s3cret nonsense",
    "host=x password='s3cret",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without the environment variables these functions read."""
    for name in (_conninfo.ENV_VAR, *PG_ENV):
        monkeypatch.delenv(name, raising=False)


def test_resolve_none_uses_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """resolve(None) returns STEPSTONE_DATABASE_URL when it is set."""
    monkeypatch.setenv("STEPSTONE_DATABASE_URL", "postgresql://app@db.internal:6543/orders")
    assert _conninfo.resolve(None) == "postgresql://app@db.internal:6543/orders"


def test_resolve_none_without_environment_variable_is_empty() -> None:
    """resolve(None) with STEPSTONE_DATABASE_URL unset gives "" (libpq's defaults)."""
    assert _conninfo.resolve(None) == ""


def test_resolve_empty_string_is_allowed_and_ignores_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """resolve("") is accepted as libpq's defaults and does not fall back to the env var."""
    monkeypatch.setenv("STEPSTONE_DATABASE_URL", "postgresql://other@elsewhere/db")
    assert _conninfo.resolve("") == ""


@pytest.mark.parametrize(
    "dsn", ["postgresql://u:pw@h:5432/db", "host=h port=5432 dbname=db user=u", "dbname=x"]
)
def test_resolve_returns_valid_dsn_unchanged(dsn: str) -> None:
    """A parsable DSN given as argument is returned as is."""
    assert _conninfo.resolve(dsn) == dsn


@pytest.mark.parametrize("dsn", BAD_DSNS)
def test_unparsable_dsn_raises_without_revealing_password(dsn: str) -> None:
    """An unparsable DSN raises ConfigurationError free of the password, raised from None."""
    with pytest.raises(ConfigurationError) as info:
        _conninfo.resolve(dsn)
    exc = info.value
    assert "s3cret" not in str(exc)
    assert "could not be parsed" in str(exc)
    assert "the dsn argument" in str(exc)
    assert exc.__cause__ is None
    assert exc.__suppress_context__ is True
    assert "s3cret" not in "".join(traceback.format_exception(exc))


def test_unparsable_dsn_from_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unparsable STEPSTONE_DATABASE_URL is reported as coming from that variable."""
    monkeypatch.setenv("STEPSTONE_DATABASE_URL", BAD_DSNS[0])
    with pytest.raises(ConfigurationError) as info:
        _conninfo.resolve(None)
    assert "STEPSTONE_DATABASE_URL" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert info.value.__suppress_context__ is True


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://alice:s3cret@db.example.com:6543/orders",
        "host=db.example.com port=6543 dbname=orders user=alice password=s3cret",
    ],
    ids=["url", "key-value"],
)
def test_describe_shows_host_port_dbname_user_never_password(dsn: str) -> None:
    """describe() names host, port, database and user and leaves the password out."""
    text = _conninfo.describe(dsn)
    assert text == "host=db.example.com port=6543 dbname=orders user=alice"
    assert "s3cret" not in text


def test_describe_falls_back_to_pg_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """describe() takes missing parts from PGHOST, PGPORT, PGDATABASE and PGUSER."""
    monkeypatch.setenv("PGHOST", "envhost")
    monkeypatch.setenv("PGPORT", "7777")
    monkeypatch.setenv("PGDATABASE", "envdb")
    monkeypatch.setenv("PGUSER", "envuser")
    monkeypatch.setenv("PGPASSWORD", "envs3cret")
    text = _conninfo.describe("")
    assert text == "host=envhost port=7777 dbname=envdb user=envuser"
    assert "envs3cret" not in text


def test_describe_prefers_dsn_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts given in the DSN win over the PG* environment variables; others fall back."""
    monkeypatch.setenv("PGHOST", "envhost")
    monkeypatch.setenv("PGPORT", "7777")
    monkeypatch.setenv("PGDATABASE", "envdb")
    monkeypatch.setenv("PGUSER", "envuser")
    assert _conninfo.describe("host=dsnhost dbname=dsndb") == (
        "host=dsnhost port=7777 dbname=dsndb user=envuser"
    )


def test_describe_defaults_without_dsn_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing set, describe() shows libpq's defaults: local socket, 5432, the OS user."""
    monkeypatch.setenv("USER", "osuser")
    assert _conninfo.describe("") == ("host=the local socket port=5432 dbname=osuser user=osuser")


def test_describe_database_defaults_to_the_user() -> None:
    """Without a database name, describe() shows the user's name as libpq does."""
    assert _conninfo.describe("user=bob host=h") == "host=h port=5432 dbname=bob user=bob"


@pytest.mark.parametrize(
    "dsn",
    ["postgresql://alice:s3cret@h/db", "host=h user=alice password=s3cret"],
    ids=["url", "key-value"],
)
def test_redact_replaces_the_password(dsn: str) -> None:
    """redact() replaces every occurrence of the DSN's password with ***."""
    text = 'auth failed for "alice" using s3cret (again: s3cret)'
    assert _conninfo.redact(text, dsn) == 'auth failed for "alice" using *** (again: ***)'


def test_redact_uses_pgpassword_when_dsn_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """redact() hides PGPASSWORD when the DSN carries no password."""
    monkeypatch.setenv("PGPASSWORD", "envs3cret")
    assert _conninfo.redact("pw envs3cret leaked", "host=h") == "pw *** leaked"


def test_redact_without_any_password_leaves_text_alone() -> None:
    """redact() returns the text unchanged when there is no password to hide."""
    text = "connection refused on port 5432"
    assert _conninfo.redact(text, "host=h user=u") == text
