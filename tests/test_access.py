"""Access you can take back (issue 13, items 1 and 4): token expiry and revocation, sessions ended by
logout / new password / removal, users and tokens on the CLI and the settings page, login limits per name
and per address, X-Forwarded-For only from trusted proxies, the schema 2 -> 3 upgrade.

The real app through FastAPI's TestClient (as tests/test_web_api.py), the CLI through click's CliRunner.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from datetime import timedelta

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import update
from starlette.websockets import WebSocketDisconnect

from maskwatch.cli import main
from maskwatch.config import Settings
from maskwatch.store import SCHEMA_VERSION, TOKEN_ID_LEN, Store, TokenRow, utcnow
from maskwatch.web.app import SESSION_COOKIE
from maskwatch.web.auth import LoginLimiter
from web_helpers import PASSWORD, csrf_from, login, make_app

BOB_PASSWORD = "bob's own password"


def _make(tmp_path, tiny_models, **extra):
    return make_app(tmp_path, tiny_models, users={"admin": PASSWORD, "bob": BOB_PASSWORD}, **extra)


@pytest.fixture
def web(tmp_path, tiny_models):
    app, store = _make(tmp_path, tiny_models)
    with TestClient(app) as client:
        yield client, app.state.runtime
    store.close()


def _csrf(client, path="/settings"):
    return csrf_from(client.get(path).text)


def _api(app, token):
    return TestClient(app).get("/api/events", headers={"Authorization": f"Bearer {token}"})


def _cli(*args):
    """`maskwatch ARGS` on the database of MASKWATCH_DATA_DIR (tests/conftest.py: tmp_path / "data")."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# -- API tokens -----------------------------------------------------------------------------------


def test_revoked_token_is_refused(web):
    client, rt = web
    token = rt.store.create_token("admin", "script")
    assert _api(client.app, token).status_code == 200
    (info,) = rt.store.list_tokens()
    r = _cli("tokens", "revoke", info.id)
    assert r.exit_code == 0 and info.id in r.output
    assert _api(client.app, token).status_code == 401
    assert _cli("tokens", "revoke", info.id).exit_code != 0  # nothing left to revoke


def test_settings_page_lists_and_revokes_tokens(web):
    client, rt = web
    assert login(client).status_code == 303
    page = client.post(
        "/settings/tokens", data={"csrf_token": _csrf(client), "label": "reports", "expires_days": "7"}
    )
    token = re.search(r"(mw_[\w-]+)", page.text).group(1)
    (info,) = rt.store.list_tokens()
    assert info.label == "reports" and info.expires_at is not None
    assert timedelta(days=6.9) < info.expires_at - info.created <= timedelta(days=7)
    assert _api(client.app, token).status_code == 200
    page = client.get("/settings").text
    table = page[page.index('id="tokens-table"') :]
    assert info.id in table and "reports" in table and token not in page
    assert client.post("/settings/tokens/revoke", data={"token_id": info.id}).status_code == 403  # no CSRF
    assert _api(client.app, token).status_code == 200
    r = client.post("/settings/tokens/revoke", data={"csrf_token": _csrf(client), "token_id": info.id})
    assert r.status_code == 200 and rt.store.list_tokens() == []
    assert _api(client.app, token).status_code == 401


def test_expired_token_is_refused(web):
    client, rt = web
    r = _cli("users", "token", "admin", "--label", "ci", "--expires-days", "1")
    assert r.exit_code == 0, r.output
    token = r.output.strip()
    assert _api(client.app, token).status_code == 200
    with rt.store.engine.begin() as c:  # a day later
        c.execute(update(TokenRow).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert _api(client.app, token).status_code == 401
    assert "(expired)" in _cli("tokens", "list").output


def test_last_use_is_written_about_once_a_minute(web):
    _, rt = web
    token = rt.store.create_token("admin")
    t0 = utcnow()
    assert rt.store.verify_token(token, now=t0) == "admin"
    assert rt.store.list_tokens()[0].last_used_at == t0
    assert rt.store.verify_token(token, now=t0 + timedelta(seconds=30)) == "admin"
    assert rt.store.list_tokens()[0].last_used_at == t0  # not on every request
    assert rt.store.verify_token(token, now=t0 + timedelta(seconds=61)) == "admin"
    assert rt.store.list_tokens()[0].last_used_at == t0 + timedelta(seconds=61)


def test_tokens_list_shows_ids_first_never_the_secret(web):
    _, rt = web
    t1 = rt.store.create_token("admin", "first")
    t2 = rt.store.create_token("bob", "second", expires_in=timedelta(days=3))
    rt.store.verify_token(t1)
    r = _cli("tokens", "list")
    assert r.exit_code == 0
    lines = [line for line in r.output.splitlines() if "user=" in line]
    assert len(lines) == 2
    ids = [info.id for info in rt.store.list_tokens()]
    for line, tid in zip(lines, ids, strict=True):
        assert re.fullmatch(f"[0-9a-f]{{{TOKEN_ID_LEN}}}", line.split()[0]) and line.split()[0] == tid
    assert "label='first'" in lines[0] and "user=admin" in lines[0] and "last_used=20" in lines[0]
    assert "expires=never" in lines[0] and "last_used=never" in lines[1] and "expires=20" in lines[1]
    for secret in (t1, t2, t1.removeprefix("mw_"), t2.removeprefix("mw_")):
        assert secret not in r.output
    only_bob = _cli("tokens", "list", "bob").output
    assert "user=bob" in only_bob and "user=admin" not in only_bob


# -- sessions that end ----------------------------------------------------------------------------


def _saved_session(client) -> str:
    return client.cookies.get(SESSION_COOKIE)


def _replay(app, cookie: str) -> TestClient:
    return TestClient(app, cookies={SESSION_COOKIE: cookie})


def _ended(app, cookie: str) -> None:
    """A replayed session cookie no longer opens pages, the API or the WebSockets."""
    replay = _replay(app, cookie)
    r = replay.get("/settings", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert _replay(app, cookie).get("/api/events").status_code == 401
    with (
        pytest.raises(WebSocketDisconnect) as exc,
        _replay(app, cookie).websocket_connect("/ws/live") as ws,
    ):
        ws.receive_json()
    assert exc.value.code == 1008


def test_logged_out_session_cookie_cannot_be_replayed(web):
    client, _ = web
    assert login(client).status_code == 303
    cookie = _saved_session(client)
    other = TestClient(client.app)  # a second session of the same user, elsewhere
    assert login(other).status_code == 303
    assert _replay(client.app, cookie).get("/settings", follow_redirects=False).status_code == 200
    assert client.post("/logout", data={"csrf_token": _csrf(client, "/")}).status_code == 200
    _ended(client.app, cookie)
    r = other.get("/", follow_redirects=False)  # logout ends every session of that user
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert login(client).status_code == 303 and client.get("/settings").status_code == 200  # login again


def test_password_changed_by_another_session_ends_the_session(web):
    client, rt = web
    bob = TestClient(client.app)
    assert login(bob, "bob", BOB_PASSWORD).status_code == 303
    cookie = _saved_session(bob)
    assert login(client).status_code == 303
    form = {"csrf_token": _csrf(client), "username": "bob", "password": "a new password", "replace": "bob"}
    assert client.post("/settings/users", data=form, follow_redirects=False).status_code == 303
    _ended(client.app, cookie)
    assert client.get("/settings", follow_redirects=False).status_code == 200  # admin's own session stays
    assert rt.store.verify_user("bob", "a new password")


def test_own_password_change_keeps_this_session_only(web):
    client, rt = web
    assert login(client).status_code == 303
    other = TestClient(client.app)
    assert login(other).status_code == 303
    form = {
        "csrf_token": _csrf(client),
        "username": "admin",
        "password": "fresh password",
        "replace": "admin",
    }
    assert client.post("/settings/users", data=form, follow_redirects=False).status_code == 303
    assert client.get("/settings", follow_redirects=False).status_code == 200
    assert other.get("/settings", follow_redirects=False).status_code == 303


def test_removed_user_session_ends_and_last_user_stays(web):
    client, rt = web
    bob = TestClient(client.app)
    assert login(bob, "bob", BOB_PASSWORD).status_code == 303
    cookie = _saved_session(bob)
    bob_token = rt.store.create_token("bob")
    assert login(client).status_code == 303
    assert client.post("/settings/users/remove", data={"username": "bob"}).status_code == 403  # no CSRF
    assert rt.store.user_exists("bob")
    r = client.post(
        "/settings/users/remove",
        data={"csrf_token": _csrf(client), "username": "bob"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and rt.store.list_users() == ["admin"]
    _ended(client.app, cookie)
    assert _api(client.app, bob_token).status_code == 401  # its tokens went with it
    r = client.post("/settings/users/remove", data={"csrf_token": _csrf(client), "username": "admin"})
    assert r.status_code == 400 and "last user" in r.text and rt.store.list_users() == ["admin"]


def test_cli_removes_users_but_never_the_last(web):
    _, rt = web
    r = _cli("users", "remove", "bob")
    assert r.exit_code == 0 and rt.store.list_users() == ["admin"]
    r = _cli("users", "remove", "admin")
    assert r.exit_code != 0 and "last user" in r.output and rt.store.list_users() == ["admin"]
    assert _cli("users", "remove", "nobody").exit_code != 0
    with pytest.raises(ValueError, match="last user"):
        rt.store.delete_user("admin")


def test_replacing_an_existing_password_needs_confirmation_and_is_logged(web, caplog):
    client, rt = web
    assert login(client).status_code == 303
    base = {"csrf_token": _csrf(client), "password": "stolen password"}
    for name in ("bob", "  bob  "):  # stripped as the store keeps names
        r = client.post("/settings/users", data={**base, "username": name})
        assert r.status_code == 409 and "Replace the password of existing user bob" in r.text
    r = client.post("/settings/users", data={**base, "username": "bob", "replace": "admin"})
    assert r.status_code == 409  # a confirmation for another name does not count
    assert rt.store.verify_user("bob", BOB_PASSWORD) and not rt.store.verify_user("bob", "stolen password")
    r = client.post("/settings/users", data={**base, "username": "Bob"}, follow_redirects=False)
    assert r.status_code == 303 and rt.store.list_users() == ["Bob", "admin", "bob"]  # case-sensitive: new
    with caplog.at_level(logging.WARNING, logger="maskwatch.web.routes.pages"):
        r = client.post(
            "/settings/users", data={**base, "username": "bob", "replace": "bob"}, follow_redirects=False
        )
    assert r.status_code == 303 and rt.store.verify_user("bob", "stolen password")
    assert "user admin replaced the password of user bob" in caplog.text
    assert "stolen password" not in caplog.text


# -- login limits ---------------------------------------------------------------------------------


def _peer(app, address: str, **kw) -> TestClient:
    return TestClient(app, client=(address, 40000), **kw)


def test_failures_for_a_name_never_refuse_the_right_password(web):
    client, rt = web
    a, b = _peer(client.app, "198.51.100.1"), _peer(client.app, "203.0.113.9")
    codes = [login(a, "admin", "wrong password").status_code for _ in range(5)]
    assert codes[:4] == [401] * 4 and codes[4] == 429  # the name backs off failures
    r = login(a, "admin", "wrong password")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert login(b, "admin").status_code == 303  # the right password from elsewhere
    for _ in range(5):
        login(a, "admin", "wrong password")
    assert login(a, "admin").status_code == 303  # and from the same address


def test_address_limit_stops_brute_force_across_names(web):
    client, rt = web
    rt.limiter = LoginLimiter(name_failures=5, address_failures=8, window_s=60)
    a, b = _peer(client.app, "198.51.100.1"), _peer(client.app, "203.0.113.9")
    for i in range(8):
        assert login(a, f"user{i}", "guess").status_code == 401  # one try per name: no name backoff
    r = login(a, "admin")
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0  # not even checked
    r = login(a, "bob", BOB_PASSWORD)
    assert r.status_code == 429
    assert login(b, "admin").status_code == 303  # other addresses are not affected


def test_limiter_backoff_grows_and_a_success_clears_the_name():
    lim = LoginLimiter(name_failures=2, address_failures=100, window_s=600, max_backoff_s=60)
    waits = []
    for _ in range(6):
        lim.fail("a", "admin")
        waits.append(lim.name_wait("admin"))
    assert waits[0] == 0 and waits[1:] == sorted(waits[1:]) and waits[-1] > waits[1]
    assert lim.name_wait("bob") == 0 and lim.address_wait("a") == 0
    lim.success("a", "admin")
    assert lim.name_wait("admin") == 0


def test_forwarded_for_ignored_from_untrusted_peer(web):
    client, rt = web
    rt.limiter = LoginLimiter(name_failures=50, address_failures=3, window_s=60)
    for i in range(3):  # an untrusted peer cannot pick a new address for each try
        peer = _peer(client.app, "10.0.0.7", headers={"X-Forwarded-For": f"192.0.2.{i}"})
        assert login(peer, "admin", "wrong password").status_code == 401
    peer = _peer(client.app, "10.0.0.7", headers={"X-Forwarded-For": "192.0.2.200"})
    assert login(peer, "admin").status_code == 429


def test_forwarded_for_honoured_from_trusted_proxy(tmp_path, tiny_models):
    app, store = _make(tmp_path, tiny_models, web={"trusted_proxies": ["10.0.0.0/24", "::1"]})
    rt = app.state.runtime
    rt.limiter = LoginLimiter(name_failures=50, address_failures=3, window_s=60)
    with TestClient(app):

        def via_proxy(xff: str) -> TestClient:
            return _peer(app, "10.0.0.7", headers={"X-Forwarded-For": xff})

        for _ in range(3):  # the client spoofs a left-most address; the proxy appends the real one
            assert login(via_proxy("1.1.1.1, 198.51.100.5, 10.0.0.3"), "admin", "bad pass").status_code == 401
        assert login(via_proxy("198.51.100.5"), "admin").status_code == 429  # the real client is limited
        assert login(via_proxy("198.51.100.6"), "admin").status_code == 303  # another one is not
        assert login(_peer(app, "10.0.0.7"), "admin").status_code == 303  # the proxy itself is not
    store.close()


def test_trusted_proxies_must_be_addresses():
    with pytest.raises(ValueError, match="not an IP address"):
        Settings(web={"trusted_proxies": ["proxy.example"]})
    assert Settings().web.trusted_proxies == []


# -- schema upgrade -------------------------------------------------------------------------------

# `iterdump()` of a database written by the schema-2 code (commit 8e0278e): two users, one token.
SCHEMA_2_DUMP = """
CREATE TABLE meta ("key" VARCHAR(64) NOT NULL, value TEXT NOT NULL, PRIMARY KEY ("key"));
INSERT INTO "meta" VALUES('schema_version','2');
CREATE TABLE minute_stats (camera VARCHAR(200) NOT NULL, minute DATETIME NOT NULL, people INTEGER NOT NULL,
  masked INTEGER NOT NULL, unmasked INTEGER NOT NULL, incorrect INTEGER NOT NULL, uncertain INTEGER NOT NULL,
  man INTEGER NOT NULL, woman INTEGER NOT NULL, PRIMARY KEY (camera, minute));
CREATE TABLE settings ("key" VARCHAR(64) NOT NULL, value JSON NOT NULL, PRIMARY KEY ("key"));
CREATE TABLE tokens (token_hash VARCHAR(64) NOT NULL, user VARCHAR(100) NOT NULL, label VARCHAR(200) NOT NULL,
  created DATETIME NOT NULL, PRIMARY KEY (token_hash));
INSERT INTO "tokens" VALUES('d952ea317ba30b055a1bb3617050223433c01d49a8d3f2542aef50588b9ec1d6','admin',
  'old script','2026-12-02 15:20:12.184205');
CREATE TABLE users (name VARCHAR(100) NOT NULL, password_hash TEXT NOT NULL, created DATETIME NOT NULL,
  PRIMARY KEY (name));
INSERT INTO "users" VALUES('admin',
  '$argon2id$v=19$m=65536,t=3,p=4$pnmeW5eiqat8FmSavpmIhQ$' || 'dLLcfJBpSwiHi5P9spu3EqekVTvBI1xd6c/9Ll85NRs',
  '2026-12-02 15:20:11.894137');
INSERT INTO "users" VALUES('bob',
  '$argon2id$v=19$m=65536,t=3,p=4$rnOE+L/+aL0ocoy7S54dpQ$' || '3AEYBm0FlA21Y4qQi5YHykxmWffCcsFJBRwdchGaUco',
  '2026-12-02 15:20:12.181309');
CREATE INDEX ix_tokens_user ON tokens (user);
"""
SCHEMA_2_TOKEN = "mw_WwGraddTqZrXoENnO-38hsCP9BHQjKWZGBwj8XaDUU4"


def test_schema_2_database_is_upgraded_in_place(tmp_path):
    con = sqlite3.connect(tmp_path / "m.db")
    con.executescript(SCHEMA_2_DUMP)
    con.close()
    url = f"sqlite:///{tmp_path / 'm.db'}"
    store = Store(url, snapshots_dir=tmp_path / "snaps")
    assert store.schema_version() == SCHEMA_VERSION == 3
    assert store.verify_user("admin", PASSWORD) and store.verify_user("bob", "bob password 1")
    assert store.verify_token(SCHEMA_2_TOKEN) == "admin"  # old tokens keep working, never expire
    (info,) = store.list_tokens()
    assert info.label == "old script" and info.expires_at is None and info.last_used_at is not None
    assert store.session_version("admin") == 0
    store.add_user("admin", "another password")  # a new password: a new session version
    assert store.session_version("admin") not in (None, 0)
    assert store.revoke_token(info.id) and store.verify_token(SCHEMA_2_TOKEN) is None
    store.close()
    Store(url, snapshots_dir=tmp_path / "snaps").close()  # reopening the upgraded database is a no-op


def test_an_open_live_socket_closes_soon_after_logout(web, monkeypatch):
    """A WebSocket is authenticated when it connects, and again every few seconds: a page left open
    stops receiving camera frames once its session ends."""
    import maskwatch.web.routes.live as live

    monkeypatch.setattr(live, "SESSION_RECHECK_S", 0.3)
    client, _ = web
    assert login(client).status_code == 303
    other = TestClient(client.app)
    assert login(other).status_code == 303
    with pytest.raises(WebSocketDisconnect) as exc, client.websocket_connect("/ws/live") as ws:
        assert ws.receive_json()["type"] == "cameras"  # connected and served
        assert other.post("/logout", data={"csrf_token": _csrf(other, "/")}).status_code == 200
        for _ in range(10):  # state messages come about once a second until the re-check closes it
            ws.receive_json()
    assert exc.value.code == 1008
