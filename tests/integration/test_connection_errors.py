"""Connection errors against a real PostgreSQL: readable, naming the server, never the password.

Messages used to be "redacted" by replacing the password with *** wherever it occurred: a
one-letter password garbled every message (`c***nnecti***n refused`) and so revealed
itself. Now nothing is replaced: libpq does not put the password of a well-formed
connection string in its messages, and these tests hold it to that.
"""

from __future__ import annotations

import subprocess
import sys
import traceback
from urllib.parse import quote

import pytest
from psycopg import conninfo as pg_conninfo

from stepstone import ConfigurationError, DatabaseUnreachable, Runtime, Store

CLOSED_PORT = 'connection to server at "127.0.0.1", port 1 failed: Connection refused'
PASSWORD = "Zq7/Vw9@Kx:p%4"  # percent-encoded wherever it appears in a URL below


def _fragments(text: str) -> set[str]:
    return {text[i : i + 3] for i in range(len(text) - 2)}


def _unreachable(store: Store) -> DatabaseUnreachable:
    with pytest.raises(DatabaseUnreachable) as info:
        store.connect()
    return info.value


@pytest.mark.parametrize("password", ["o", "n", "e", "c"])
def test_a_one_letter_password_leaves_the_message_readable(password: str) -> None:
    """With a one-letter password and a closed port, DatabaseUnreachable and
    health_status().error carry libpq's message unchanged (no *** anywhere) and name the
    host and port."""
    store = Store(f"postgresql://postgres:{password}@127.0.0.1:1/postgres", connect_timeout=2)
    for text in (str(_unreachable(store)), store.health_status().error or ""):
        assert CLOSED_PORT in text
        assert "host=127.0.0.1 port=1 dbname=postgres user=postgres" in text
        assert "***" not in text


def test_a_server_side_refusal_with_a_one_letter_password_is_readable(db: str) -> None:
    """The server's own FATAL message (a missing database) reaches the user whole."""
    params = pg_conninfo.conninfo_to_dict(db)
    url = f"postgresql://{params['user']}:o@{params['host']}:{params['port']}/absent_db_q7"
    store = Store(url, connect_timeout=2)
    for text in (str(_unreachable(store)), store.health_status().error or ""):
        assert 'database "absent_db_q7" does not exist' in text
        assert "connection to server at" in text
        assert "***" not in text


def test_a_one_letter_pgpassword_leaves_the_message_readable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A password from PGPASSWORD does not garble messages either."""
    monkeypatch.setenv("PGPASSWORD", "o")
    store = Store("host=127.0.0.1 port=1 dbname=postgres user=postgres", connect_timeout=2)
    text = str(_unreachable(store))
    assert CLOSED_PORT in text
    assert "***" not in text


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://shop:{quote(PASSWORD, safe='')}@127.0.0.1:1/orders",
        f"host=127.0.0.1 port=1 dbname=orders user=shop password='{PASSWORD}'",
    ],
    ids=["url", "key-value"],
)
def test_no_piece_of_the_password_reaches_errors_or_health(dsn: str) -> None:
    """A password holding / @ : % (percent-encoded in a URL, quoted in key=value form)
    appears nowhere, not even three characters of it, in DatabaseUnreachable (with its
    traceback), in Runtime.launch()'s error or in health_status().error; they name the host,
    port, database and user."""
    store = Store(dsn, connect_timeout=2)
    exc = _unreachable(store)
    runtime = Runtime(dsn, connect_timeout=2)
    with pytest.raises(DatabaseUnreachable) as launched:
        runtime.launch()
    texts = [
        "".join(traceback.format_exception(exc)),
        "".join(traceback.format_exception(launched.value)),
        store.health_status().error or "",
        runtime.health_status().error or "",
    ]
    for text in texts:
        assert "host=127.0.0.1 port=1 dbname=orders user=shop" in text
        for fragment in _fragments(PASSWORD):
            assert fragment not in text, (fragment, text)


def test_a_percent_encoded_password_still_connects(db: str) -> None:
    """A URL with a percent-encoded / and @ in its password is accepted and connects (the
    test server trusts local connections, so the password itself is not checked)."""
    params = pg_conninfo.conninfo_to_dict(db)
    url = (
        f"postgresql://{params['user']}:{quote(PASSWORD, safe='')}@{params['host']}:"
        f"{params['port']}/{params['dbname']}"
    )
    with Runtime(url) as rt:
        assert rt.health_status().healthy


def test_a_malformed_url_is_refused_before_connecting_by_runtime_and_command() -> None:
    """A password with a raw / is refused by Runtime() and by the command (exit 2, one line),
    and neither shows a piece of it or the host and database libpq would have read."""
    raw = "Zq7/Vw9@Kx"
    url = f"postgresql://shop:{raw}@127.0.0.1:5432/orders"
    parsed = list(pg_conninfo.conninfo_to_dict(url).values())  # host shop, port Zq7, ...
    assert parsed
    with pytest.raises(ConfigurationError) as info:
        Runtime(url)
    done = subprocess.run(
        [sys.executable, "-m", "stepstone", "--database-url", url, "executions", "list"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("stepstone: the database URL from the dsn argument holds an @")
    assert done.stderr.count("\n") == 1
    for text in ("".join(traceback.format_exception(info.value)), done.stderr):
        assert "percent-encode" in text
        for fragment in [*_fragments(raw), *parsed, "orders"]:
            assert fragment not in text, (fragment, text)
