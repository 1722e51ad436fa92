"""A :class:`~imrobots.store.Store` in one SQLite file, shared by processes on one host.

All database work runs in one dedicated worker thread per store, which owns the
connection, so no coroutine ever blocks the event loop. Every operation that
reads and then writes is one ``BEGIN IMMEDIATE`` transaction: SQLite takes the
file's write lock before the read, so the operation is atomic across every
thread and process that opens the same file (the database runs in WAL mode,
and a busy timeout makes writers queue up instead of failing).

Expiry times (dedupe, locks, rate-limit windows) use the wall clock, :func:`time.time`,
because several processes must agree on them; :class:`~imrobots.store.MemoryStore`
uses the monotonic clock, which is only comparable inside one process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from .errors import ImrobotsError
from .models import Feedback, FeedbackRating, Sender
from .store import (
    ClaimResult,
    Fence,
    LockLost,
    Store,
    StoreUnavailable,
    Turn,
    _Window,
    window_earliest,
    window_penalize,
    windows_reserve,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

_T = TypeVar("_T")

SCHEMA_VERSION: Final = 3
"""Version of the tables below, kept in the file's ``PRAGMA user_version``.
(2: rate limits are sliding windows; version 1's token buckets are dropped.
3: locks carry fencing tokens.)"""

_BUSY_TIMEOUT: Final = 10.0
"""Seconds a write waits for another connection's transaction before failing."""

_PURGE_INTERVAL: Final = 60.0
"""Seconds between opportunistic deletions of expired rows (by one store object)."""

_NEVER: Final = math.inf
"""The ``expires`` of a ``kv`` row stored by ``setdefault_value``: it never expires."""

_SCHEMA: Final = (
    # Dedupe, phase one: keys being handled, until ``expires``.
    """CREATE TABLE IF NOT EXISTS in_flight (
        key TEXT PRIMARY KEY,
        expires REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS in_flight_expires ON in_flight (expires)",
    # Dedupe, phase two: handled keys. ``seq`` grows with every (re)completion, so
    # the smallest ``seq`` is the oldest entry, the first evicted beyond max_keys.
    """CREATE TABLE IF NOT EXISTS done (
        seq INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        expires REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS done_expires ON done (expires)",
    # ``token``: the holder's fencing token, from the ``lock_token`` counter.
    """CREATE TABLE IF NOT EXISTS locks (
        key TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires REAL NOT NULL,
        token INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS locks_expires ON locks (expires)",
    # Named counters; ``lock_token`` is the last fencing token issued.
    """CREATE TABLE IF NOT EXISTS counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # A rate-limit window: its grant times (JSON, ascending) and penalty. ``expires``: when
    # no grant can matter any more; an expired window equals a missing one.
    """CREATE TABLE IF NOT EXISTS windows (
        key TEXT PRIMARY KEY,
        times TEXT NOT NULL,
        blocked_until REAL NOT NULL,
        window REAL NOT NULL,
        expires REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS windows_expires ON windows (expires)",
    """CREATE TABLE IF NOT EXISTS feedback (
        id INTEGER PRIMARY KEY,
        robot TEXT NOT NULL,
        platform TEXT NOT NULL,
        message_id TEXT NOT NULL,
        sender_id TEXT NOT NULL,
        sender_name TEXT,
        sender_is_admin INTEGER NOT NULL,
        rating TEXT NOT NULL,
        question TEXT NOT NULL,
        answer TEXT NOT NULL,
        conversation_id TEXT,
        card_id TEXT,
        time TEXT NOT NULL,
        UNIQUE (robot, message_id, sender_id, platform)
    )""",
    "CREATE INDEX IF NOT EXISTS feedback_robot ON feedback (robot, id)",
    # ``expires``: the conversation's history is forgotten then (+infinity: kept).
    """CREATE TABLE IF NOT EXISTS history (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        role TEXT NOT NULL,
        text TEXT NOT NULL,
        expires REAL NOT NULL DEFAULT 1e999
    )""",
    "CREATE INDEX IF NOT EXISTS history_key ON history (key, id)",
    # Small records (put_value/get_value); ``seq`` orders them like ``done.seq``.
    # setdefault_value's rows never expire: ``expires`` is +infinity.
    """CREATE TABLE IF NOT EXISTS kv (
        seq INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        value TEXT NOT NULL,
        expires REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires)",
)

_FEEDBACK_COLUMNS: Final = (
    "robot, platform, message_id, sender_id, sender_name, sender_is_admin, rating,"
    " question, answer, conversation_id, card_id, time"
)


def path_problem(path: str | os.PathLike[str]) -> str | None:
    """What keeps a SQLite store at ``path`` from opening, or from keeping its state, that
    can be seen without opening it, or ``None``: the path is empty (``sqlite3`` would open
    a temporary database, deleted when the store closes: a ``{{VAR}}`` set to nothing lost
    every restart's state without a word), it is a directory, or its directory does not
    exist."""
    if not os.fspath(path).strip():
        return (
            "is empty: SQLite would keep the store in a temporary file, deleted when it "
            "closes; give the file's path"
        )
    full = os.path.abspath(path)
    if os.path.isdir(full):
        return f"{full} is a directory; give the path of a file"
    folder = os.path.dirname(full)
    return None if os.path.isdir(folder) else f"the directory {folder} does not exist"


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _feedback_row(feedback: Feedback) -> tuple[Any, ...]:
    return (
        feedback.robot,
        feedback.platform,
        feedback.message_id,
        feedback.sender.id,
        feedback.sender.name,
        int(feedback.sender.is_admin),
        feedback.rating.value,
        feedback.question,
        feedback.answer,
        feedback.conversation_id,
        feedback.card_id,
        _utc(feedback.time).isoformat(timespec="microseconds"),
    )


def _feedback_from_row(row: tuple[Any, ...]) -> Feedback:
    (
        robot,
        platform,
        message_id,
        sender_id,
        sender_name,
        sender_is_admin,
        rating,
        question,
        answer,
        conversation_id,
        card_id,
        moment,
    ) = row
    return Feedback(
        robot=robot,
        platform=platform,
        message_id=message_id,
        rating=FeedbackRating(rating),
        sender=Sender(id=sender_id, name=sender_name, is_admin=bool(sender_is_admin)),
        question=question,
        answer=answer,
        conversation_id=conversation_id,
        card_id=card_id,
        time=_utc(datetime.fromisoformat(moment)),
    )


class SQLiteStore(Store):
    """A store in one SQLite file: survives restarts, shared by processes on one host.

    Feedback, history, small records, dedupe keys, locks and rate-limit windows all
    persist in the file. Several processes (or several ``SQLiteStore`` objects) may open the
    same file; each operation is atomic across all of them. The file must be on
    a local disk: SQLite's locking is unreliable on network file systems.

    The connection is opened, and the schema created, in the store's worker
    thread; an error opening the file is raised by the first operation.
    Call :meth:`close` when done.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_keys: int = 100_000) -> None:
        self.path = os.fspath(path)
        """The database file."""
        self._max_keys = max_keys
        self._conn: sqlite3.Connection | None = None
        self._open_error: BaseException | None = None
        self._next_purge = 0.0  # only touched in the worker thread
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="imrobots-sqlite"
        )
        self._close_future: concurrent.futures.Future[None] | None = None
        # The executor runs jobs in submission order, so this runs before any operation.
        self._executor.submit(self._open)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # --- worker thread --------------------------------------------------------------------
    def _open(self) -> None:
        if not self.path.strip():  # sqlite3 would open a temporary database without a word
            self._open_error = StoreUnavailable(f"SQLite store path {path_problem(self.path)}")
            return
        try:
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT, isolation_level=None)
        except BaseException as error:
            self._open_error = self._cannot_open(error)
            return
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT * 1000)}")
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            self._transaction(conn, self._create_schema, purge=False)
        except BaseException as error:
            conn.close()
            self._open_error = self._cannot_open(error)
            return
        self._conn = conn

    def _cannot_open(self, error: BaseException) -> BaseException:
        """The error every operation raises when the file could not be opened: a
        :class:`StoreUnavailable` naming the file (and a missing directory) for SQLite's
        and the OS's errors, whose own messages name neither."""
        if not isinstance(error, sqlite3.Error | OSError):
            return error
        hint = (
            path_problem(self.path) or "is the file a SQLite database, and its directory writable?"
        )
        return StoreUnavailable(f"SQLite store {self.path}: cannot open the file: {error} ({hint})")

    @staticmethod
    def _use_wal(conn: sqlite3.Connection) -> None:
        """Switch the file to WAL mode, waiting for other connections that are opening it.

        SQLite may refuse the switch with "database is locked" at once, without
        calling the busy handler, while another connection opens the file; so this
        retries (in the worker thread) for up to the busy timeout.
        """
        deadline = time.monotonic() + _BUSY_TIMEOUT
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                busy = getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(0.005)

    def _create_schema(self, conn: sqlite3.Connection, now: float) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise ImrobotsError(
                f"{self.path} has store schema version {version}; this imrobots supports"
                f" up to {SCHEMA_VERSION}: upgrade imrobots"
            )
        if 0 < version < 2:
            conn.execute("DROP TABLE IF EXISTS buckets")
            conn.execute("ALTER TABLE history ADD COLUMN expires REAL NOT NULL DEFAULT 1e999")
        if 0 < version < 3:
            conn.execute("ALTER TABLE locks ADD COLUMN token INTEGER NOT NULL DEFAULT 0")
        for statement in _SCHEMA:
            conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if self._open_error is not None:
                raise self._open_error
            raise RuntimeError("SQLiteStore is closed")
        return self._conn

    def _transaction(
        self,
        conn: sqlite3.Connection,
        operation: Callable[[sqlite3.Connection, float], _T],
        *,
        purge: bool = True,
        durable: bool = False,
    ) -> _T:
        """Run ``operation(conn, now)`` in one write transaction.

        With ``durable``, the commit is synced to disk before it returns, so it survives
        a power loss too; other commits survive a crash of the process, not of the host.
        """
        if durable:
            conn.execute("PRAGMA synchronous = FULL")
        try:
            return self._transaction_body(conn, operation, purge=purge)
        finally:
            if durable:
                conn.execute("PRAGMA synchronous = NORMAL")

    def _transaction_body(
        self,
        conn: sqlite3.Connection,
        operation: Callable[[sqlite3.Connection, float], _T],
        *,
        purge: bool,
    ) -> _T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read the clock once the write lock is held, so that times written by
            # successive transactions (of any process) follow the transactions' order.
            now = time.time()
            result = operation(conn, now)
            purged = purge and now >= self._next_purge
            if purged:
                self._purge(conn, now)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if purged:
            self._next_purge = now + _PURGE_INTERVAL
        return result

    @staticmethod
    def _purge(conn: sqlite3.Connection, now: float) -> int:
        deleted = 0
        for statement in (
            "DELETE FROM in_flight WHERE expires <= ?",
            "DELETE FROM done WHERE expires <= ?",
            "DELETE FROM locks WHERE expires <= ?",
            "DELETE FROM windows WHERE expires <= ?",
            "DELETE FROM history WHERE expires <= ?",
            "DELETE FROM kv WHERE expires <= ?",
        ):
            deleted += conn.execute(statement, (now,)).rowcount
        return deleted

    def _evict_oldest(self, conn: sqlite3.Connection, table: str) -> None:
        """Delete the rows of smallest ``seq`` beyond ``max_keys`` (``done`` or ``kv``).

        Rows that never expire (``setdefault_value``'s) are neither counted nor evicted.
        """
        (count,) = conn.execute(
            f"SELECT count(*) FROM {table} WHERE expires < ?", (_NEVER,)
        ).fetchone()
        if count > self._max_keys:
            conn.execute(
                f"DELETE FROM {table} WHERE seq IN"
                f" (SELECT seq FROM {table} WHERE expires < ? ORDER BY seq LIMIT ?)",
                (_NEVER, count - self._max_keys),
            )

    def _close_in_worker(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def _write(
        self, operation: Callable[[sqlite3.Connection, float], _T], *, durable: bool = False
    ) -> _T:
        """Run ``operation(conn, now)`` in one write transaction in the worker thread."""
        return await self._run(lambda conn: self._transaction(conn, operation, durable=durable))

    async def _run(self, job: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._close_future is not None:
            raise RuntimeError("SQLiteStore is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: job(self._connection()))

    # --- dedupe ---------------------------------------------------------------------------
    async def claim(self, key: str, *, in_flight_ttl: float) -> ClaimResult:
        """Atomically mark ``key`` in flight unless it is in flight or done already."""

        def operation(conn: sqlite3.Connection, now: float) -> ClaimResult:
            row = conn.execute("SELECT expires FROM done WHERE key = ?", (key,)).fetchone()
            if row is not None:
                if row[0] > now:
                    return ClaimResult.DONE
                conn.execute("DELETE FROM done WHERE key = ?", (key,))
            row = conn.execute("SELECT expires FROM in_flight WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] > now:
                return ClaimResult.IN_FLIGHT
            conn.execute(
                "INSERT OR REPLACE INTO in_flight (key, expires) VALUES (?, ?)",
                (key, now + in_flight_ttl),
            )
            return ClaimResult.CLAIMED

        return await self._write(operation)

    async def complete(self, key: str, *, done_ttl: float) -> None:
        """Move ``key`` from in flight to the completed cache for ``done_ttl`` seconds.

        Beyond ``max_keys`` completed keys, the oldest completions are forgotten.
        """

        def operation(conn: sqlite3.Connection, now: float) -> None:
            conn.execute("DELETE FROM in_flight WHERE key = ?", (key,))
            # REPLACE deletes an existing row first, so a re-completed key gets a new seq.
            conn.execute(
                "INSERT OR REPLACE INTO done (key, expires) VALUES (?, ?)", (key, now + done_ttl)
            )
            self._evict_oldest(conn, "done")

        await self._write(operation)

    async def release(self, key: str) -> None:
        """Forget an in-flight ``key`` (its handling failed) so a redelivery can be handled."""
        await self._write(
            lambda conn, now: conn.execute("DELETE FROM in_flight WHERE key = ?", (key,))
        )

    # --- locks ----------------------------------------------------------------------------
    @staticmethod
    def _next_token(conn: sqlite3.Connection, now: float) -> int:
        """Issue the next fencing token. The first one of a file is the wall clock in
        microseconds, so tokens keep growing even if the file is replaced by a new one."""
        row = conn.execute("SELECT value FROM counters WHERE name = 'lock_token'").fetchone()
        token = int(now * 1_000_000) if row is None else int(row[0]) + 1
        conn.execute(
            "INSERT OR REPLACE INTO counters (name, value) VALUES ('lock_token', ?)", (token,)
        )
        return token

    async def acquire_lock(self, key: str, owner: str, *, ttl: float) -> int | None:
        """Take the lock ``key`` for ``owner`` if free (or expired, or already ``owner``'s);
        return its fencing token, or ``None`` (see :meth:`Store.acquire_lock`).

        Taking it again as the same owner succeeds, extends it to ``ttl`` from now and keeps
        the token.
        """

        def operation(conn: sqlite3.Connection, now: float) -> int | None:
            row = conn.execute(
                "SELECT owner, expires, token FROM locks WHERE key = ?", (key,)
            ).fetchone()
            if row is not None and row[1] > now:
                if row[0] != owner:
                    return None
                token = int(row[2])
            else:
                token = self._next_token(conn, now)
            conn.execute(
                "INSERT OR REPLACE INTO locks (key, owner, expires, token) VALUES (?, ?, ?, ?)",
                (key, owner, now + ttl, token),
            )
            return token

        return await self._write(operation)

    async def release_lock(self, key: str, owner: str) -> None:
        """Release the lock if ``owner`` holds it."""
        await self._write(
            lambda conn, now: conn.execute(
                "DELETE FROM locks WHERE key = ? AND owner = ?", (key, owner)
            )
        )

    @staticmethod
    def _held(conn: sqlite3.Connection, key: str, token: int, now: float) -> bool:
        row = conn.execute(
            "SELECT 1 FROM locks WHERE key = ? AND token = ? AND expires > ?", (key, token, now)
        ).fetchone()
        return row is not None

    async def holds_lock(self, key: str, token: int) -> bool:
        """Whether the lock ``key`` is held under ``token`` now."""
        return await self._run(lambda conn: self._held(conn, key, token, time.time()))

    def _check_fence(self, conn: sqlite3.Connection, fence: Fence | None, now: float) -> None:
        """Raise :class:`LockLost` (rolling the transaction back) unless ``fence`` holds."""
        if fence is not None and not self._held(conn, fence.key, fence.token, now):
            raise LockLost(f"lock {fence.key!r} is no longer held under token {fence.token}")

    # --- sliding windows ------------------------------------------------------------------
    @staticmethod
    def _load_window(conn: sqlite3.Connection, key: str) -> tuple[_Window, float]:
        """The window record and its length in seconds (1.0 for a new one)."""
        row = conn.execute(
            "SELECT times, blocked_until, window FROM windows WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return _Window(), 1.0
        return _Window(times=deque(json.loads(row[0])), blocked_until=row[1]), row[2]

    @staticmethod
    def _save_window(conn: sqlite3.Connection, key: str, w: _Window, window: float) -> None:
        last = max(w.times[-1] if w.times else float("-inf"), w.blocked_until)
        conn.execute(
            "INSERT OR REPLACE INTO windows (key, times, blocked_until, window, expires) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, json.dumps(list(w.times)), w.blocked_until, window, last + window),
        )

    async def reserve_all(self, windows: Sequence[tuple[str, int, float]]) -> float:
        """Reserve one call in every window at one time (see :meth:`Store.reserve_all`),
        in one transaction, so processes sharing the file share the windows."""

        def operation(conn: sqlite3.Connection, now: float) -> float:
            # one record per key: a key listed twice is two calls in one window
            loaded = {key: self._load_window(conn, key)[0] for key, _, _ in windows}
            wait = windows_reserve([(loaded[k], limit, w) for k, limit, w in windows], now)
            for key, _, window in {key: (key, limit, w) for key, limit, w in windows}.values():
                self._save_window(conn, key, loaded[key], window)
            return wait

        return await self._write(operation)

    async def room_in(self, key: str, *, limit: int, window: float) -> float:
        """Seconds until the window ``key`` has room (see :meth:`Store.room_in`)."""

        def job(conn: sqlite3.Connection) -> float:
            now = time.time()
            w, _ = self._load_window(conn, key)
            return window_earliest(w, now, limit, window) - now

        return await self._run(job)

    async def penalize(self, key: str, *, seconds: float) -> None:
        """The platform said "rate limited": grant nothing from ``key`` for ``seconds``."""

        def operation(conn: sqlite3.Connection, now: float) -> None:
            w, window = self._load_window(conn, key)
            window_penalize(w, now, seconds)
            self._save_window(conn, key, w, window)

        await self._write(operation)

    # --- feedback -------------------------------------------------------------------------
    async def add_feedback(self, feedback: Feedback) -> bool:
        """Store feedback; return False if the same user already rated the same answer.

        "The same" is the same robot, message id, sender id and platform. Times are
        stored in UTC (a naive time is taken to be UTC). The row is synced to disk
        before this returns.
        """
        row = _feedback_row(feedback)

        def operation(conn: sqlite3.Connection, now: float) -> bool:
            cursor = conn.execute(
                f"INSERT OR IGNORE INTO feedback ({_FEEDBACK_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            return cursor.rowcount == 1

        return await self._write(operation, durable=True)

    async def list_feedback(self, *, robot: str | None = None) -> list[Feedback]:
        """All stored feedback, in the order it was added, optionally for one robot.

        Times come back timezone-aware, in UTC.
        """

        def job(conn: sqlite3.Connection) -> list[Feedback]:
            if robot is None:
                cursor = conn.execute(f"SELECT {_FEEDBACK_COLUMNS} FROM feedback ORDER BY id")
            else:
                cursor = conn.execute(
                    f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE robot = ? ORDER BY id",
                    (robot,),
                )
            return [_feedback_from_row(row) for row in cursor]

        return await self._run(job)

    # --- history --------------------------------------------------------------------------
    async def append_history(
        self, key: str, turns: Sequence[Turn], *, limit: int, ttl: float | None = None
    ) -> None:
        """Append turns to a conversation's history, keeping only the last ``limit``; the
        history is forgotten ``ttl`` seconds after its last turn (``None``: kept)."""
        if limit < 0:
            raise ValueError("limit must be >= 0")

        def operation(conn: sqlite3.Connection, now: float) -> None:
            expires = now + ttl if ttl is not None else math.inf
            conn.execute("DELETE FROM history WHERE key = ? AND expires <= ?", (key, now))
            conn.execute("UPDATE history SET expires = ? WHERE key = ?", (expires, key))
            rows = [(key, turn.role, turn.text, expires) for turn in turns]
            conn.executemany(
                "INSERT INTO history (key, role, text, expires) VALUES (?, ?, ?, ?)", rows
            )
            conn.execute(
                "DELETE FROM history WHERE key = ? AND id <= (SELECT id FROM history"
                " WHERE key = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (key, key, limit),
            )

        await self._write(operation)

    async def history(self, key: str) -> list[Turn]:
        """The conversation's history, oldest first."""

        def job(conn: sqlite3.Connection) -> list[Turn]:
            cursor = conn.execute(
                "SELECT role, text FROM history WHERE key = ? AND expires > ? ORDER BY id",
                (key, time.time()),
            )
            return [Turn(role=role, text=text) for role, text in cursor]

        return await self._run(job)

    # --- small records --------------------------------------------------------------------
    async def put_value(
        self, key: str, value: str, *, ttl: float, fence: Fence | None = None
    ) -> None:
        """Remember ``value`` under ``key`` for ``ttl`` seconds (answers for feedback).

        Beyond ``max_keys`` records, the ones put longest ago are forgotten first. With
        ``fence``, in the same transaction: only while that lock is held under its token.
        """

        def operation(conn: sqlite3.Connection, now: float) -> None:
            self._check_fence(conn, fence, now)
            # REPLACE deletes an existing row first, so a rewritten key gets a new seq.
            conn.execute(
                "INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)",
                (key, value, now + ttl),
            )
            self._evict_oldest(conn, "kv")

        await self._write(operation)

    async def get_value(self, key: str) -> str | None:
        """The value stored under ``key``, or ``None`` if absent or expired."""

        def job(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT value FROM kv WHERE key = ? AND expires > ?", (key, time.time())
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._run(job)

    async def setdefault_value(self, key: str, value: str) -> str:
        """Atomically store ``value`` under ``key`` unless a value is there; return the stored one.

        The value never expires and is never evicted; it is synced to disk before this
        returns. One transaction, so of every process sharing the file, one wins.
        """

        def operation(conn: sqlite3.Connection, now: float) -> str:
            row = conn.execute(
                "SELECT value FROM kv WHERE key = ? AND expires > ?", (key, now)
            ).fetchone()
            if row is not None:
                return str(row[0])
            conn.execute(
                "INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)",
                (key, value, _NEVER),
            )
            return value

        return await self._write(operation, durable=True)

    async def delete_value(self, key: str, *, fence: Fence | None = None) -> None:
        """Forget the value under ``key``, if any (with ``fence``: as in :meth:`put_value`)."""

        def operation(conn: sqlite3.Connection, now: float) -> None:
            self._check_fence(conn, fence, now)
            conn.execute("DELETE FROM kv WHERE key = ?", (key,))

        await self._write(operation)

    async def scan_values(self, prefix: str) -> dict[str, str]:
        """Every unexpired value whose key starts with ``prefix``, by key."""

        def job(conn: sqlite3.Connection) -> dict[str, str]:
            # Keys with the prefix are one contiguous run of the key index, from the prefix on.
            cursor = conn.execute(
                "SELECT key, value FROM kv WHERE key >= ? AND expires > ? ORDER BY key",
                (prefix, time.time()),
            )
            found: dict[str, str] = {}
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                found[str(key)] = str(value)
            return found

        return await self._run(job)

    # --- maintenance ----------------------------------------------------------------------
    async def purge_expired(self) -> int:
        """Delete expired dedupe keys, locks, records and rate-limit windows; return the count.

        Writes already do this at most once a minute; call it to reclaim space at once.
        """

        def operation(conn: sqlite3.Connection, now: float) -> int:
            return self._purge(conn, now)

        return await self._run(lambda conn: self._transaction(conn, operation, purge=False))

    async def close(self) -> None:
        """Close the connection and stop the worker thread. Safe to call more than once.

        Operations started before ``close`` finish first; later ones raise ``RuntimeError``.
        """
        if self._close_future is None:
            self._close_future = self._executor.submit(self._close_in_worker)
            # The worker thread ends once the jobs already queued (and the close) are done.
            self._executor.shutdown(wait=False)
        await asyncio.wrap_future(self._close_future)
