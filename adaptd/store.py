"""The SQL store: opening and migrating the database, and the queries the daemon needs.

One code path for SQLite (embedded default, WAL) and PostgreSQL, through SQLAlchemy Core.
Every persisted artifact carries a format version; the schema itself is versioned in
`schema_version` so that a newer adaptd migrates an older database instead of breaking it,
and an older adaptd refuses a newer database instead of corrupting it.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .records import Observation
from .schema import (MIGRATIONS, SCHEMA_VERSION, create_forecast_view, drift_events, forecasts_table, initializers,
                     meta_training_runs, metadata, model_checkpoints, observations, schema_version, series_table)

log = logging.getLogger(__name__)
# PostgreSQL advisory-lock key (per database) held while the schema is created or migrated;
# the cluster's own keys are in cluster.py.
MIGRATION_KEY = 0x61647030

# libpq's own limit on one connection attempt (seconds) unless the URL sets connect_timeout:
# without it a host that drops packets holds an attempt for the kernel's TCP timeout (~2 min).
CONNECT_ATTEMPT_TIMEOUT = 10
# What libpq says when a server answered and refused; it gives no SQLSTATE while connecting.
REFUSALS = ("authentication failed", "no password supplied", "pg_hba.conf", "does not exist", "permission denied")
# SQLSTATEs of a server that cannot take us yet: connection exceptions, too many connections,
# shutting down or starting up.
TRANSIENT_STATES = ("08", "53300", "57P01", "57P02", "57P03")


class StoreError(RuntimeError):
    """The database cannot be used as it is; the message says what to do."""


class StoreUnreachable(StoreError):
    """The database did not answer (down, starting up, network not ready): trying later may work."""


def _unreachable(exc: sa.exc.DBAPIError, dialect: str) -> bool:
    """Whether a failure to open the store is about reaching the server, not about what it said.

    An unknown failure without an SQLSTATE counts as unreachable (the wait is bounded; its
    message then ends start-up), so only the known refusals need naming here.
    """
    if dialect == "sqlite" or not isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return False
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if state:
        return str(state).startswith(TRANSIENT_STATES)
    message = str(exc.orig).lower()
    return not any(refusal in message for refusal in REFUSALS)


@dataclass(frozen=True)
class SeriesSummary:
    name: str
    observations: int
    first_ts: float
    last_ts: float


@dataclass(frozen=True)
class Checkpoint:
    series: str
    kind: str
    format_version: int
    payload: bytes


SQLITE_BUSY_MS = 10_000   # how long a statement waits for another connection's write lock


def _sqlite_pragmas(synchronous: str) -> Callable[..., None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cursor.close()
    return on_connect


def redact(url: str) -> str:
    """The URL without its password, for logs and `status`."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def driver_problem(url: str) -> str | None:
    """Why `Store.open` could not load the URL's database driver (None: it can)."""
    parsed = sa.engine.make_url(url)
    try:
        parsed.get_dialect().import_dbapi()
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        return f"store.url: no driver for {parsed.drivername!r}: {exc}"
    return None


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect.name
        self._ids: dict[str, int] = {}
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
        else:
            raise StoreError(f"store.url: unsupported database {self.dialect!r} (use sqlite or postgresql)")
        self._insert = insert
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._upsert_sql = (f"INSERT INTO observations (series_id, ts, value) VALUES ({mark}, {mark}, {mark}) "
                            "ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value")

    @classmethod
    def open(cls, url: str, sqlite_synchronous: str = "full", pool_size: int = 4,
             must_exist: bool = False, before_migrate: Callable[["Store"], None] | None = None) -> "Store":
        """Connect and migrate; an SQLite file is created unless `must_exist` (commands that only
        read: a mistyped --config should not leave an empty database behind). `before_migrate`
        runs on the connected store first: the daemon claims its share there (cluster.Claim), so
        that a daemon refused there has not changed the schema under the one that runs."""
        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"store.url: {exc}") from None
        if parsed.get_backend_name() == "sqlite":
            on_disk = bool(parsed.database) and parsed.database != ":memory:"
            try:   # (os.stat, not Path.is_file: from Python 3.13 that answers False to EACCES)
                found = on_disk and stat.S_ISREG(os.stat(parsed.database).st_mode)   # type: ignore[arg-type]
            except FileNotFoundError:
                found = False
            except PermissionError:   # e.g. /var/lib/private/adaptd (mode 0700) under DynamicUser
                raise StoreError(f"cannot read the store at {parsed.database}: permission denied (commands "
                                 "that read the store need the daemon's access to it, e.g. root)") from None
            if must_exist and on_disk and not found:
                raise StoreError(f"no store at {parsed.database} (the daemon creates it when it first starts; "
                                 "is --config the daemon's?)")
            if on_disk:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                engine = sa.create_engine(parsed, pool_size=pool_size, max_overflow=pool_size)
            else:  # in memory: one connection for all threads, or each would see its own empty database
                engine = sa.create_engine(parsed, poolclass=sa.pool.StaticPool,
                                          connect_args={"check_same_thread": False})
            sa.event.listen(engine, "connect", _sqlite_pragmas(sqlite_synchronous))
        else:
            try:
                connect_args: dict[str, Any] = {}
                if parsed.get_driver_name() in ("psycopg", "psycopg2") and "connect_timeout" not in parsed.query:
                    connect_args["connect_timeout"] = CONNECT_ATTEMPT_TIMEOUT
                engine = sa.create_engine(parsed, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                                          connect_args=connect_args)
            except (ImportError, sa.exc.NoSuchModuleError) as exc:
                raise StoreError(f"store.url: no driver for {parsed.drivername!r}: {exc}") from None
        try:
            store = cls(engine)
            if before_migrate is not None:
                try:
                    before_migrate(store)
                except sa.exc.DBAPIError as exc:   # as the migration's: unreachable is waited for
                    raise store.failure(exc) from None
            store.migrate()
        except BaseException:
            engine.dispose()  # close the pooled connections now, not when the engine is collected
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ---------------------------------------------------------------------------
    def migrate(self) -> None:
        try:
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    # Cluster members started together on a new database would otherwise all
                    # create the tables at once, and all but one fail (a duplicate type). One at a
                    # time: the next finds the schema made (until the commit below).
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_KEY})
                inspector = sa.inspect(conn)
                if not inspector.has_table("schema_version"):
                    if inspector.has_table("observations"):
                        raise StoreError("database has adaptd tables but no schema_version; refusing to guess")
                    metadata.create_all(conn)
                    create_forecast_view(conn)
                    conn.execute(schema_version.insert().values(version=SCHEMA_VERSION, applied_at=time.time()))
                    log.info("created store schema version %d", SCHEMA_VERSION)
                    return
                current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar_one()
                if current is None:
                    raise StoreError("database has adaptd tables but no schema_version; refusing to guess")
                if current > SCHEMA_VERSION:
                    raise StoreError(
                        f"database schema version {current} is newer than this adaptd supports "
                        f"({SCHEMA_VERSION}); upgrade adaptd instead of pointing an old one at it")
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    log.info("migrating store schema %d -> %d", version - 1, version)
                    MIGRATIONS[version](conn)
                    conn.execute(schema_version.insert().values(version=version, applied_at=time.time()))
        except sa.exc.DBAPIError as exc:  # unreachable, but also e.g. no permission to create tables
            raise self.failure(exc) from None

    def failure(self, exc: sa.exc.DBAPIError) -> StoreError:
        """What a database error while opening means: unreachable (waited for) or not."""
        kind = StoreUnreachable if _unreachable(exc, self.dialect) else StoreError
        reason = " ".join(str(exc.orig).split())   # libpq's messages span lines: one log line each
        return kind(f"cannot open store {redact(str(self.engine.url))}: {reason}")

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar_one())

    # -- series ---------------------------------------------------------------------------
    def series_ids(self, conn: Connection, names: Iterable[str]) -> dict[str, int]:
        """Ids for these names, creating the series that are new (cached: ids never change)."""
        missing = sorted({n for n in names if n not in self._ids})
        if missing:
            now = time.time()
            stmt = self._insert(series_table).on_conflict_do_nothing(index_elements=["name"])
            conn.execute(stmt, [{"name": n, "created_at": now} for n in missing])
            rows = conn.execute(sa.select(series_table.c.name, series_table.c.id)
                                .where(series_table.c.name.in_(missing)))
            # A rolled-back transaction leaves cached ids that do not exist (and SQLite may hand
            # them to other names later): whoever rolls back calls forget_ids().
            self._ids.update({name: sid for name, sid in rows})
        return self._ids

    def forget_ids(self) -> None:
        self._ids.clear()

    def series_summary(self, owns: Owns | None = None) -> list[SeriesSummary]:
        """Every series' count and time range; with `owns`, only the series it keeps (a cluster
        member's: filtered in SQL by id, so a member reads its own share of the store)."""
        o = observations
        query = (sa.select(series_table.c.name, sa.func.count(), sa.func.min(o.c.ts), sa.func.max(o.c.ts))
                 .select_from(series_table.join(o, o.c.series_id == series_table.c.id))
                 .group_by(series_table.c.name))
        with self.engine.connect() as conn:
            return [SeriesSummary(n, int(c), float(a), float(b)) for chunk in _kept_ids(conn, owns)
                    for n, c, a, b in conn.execute(query if chunk is None else query.where(o.c.series_id.in_(chunk)))]

    # -- observations ---------------------------------------------------------------------
    def existing_ts(self, conn: Connection, series_id: int, ts: Sequence[float]) -> set[float]:
        o = observations
        found: set[float] = set()
        for start in range(0, len(ts), 500):
            chunk = list(ts[start:start + 500])
            rows = conn.execute(sa.select(o.c.ts).where(o.c.series_id == series_id, o.c.ts.in_(chunk)))
            found.update(float(r[0]) for r in rows)
        return found

    def upsert_observations(self, conn: Connection, rows: Sequence[Observation]) -> None:
        """Insert or overwrite (series, ts): re-sending a record is idempotent, the last value wins."""
        if not rows:
            return
        ids = self.series_ids(conn, {r.series for r in rows})
        # The hot path of ingest: plain tuples straight to the driver's executemany, which is
        # about three times faster than SQLAlchemy's per-row parameter processing.
        conn.exec_driver_sql(self._upsert_sql, [(ids[s], t, v) for s, t, v in rows])

    def write(self, rows: Sequence[Observation]) -> None:
        with self.engine.begin() as conn:
            self.upsert_observations(conn, rows)

    def history(self, name: str, limit: int | None = None) -> list[tuple[float, float]]:
        """(ts, value) of one series in time order; the newest `limit` if given."""
        o, s = observations, series_table
        query = (sa.select(o.c.ts, o.c.value).join(s, s.c.id == o.c.series_id)
                 .where(s.c.name == name).order_by(o.c.ts.desc()))
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = [(float(t), float(v)) for t, v in conn.execute(query)]
        rows.reverse()
        return rows

    def recent(self, per_series: int, owns: Owns | None = None) -> dict[str, list[tuple[float, float]]]:
        """The newest `per_series` observations of every series (with `owns`: of those it
        keeps), in time order. One index seek per series finds where its newest begin, then
        range scans read them: start-up time grows with the series, not with the stored history
        (ranking every row, as before, took 33 s for 10 million rows on SQLite)."""
        o, s = observations, series_table
        since = (sa.select(o.c.ts).where(o.c.series_id == s.c.id).order_by(o.c.ts.desc())
                 .offset(per_series - 1).limit(1).scalar_subquery())
        spans: dict[str, tuple[float, float]] = {}
        ids: dict[str, int] = {}
        with self.engine.connect() as conn:
            for chunk in _kept_ids(conn, owns):
                query = sa.select(s.c.id, s.c.name, since)
                if chunk is not None:
                    query = query.where(s.c.id.in_(chunk))
                for sid, name, first in conn.execute(query):   # None: fewer than per_series, all of them
                    spans[name] = (-math.inf if first is None else math.nextafter(first, -math.inf), math.inf)
                    ids[name] = sid
        return self.between(spans, ids)

    def count_between(self, spans: dict[str, tuple[float, float]]) -> dict[str, int]:
        """How many observations each series has strictly inside its span (after, before)."""
        o = observations
        out: dict[str, int] = {}
        with self.engine.connect() as conn:
            for names, inside in _inside_spans(conn, spans):
                query = sa.select(o.c.series_id, sa.func.count()).where(inside).group_by(o.c.series_id)
                out.update({names[sid]: int(n) for sid, n in conn.execute(query)})
        return out

    def between(self, spans: dict[str, tuple[float, float]], ids: dict[str, int] | None = None
                ) -> dict[str, list[tuple[float, float]]]:
        """Each series' observations strictly inside its span (after, before), in time order
        (`ids`: the series' ids, when the caller has just read them)."""
        o = observations
        out: dict[str, list[tuple[float, float]]] = {}
        with self.engine.connect() as conn:
            for names, inside in _inside_spans(conn, spans, ids):
                query = sa.select(o.c.series_id, o.c.ts, o.c.value).where(inside).order_by(o.c.series_id, o.c.ts)
                for sid, ts, value in conn.execute(query):
                    out.setdefault(names[sid], []).append((float(ts), float(value)))
        return out

    # -- model checkpoints ----------------------------------------------------------------
    def save_checkpoints(self, items: Sequence[Checkpoint]) -> None:
        if not items:
            return
        now = time.time()
        with self.engine.begin() as conn:
            ids = self.series_ids(conn, {c.series for c in items})
            stmt = self._insert(model_checkpoints)
            stmt = stmt.on_conflict_do_update(
                index_elements=["series_id"],
                set_={k: stmt.excluded[k] for k in ("kind", "format_version", "payload", "updated_at")})
            conn.execute(stmt, [{"series_id": ids[c.series], "kind": c.kind, "format_version": c.format_version,
                                 "payload": c.payload, "updated_at": now} for c in items])

    def save_forecasts(self, forecasts: Sequence[Any]) -> None:
        """Replace each series' stored forecast with this one (objects with series, origin,
        model["kind"] and points of ts, value, lo, hi)."""
        if not forecasts:
            return
        now = time.time()
        with self.engine.begin() as conn:
            ids = self.series_ids(conn, {f.series for f in forecasts})
            conn.execute(sa.delete(forecasts_table).where(
                forecasts_table.c.series_id.in_([ids[f.series] for f in forecasts])))
            conn.execute(forecasts_table.insert(), [
                {"series_id": ids[f.series], "origin": f.origin, "step": step, "target": p.ts, "value": p.value,
                 "lo": p.lo, "hi": p.hi, "model_kind": str(f.model.get("kind", "")), "created_at": now}
                for f in forecasts for step, p in enumerate(f.points, start=1)])

    def stored_forecasts(self, name: str) -> list[tuple[int, float, float, float, float]]:
        """(step, target, value, lo, hi) of the series' stored forecast."""
        f, s = forecasts_table, series_table
        query = (sa.select(f.c.step, f.c.target, f.c.value, f.c.lo, f.c.hi)
                 .select_from(f.join(s, s.c.id == f.c.series_id)).where(s.c.name == name).order_by(f.c.step))
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]

    def add_drift_events(self, events: Sequence[Any]) -> None:
        """Record detections: objects with series, ts, detector and statistic. Only for series
        that still have observations: learning may store a step's detections after the series
        was removed (`adaptd forget`, `forget_after`), and one statement decides both, so they
        are never left behind without a wait for learning."""
        if not events:
            return
        now = time.time()
        d, o = drift_events, observations
        columns = ["series_id", "ts", "detector", "statistic", "created_at"]
        row = sa.select(*(sa.bindparam(c, type_=d.c[c].type) for c in columns)).where(
            sa.exists().where(o.c.series_id == sa.bindparam("series_id", type_=d.c.series_id.type)))
        insert = d.insert().from_select(columns, row)
        with self.engine.begin() as conn:
            ids = self.series_ids(conn, {e.series for e in events})
            conn.execute(insert, [
                {"series_id": ids[e.series], "ts": e.ts, "detector": e.detector, "statistic": e.statistic,
                 "created_at": now} for e in events])

    def drift_times(self) -> dict[str, list[float]]:
        """Every recorded detection's ts, per series name, in time order."""
        d, s = drift_events, series_table
        query = sa.select(s.c.name, d.c.ts).join(s, s.c.id == d.c.series_id).order_by(s.c.name, d.c.ts)
        out: dict[str, list[float]] = {}
        with self.engine.connect() as conn:
            for name, ts in conn.execute(query):
                out.setdefault(name, []).append(float(ts))
        return out

    def drift_history(self, name: str) -> list[tuple[float, str, float]]:
        d, s = drift_events, series_table
        query = (sa.select(d.c.ts, d.c.detector, d.c.statistic).join(s, s.c.id == d.c.series_id)
                 .where(s.c.name == name).order_by(d.c.ts))
        with self.engine.connect() as conn:
            return [(float(t), str(k), float(v)) for t, k, v in conn.execute(query)]

    def save_initializer(self, algorithm: str, format_version: int, payload: bytes, training: dict[str, Any],
                         val_score: float | None, promoted: bool) -> int:
        """Store an initializer. Only promoted ones are ever loaded, so of the others only the
        newest KEPT_CANDIDATES keep their weights (tens of KB each, one per scheduled run: a
        daemon retrained hourly would otherwise add ~300 MB a year); their rows stay, for
        `adaptd initializers`."""
        i = initializers
        with self.engine.begin() as conn:
            result = conn.execute(i.insert().values(
                algorithm=algorithm, format_version=format_version, payload=payload, training=training,
                val_score=val_score, promoted=promoted, created_at=time.time()))
            candidates = sa.select(i.c.version).where(i.c.promoted.is_(False)).order_by(i.c.version.desc())
            oldest_kept = conn.execute(candidates.offset(KEPT_CANDIDATES - 1).limit(1)).scalar_one_or_none()
            if oldest_kept is not None:
                conn.execute(i.update().where(i.c.promoted.is_(False), i.c.version < oldest_kept,
                                              sa.func.length(i.c.payload) > 0).values(payload=b""))
            return int(result.inserted_primary_key[0])

    def initializer_list(self) -> list[dict[str, Any]]:
        """Every stored initializer without its weights, newest first."""
        i = initializers
        query = (sa.select(i.c.version, i.c.algorithm, i.c.format_version, i.c.val_score, i.c.promoted,
                           i.c.created_at, i.c.training).order_by(i.c.version.desc()))
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def newest_initializer_time(self, algorithms: tuple[str, ...]) -> float | None:
        """When the newest initializer learnt by one of `algorithms` was stored (None: never)."""
        i = initializers
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(i.c.created_at))
                                .where(i.c.algorithm.in_(algorithms))).scalar_one()

    def first_series_time(self) -> float | None:
        """When the first series was stored (None: none yet)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.min(series_table.c.created_at))).scalar_one()

    def newest_promoted_version(self) -> int | None:
        """What the daemon polls for: cheap, no weights read."""
        i = initializers
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(i.c.version)).where(i.c.promoted.is_(True))).scalar_one()

    def promoted_initializers(self) -> list[tuple[int, str, int, bytes]]:
        """(version, algorithm, format_version, payload) of promoted initializers, newest first."""
        i = initializers
        query = (sa.select(i.c.version, i.c.algorithm, i.c.format_version, i.c.payload)
                 .where(i.c.promoted.is_(True)).order_by(i.c.version.desc()))
        with self.engine.connect() as conn:
            return [(int(v), str(a), int(f), bytes(p)) for v, a, f, p in conn.execute(query)]

    # -- retention --------------------------------------------------------------------------
    def series_to_prune(self, owns: Owns | None = None) -> list[tuple[int, str]]:
        """(id, name) of the series retention looks at (with `owns`: this cluster member's)."""
        with self.engine.connect() as conn:
            return [(int(sid), str(name)) for name, sid in conn.execute(sa.select(series_table.c.name, series_table.c.id))
                    if owns is None or owns(name)]

    def _series_id(self, name: str) -> int | None:
        """A stored series' id, without creating it (`series_ids` creates what is missing)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(series_table.c.id).where(series_table.c.name == name)).scalar_one_or_none()

    def first_ts_of(self, name: str) -> float | None:
        """The series' oldest stored observation (None: none)."""
        series_id = self._series_id(name)
        return None if series_id is None else self.first_ts(series_id)

    def first_ts(self, series_id: int) -> float | None:
        o = observations
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.min(o.c.ts)).where(o.c.series_id == series_id)).scalar_one()

    def prune_cutoff(self, series_id: int, keep_seconds: float, keep_newest: int, now: float) -> float | None:
        """Before what time a series' observations may go: older than `keep_seconds` before its
        newest record (or before `now`, if that record is dated later: one typo in a year must
        not cost the history), and not among its newest `keep_newest`; None: none may go."""
        o = observations
        mine = sa.select(o.c.ts).where(o.c.series_id == series_id)
        with self.engine.connect() as conn:
            floor = conn.execute(mine.order_by(o.c.ts.desc()).offset(keep_newest - 1).limit(1)).scalar_one_or_none()
            if floor is None:   # no more than keep_newest observations
                return None
            newest = conn.execute(mine.order_by(o.c.ts.desc()).limit(1)).scalar_one()
            oldest = conn.execute(mine.order_by(o.c.ts).limit(1)).scalar_one()
        cutoff = min(float(floor), min(float(newest), now) - keep_seconds)
        return cutoff if oldest < cutoff else None   # (no write transaction for nothing)

    def prune_before(self, series_id: int, cutoff: float, batch: int,
                     start: float = -math.inf) -> tuple[int, float | None]:
        """Delete at most `batch` of the series' oldest observations before `cutoff` in one short
        transaction (SQLite has one writer: ingest must not wait long), and at the last batch
        its drift events before it too; (observations deleted, where the next batch starts or
        None when none are left). Passing that as `start` spares PostgreSQL's index scan the
        dead entries of the batches before, which only vacuum removes."""
        o, d = observations, drift_events
        older = sa.select(o.c.ts).where(o.c.series_id == series_id, o.c.ts >= start, o.c.ts < cutoff)
        with self.engine.begin() as conn:
            bound = conn.execute(older.order_by(o.c.ts).offset(batch).limit(1)).scalar_one_or_none()
            # From `start` in the delete too: a late record below it waits for the next pass,
            # so no batch grows past `batch` rows.
            deleted = conn.execute(sa.delete(o).where(o.c.series_id == series_id, o.c.ts >= start,
                                                      o.c.ts < (cutoff if bound is None else bound))).rowcount
            if bound is None:
                conn.execute(sa.delete(d).where(d.c.series_id == series_id, d.c.ts < cutoff))
        return int(deleted), None if bound is None else float(bound)

    def forget_step(self, name: str, batch: int, start: float = -math.inf) -> tuple[int, float | None]:
        """One short transaction of removing a series' observations (`[store] forget_after`):
        `prune_before` with no cut, so the last one takes its drift events too. The series' row
        stays, so its id is never given to another series and a record for it later starts it
        afresh under it. Its checkpoint goes with `drop_state`, outside the ingest writer: a
        checkpoint being saved holds that row's lock."""
        series_id = self._series_id(name)
        return (0, None) if series_id is None else self.prune_before(series_id, math.inf, batch, start)

    def drop_state(self, names: Iterable[str]) -> int:
        """Delete the checkpoints, stored forecasts and drift events of these series if they have
        no observations (forgotten ones; also what a checkpoint or learning saved for them while
        they were being removed). A series that came back keeps them: they are its own again."""
        o, s = observations, series_table
        listed, deleted = sorted(set(names)), 0
        for at in range(0, len(listed), ID_CHUNK):
            ids = sa.select(s.c.id).where(s.c.name.in_(listed[at:at + ID_CHUNK]))
            for table in (model_checkpoints, forecasts_table, drift_events):   # one short transaction each
                with self.engine.begin() as conn:
                    deleted += int(conn.execute(sa.delete(table).where(
                        table.c.series_id.in_(ids), ~sa.exists().where(o.c.series_id == table.c.series_id))).rowcount)
        return deleted

    # -- meta-training runs ------------------------------------------------------------------
    def start_meta_run(self, started_at: float) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(meta_training_runs.insert().values(started_at=started_at))
            return int(result.inserted_primary_key[0])

    def finish_meta_run(self, run_id: int, outcome: str, finished_at: float, version: int | None = None,
                        detail: str | None = None) -> None:
        r = meta_training_runs
        with self.engine.begin() as conn:
            conn.execute(r.update().where(r.c.id == run_id).values(
                outcome=outcome, finished_at=finished_at, version=version, detail=detail))

    def close_unfinished_meta_runs(self) -> int:
        """Mark the runs a daemon left without an outcome (it died during them) `interrupted`;
        how many there were."""
        r = meta_training_runs
        with self.engine.begin() as conn:
            return int(conn.execute(r.update().where(r.c.outcome.is_(None)).values(outcome="interrupted")).rowcount)

    def meta_runs(self, limit: int, finished_only: bool = False,
                  outcomes: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """The newest `limit` meta-training runs, newest first (with `finished_only`, those with
        an outcome; with `outcomes`, those with one of them)."""
        r = meta_training_runs
        query = sa.select(r).order_by(r.c.started_at.desc(), r.c.id.desc()).limit(limit)
        if finished_only:
            query = query.where(r.c.outcome.is_not(None))
        if outcomes:
            query = query.where(r.c.outcome.in_(outcomes))
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def load_checkpoints(self, owns: Owns | None = None) -> list[Checkpoint]:
        m, s = model_checkpoints, series_table
        query = sa.select(s.c.name, m.c.kind, m.c.format_version, m.c.payload).join(s, s.c.id == m.c.series_id)
        with self.engine.connect() as conn:
            return [Checkpoint(n, k, int(v), bytes(p)) for chunk in _kept_ids(conn, owns)
                    for n, k, v, p in conn.execute(query if chunk is None else query.where(m.c.series_id.in_(chunk)))]


Owns = Callable[[str], bool]   # whether a series is this daemon's (cluster.Membership.owns)
KEPT_CANDIDATES = 3            # initializers not promoted that keep their weights (Store.save_initializer)
ID_CHUNK = 1000                # series ids per IN (...) list: SQLite binds at most 32,766


SPAN_CHUNK = 200   # series per query of `between`: one (id, ts range) condition each


def _inside_spans(conn: Connection, spans: dict[str, tuple[float, float]], ids: dict[str, int] | None = None
                  ) -> Iterable[tuple[dict[int, str], Any]]:
    """Per chunk of series: their names by id (looked up unless `ids` gives them), and a
    condition matching their observations inside their spans (a primary-key range scan each)."""
    o, s = observations, series_table
    listed = sorted(spans)
    for at in range(0, len(listed), SPAN_CHUNK):
        part = listed[at:at + SPAN_CHUNK]
        names = ({ids[name]: name for name in part} if ids is not None else
                 {sid: name for sid, name in conn.execute(sa.select(s.c.id, s.c.name).where(s.c.name.in_(part)))})
        if names:
            yield names, sa.or_(*(sa.and_(o.c.series_id == sid, o.c.ts > spans[name][0], o.c.ts < spans[name][1])
                                  for sid, name in names.items()))


def _kept_ids(conn: Connection, owns: Owns | None) -> list[list[int] | None]:
    """The ids of the series `owns` keeps, in chunks for IN lists; [None]: every series."""
    if owns is None:
        return [None]
    ids = [sid for name, sid in conn.execute(sa.select(series_table.c.name, series_table.c.id)) if owns(name)]
    return [ids[k:k + ID_CHUNK] for k in range(0, len(ids), ID_CHUNK)]
