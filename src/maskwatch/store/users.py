"""The users section of the store: users (argon2 password hashes, per-user session versions) and API
tokens (only their SHA-256 is stored)."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from maskwatch.store.base import StoreBase, _changed, utcnow
from maskwatch.store.rows import TokenRow, UserRow

TOKEN_ID_LEN = 12  # a token's public ID: the first hex digits of its hash (reveals nothing of the token)
TOKEN_ID_RE = re.compile(f"[0-9a-f]{{{TOKEN_ID_LEN}}}")
TOKEN_USE_RESOLUTION = timedelta(minutes=1)  # last_used_at is written at most this often per token


@dataclass(frozen=True)
class TokenInfo:
    """An API token as listed (CLI, settings page): never its secret."""

    id: str
    user: str
    label: str
    created: datetime
    last_used_at: datetime | None
    expires_at: datetime | None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or utcnow())


def _token_info(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        row.token_hash[:TOKEN_ID_LEN], row.user, row.label, row.created, row.last_used_at, row.expires_at
    )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _new_version(old: int | None = None) -> int:
    """A random session version other than `old`."""
    while True:
        v = secrets.randbelow(2**31 - 1) + 1
        if v != old:
            return v


class UsersSection(StoreBase):
    _hasher: PasswordHasher

    def add_user(self, name: str, password: str) -> None:
        """Add a user, or set a new password for an existing one (which ends all its sessions)."""
        name = name.strip()
        if not name or len(name) > 100:
            raise ValueError("user name must be 1-100 characters")
        if len(password) < 8:
            raise ValueError("password must have at least 8 characters")
        hashed = self._hasher.hash(password)

        def write(session: Session) -> None:
            row = session.get(UserRow, name)
            if row is None:  # a random first version: a re-created name never revives old cookies
                session.add(
                    UserRow(name=name, password_hash=hashed, created=utcnow(), session_version=_new_version())
                )
            else:
                row.password_hash = hashed
                row.session_version = _new_version(row.session_version)

        self._run("saving a user", write)

    def user_exists(self, name: str) -> bool:
        """Whether `name` (stripped, case-sensitive, as add_user stores it) is a user."""
        return self._run("reading users", lambda s: s.get(UserRow, name.strip()) is not None)

    def session_version(self, name: str) -> int | None:
        """The version a session of `name` must carry to be valid; None when there is no such user."""
        row = self._run("reading users", lambda s: s.get(UserRow, name))
        return None if row is None else row.session_version

    def end_sessions(self, name: str) -> bool:
        """End every session of `name` (logout): its session version changes."""

        def write(session: Session) -> bool:
            row = session.get(UserRow, name)
            if row is not None:
                row.session_version = _new_version(row.session_version)
            return row is not None

        return self._run("ending sessions", write)

    def verify_user(self, name: str, password: str) -> bool:
        row = self._run("reading users", lambda s: s.get(UserRow, name.strip()))
        if row is None:
            self._hasher.hash(password)  # similar time whether or not the user exists
            return False
        try:
            return self._hasher.verify(row.password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def list_users(self) -> list[str]:
        return self._run(
            "reading users", lambda s: list(s.scalars(select(UserRow.name).order_by(UserRow.name)))
        )

    def has_users(self) -> bool:
        return self._run("reading users", lambda s: s.scalar(select(UserRow.name).limit(1)) is not None)

    def delete_user(self, name: str) -> bool:
        """Remove a user with its tokens (its sessions end: it has no session version any more). False
        when there is no such user; ValueError for the last user."""
        name = name.strip()

        def write(session: Session) -> bool:
            names = list(session.scalars(select(UserRow.name).with_for_update()))  # PostgreSQL: rows locked
            if name not in names:
                return False
            if len(names) == 1:
                raise ValueError(f"{name} is the last user and cannot be removed; add another user first")
            session.execute(delete(TokenRow).where(TokenRow.user == name))
            return _changed(session, delete(UserRow).where(UserRow.name == name)) == 1

        return self._run("deleting a user", write)

    def create_token(self, user: str, label: str = "", *, expires_in: timedelta | None = None) -> str:
        """A new API token for `user` (valid for `expires_in`, None: until revoked); only its SHA-256 is
        stored, so show it once."""
        token = "mw_" + secrets.token_urlsafe(32)
        now = utcnow()
        if expires_in is not None and expires_in <= timedelta(0):
            raise ValueError("a token's lifetime must be positive")
        expires_at = None if expires_in is None else now + expires_in

        def write(session: Session) -> None:
            if session.get(UserRow, user) is None:
                raise ValueError(f"no such user: {user!r}")
            row = TokenRow(token_hash=_sha256(token), user=user, label=label, created=now)
            row.expires_at = expires_at
            session.add(row)

        self._run("saving a token", write)
        return token

    def verify_token(self, token: str, *, now: datetime | None = None) -> str | None:
        """The user a valid (known, unexpired) token belongs to, or None. Its last use is written at
        most once per TOKEN_USE_RESOLUTION."""
        now = now or utcnow()
        token_hash = _sha256(token)

        def check(session: Session) -> str | None:
            row = session.get(TokenRow, token_hash)
            if row is None or (row.expires_at is not None and row.expires_at <= now):
                return None
            if row.last_used_at is None or now - row.last_used_at >= TOKEN_USE_RESOLUTION:
                row.last_used_at = now
            return row.user

        return self._run("reading tokens", check)

    def list_tokens(self, user: str | None = None) -> list[TokenInfo]:
        """Tokens (all, or `user`'s), oldest first; never their secret (only its hash is stored)."""
        q = select(TokenRow).order_by(TokenRow.created, TokenRow.token_hash)
        if user is not None:
            q = q.where(TokenRow.user == user)
        return self._run("reading tokens", lambda s: [_token_info(r) for r in s.scalars(q)])

    def revoke_token(self, token_or_id: str, *, user: str | None = None) -> bool:
        """Delete a token, given by its ID (TokenInfo.id) or by the token itself; only `user`'s when
        given. False when nothing matched."""
        key = token_or_id.strip().lower()
        if TOKEN_ID_RE.fullmatch(key):
            where = TokenRow.token_hash.startswith(key)  # hex digits only: no LIKE wildcards
        else:
            where = TokenRow.token_hash == _sha256(token_or_id.strip())
        q = delete(TokenRow).where(where)
        if user is not None:
            q = q.where(TokenRow.user == user)
        return self._run("deleting a token", lambda s: _changed(s, q) >= 1)
