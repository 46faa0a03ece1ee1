"""SQLite state: accounts (credit ledger), assets (trainings) and idempotency records.

One connection guarded by a lock, WAL journal. Every call is a short transaction run on
the event loop: simpler than a thread pool and fast enough, because rows are tiny and the
slow parts (uploads, PNG rendering) happen elsewhere. API keys are never stored: an
account is the SHA-256 of its key.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.sandbox.quota import InsufficientCredit, Quota, QuotaExceeded

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    balance INTEGER,
    credits_charged INTEGER NOT NULL DEFAULT 0,
    trainings INTEGER NOT NULL DEFAULT 0,
    posts INTEGER NOT NULL DEFAULT 0,
    replays INTEGER NOT NULL DEFAULT 0,
    stored_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS assets (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    trigger_word TEXT NOT NULL UNIQUE,
    args TEXT NOT NULL,
    created_at REAL NOT NULL,
    duration REAL NOT NULL,
    final_at REAL NOT NULL,
    outcome TEXT NOT NULL,
    status TEXT NOT NULL,
    updated_at REAL NOT NULL,
    history TEXT NOT NULL,
    base_url TEXT NOT NULL,
    image_dir TEXT NOT NULL,
    images TEXT NOT NULL,
    webhook_url TEXT,
    webhook_state TEXT NOT NULL DEFAULT 'none',
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_next_at REAL NOT NULL DEFAULT 0,
    request_hash TEXT
);
CREATE INDEX IF NOT EXISTS assets_due ON assets (final_at) WHERE status NOT IN ('success', 'fail');
CREATE INDEX IF NOT EXISTS assets_hooks ON assets (webhook_next_at) WHERE webhook_state = 'pending';
CREATE TABLE IF NOT EXISTS idempotency (
    account TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (account, key)
);
"""


@dataclass(frozen=True)
class Asset:
    """One training as stored; ``status`` is the last materialized state, see training.py."""

    id: str
    account: str
    trigger_word: str
    args: dict[str, Any]
    created_at: float
    duration: float
    final_at: float
    outcome: str
    status: str
    updated_at: float
    history: list[dict[str, Any]]
    base_url: str
    image_dir: str
    images: list[str]
    webhook_url: str | None
    webhook_state: str
    webhook_attempts: int
    webhook_next_at: float
    # What makes two trainings "the same request" (see idempotency.py); None in rows written
    # before the column existed.
    request_hash: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Asset:
        data = dict(row)
        for name in ("args", "history", "images"):
            data[name] = json.loads(data[name])
        return cls(**data)


@dataclass(frozen=True)
class IdempotentAnswer:
    request_hash: str
    status_code: int
    body: bytes
    created_at: float


@dataclass(frozen=True)
class NewAsset:
    """A training to insert: an ``Asset`` before the store draws its trigger word.
    ``stored_bytes`` is what its uploads take on disk, counted against the key's quota."""

    id: str
    account: str
    args: dict[str, Any]
    created_at: float
    duration: float
    outcome: str
    status: str
    history: list[dict[str, Any]]
    base_url: str
    image_dir: str
    images: list[str]
    webhook_url: str | None
    request_hash: str | None = None
    stored_bytes: int = 0


class Store:
    """The sandbox's only persistent state; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a crash of the process (not of the machine): enough
        # for a stand-in, and it keeps a POST at well under a millisecond of SQLite time.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(assets)")}
        if "request_hash" not in columns:  # a state dir from before duplicates were hashed
            self._db.execute("ALTER TABLE assets ADD COLUMN request_hash TEXT")
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(accounts)")}
        if "stored_bytes" not in columns:  # a state dir from before quotas: counts from now
            self._db.execute(
                "ALTER TABLE accounts ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0"
            )

    @classmethod
    def read_only(cls, path: Path, give_up: Callable[[], bool] | None = None) -> Store:
        """A store over a database someone else may have written (``runner report`` reads a
        committed ``.runner/sandbox``): opened read-only and immutable (nothing is written,
        no ``-wal``/``-shm`` file beside it is opened), its schema not trusted (no functions
        from views or triggers), ``assets`` required to be a real table, and every query
        abandoned once ``give_up()`` says so, so a hostile view cannot loop forever.
        Only the reading methods work on it."""
        from urllib.parse import quote

        uri = "file:" + quote(str(path.absolute())) + "?mode=ro&immutable=1"
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            if give_up is not None:
                db.set_progress_handler(lambda: 1 if give_up() else 0, 1000)
            db.execute("PRAGMA trusted_schema=OFF")
            db.execute("PRAGMA cell_size_check=ON")
            db.execute("PRAGMA query_only=ON")
            kinds = dict(
                db.execute(
                    "SELECT name, type FROM sqlite_master WHERE name IN ('assets', 'accounts')"
                ).fetchall()
            )
            if kinds.get("assets") != "table":
                raise sqlite3.DatabaseError("not a sandbox database (no assets table)")
        except BaseException:
            db.close()
            raise
        store = cls.__new__(cls)
        store._lock = threading.RLock()
        store._db = db
        return store

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, params).fetchone()
        return row

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- accounts -------------------------------------------------------------------

    def reset_balances(self, credits: int | None) -> None:
        """``--credits N`` sets every key's balance at start-up, including known ones."""
        with self._tx() as db:
            db.execute("UPDATE accounts SET balance = ?", (credits,))
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('credits', ?)",
                (json.dumps(credits),),
            )

    def ensure_account(self, account: str, customer_id: str, credits: int | None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO accounts (id, customer_id, balance) VALUES (?, ?, ?)",
                (account, customer_id, credits),
            )

    def count_post(self, account: str) -> None:
        self._bump(account, "UPDATE accounts SET posts = posts + 1 WHERE id = ?")

    def usage(self, account: str) -> tuple[int, int]:
        """(trainings, stored upload bytes) of the account so far."""
        row = self._one("SELECT trainings, stored_bytes FROM accounts WHERE id = ?", (account,))
        return (0, 0) if row is None else (int(row["trainings"]), int(row["stored_bytes"]))

    def count_replay(self, account: str) -> None:
        self._bump(account, "UPDATE accounts SET replays = replays + 1 WHERE id = ?")

    def _bump(self, account: str, update: str) -> None:
        with self._tx() as db:
            db.execute(update, (account,))

    def ledger(self, account: str) -> dict[str, Any]:
        with self._lock:  # one snapshot: every writer takes the same lock
            row = self._one(
                "SELECT credits_charged, trainings, posts, replays, balance, stored_bytes"
                " FROM accounts WHERE id = ?",
                (account,),
            )
            inputs = self._all(
                "SELECT args, request_hash FROM assets WHERE account = ? ORDER BY rowid",
                (account,),
            )
        if row is None:
            return {"credits_charged": 0, "trainings": 0, "posts": 0, "replays": 0,
                    "balance": None, "stored_bytes": 0, "duplicate_trainings": 0}  # fmt: skip
        return {**dict(row), "duplicate_trainings": _duplicates(inputs)}

    # -- assets ---------------------------------------------------------------------

    def create_asset(
        self,
        new: NewAsset,
        make_trigger_word: Callable[[], str],
        *,
        cost: int = 1,
        quota: Quota | None = None,
    ) -> Asset:
        """Charge and insert in one transaction, so a training is never started unpaid
        nor paid twice, and concurrent requests cannot together pass ``quota``; the trigger
        word is drawn again on the (rare) collision."""
        with self._tx() as db:
            row = db.execute(
                "SELECT balance, trainings, stored_bytes FROM accounts WHERE id = ?",
                (new.account,),
            ).fetchone()
            balance = None if row is None else row["balance"]
            if quota is not None and row is not None:
                refusal = quota.refusal(row["trainings"], row["stored_bytes"], new.stored_bytes)
                if refusal:
                    raise QuotaExceeded(refusal)
            if balance is not None and balance < cost:
                raise InsufficientCredit(balance)
            _insert_asset(db, new, make_trigger_word)
            db.execute(
                "UPDATE accounts SET balance = CASE WHEN balance IS NULL THEN NULL"
                " ELSE balance - ? END, credits_charged = credits_charged + ?,"
                " trainings = trainings + 1, stored_bytes = stored_bytes + ? WHERE id = ?",
                (cost, cost, new.stored_bytes, new.account),
            )
        asset = self.get_asset(new.account, new.id)
        assert asset is not None
        return asset

    def get_asset(self, account: str, ident: str) -> Asset | None:
        """By asset id or trigger word, and only within the account (isolation)."""
        row = self._one(
            "SELECT * FROM assets WHERE account = ? AND (id = ? OR trigger_word = ?)",
            (account, ident, ident),
        )
        return None if row is None else Asset.from_row(row)

    def get_asset_by_id(self, asset_id: str) -> Asset | None:
        row = self._one("SELECT * FROM assets WHERE id = ?", (asset_id,))
        return None if row is None else Asset.from_row(row)

    def advance_asset(
        self,
        asset_id: str,
        *,
        from_status: str,
        status: str,
        updated_at: float,
        history: list[dict[str, Any]],
        webhook_state: str | None = None,
    ) -> bool:
        """Compare-and-set on the status, so only one caller wins each transition (and
        therefore only one of them schedules the webhook)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE assets SET status = ?, updated_at = ?, history = ?,"
                " webhook_state = COALESCE(?, webhook_state) WHERE id = ? AND status = ?",
                (status, updated_at, json.dumps(history), webhook_state, asset_id, from_status),
            )
            return cur.rowcount == 1

    def due_asset_ids(self, now: float, limit: int = 500) -> list[str]:
        """Trainings whose end has come but whose final status is not written yet."""
        where = "status NOT IN ('success', 'fail') AND final_at <= ? ORDER BY final_at"
        return self._ids(where, now, limit)

    def due_webhook_ids(self, now: float, limit: int = 100) -> list[str]:
        where = "webhook_state = 'pending' AND webhook_next_at <= ? ORDER BY webhook_next_at"
        return self._ids(where, now, limit)

    def _ids(self, where: str, now: float, limit: int) -> list[str]:
        rows = self._all(f"SELECT id FROM assets WHERE {where} LIMIT ?", (now, limit))
        return [r["id"] for r in rows]

    def set_webhook(
        self, asset_id: str, *, state: str, attempts: int, next_at: float, note: str | None
    ) -> None:
        with self._tx() as db:
            row = db.execute("SELECT history FROM assets WHERE id = ?", (asset_id,)).fetchone()
            if row is None:
                return
            history = json.loads(row["history"])
            if note:
                history.append({"status": "webhook", "message": note})
            db.execute(
                "UPDATE assets SET webhook_state = ?, webhook_attempts = ?, webhook_next_at = ?,"
                " history = ? WHERE id = ?",
                (state, attempts, next_at, json.dumps(history), asset_id),
            )

    # -- idempotency ----------------------------------------------------------------

    def get_idempotent(self, account: str, key: str, since: float) -> IdempotentAnswer | None:
        row = self._one(
            "SELECT request_hash, status_code, body, created_at FROM idempotency"
            " WHERE account = ? AND key = ? AND created_at >= ?",
            (account, key, since),
        )
        return None if row is None else IdempotentAnswer(**dict(row))

    def put_idempotent(
        self, account: str, key: str, request_hash: str, status_code: int, body: bytes, now: float
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO idempotency (account, key, request_hash, status_code,"
                " body, created_at) VALUES (?,?,?,?,?,?)",
                (account, key, request_hash, status_code, body, now),
            )

    def purge_idempotent(self, before: float) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM idempotency WHERE created_at < ?", (before,))


def _insert_asset(
    db: sqlite3.Connection, new: NewAsset, make_trigger_word: Callable[[], str]
) -> None:
    for _ in range(100):
        trigger_word = make_trigger_word()
        try:
            db.execute(
                "INSERT INTO assets (id, account, trigger_word, args, created_at, duration,"
                " final_at, outcome, status, updated_at, history, base_url, image_dir,"
                " images, webhook_url, request_hash)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    new.id,
                    new.account,
                    trigger_word,
                    json.dumps({**new.args, "trigger_word": trigger_word}),
                    new.created_at,
                    new.duration,
                    new.created_at + new.duration,
                    new.outcome,
                    new.status,
                    new.created_at,
                    json.dumps(new.history),
                    new.base_url,
                    new.image_dir,
                    json.dumps(new.images),
                    new.webhook_url,
                    new.request_hash,
                ),
            )
            return
        except sqlite3.IntegrityError:
            continue
    raise RuntimeError("could not draw a unique trigger word")  # pragma: no cover - 36**6


def _duplicates(inputs: list[sqlite3.Row]) -> int:
    """Trainings whose inputs repeat an earlier training's: what a client that pays twice
    for the same request leaves behind.

    The inputs are the request hash the app computes for ``Idempotency-Key`` (the images'
    contents and the training fields, not the webhook or the file names). Rows from before
    that column fall back to their ``args`` without what differs between two trainings of
    one request anyway: the trigger word the sandbox drew, and the webhook.
    """
    seen: set[str] = set()
    dupes = 0
    for row in inputs:
        if row["request_hash"]:
            key = "hash:" + row["request_hash"]
        else:
            args = json.loads(row["args"])
            args.pop("webhook_url", None)
            args.pop("trigger_word", None)
            key = "args:" + json.dumps(args, sort_keys=True)
        dupes += key in seen
        seen.add(key)
    return dupes
