"""The ops of socket protocol v1: one request object in, one response object out."""

from __future__ import annotations

import asyncio
import concurrent.futures
import difflib
import logging
import time
from contextvars import ContextVar
from typing import Any, Awaitable, Callable

import sqlalchemy as sa

from . import __version__, liveness
from .catalog import SeriesCatalog
from .config import Settings
from .engine import Engine, Forecast, NotReady, UnknownSeries
from .engine.naive import KINDS as FALLBACK_KINDS
from .ingest import ARRIVED, GONE, LEARNING, STOPPED, IngestWriter, Removal, WriterStopped
from .learning import LearningWorker
from .metrics import OPS, Metrics
from .protocol import (BAD_REQUEST, INTERNAL, NO_ID, NOT_READY, OVERLOADED, TOO_LARGE, UNKNOWN_OP, Conversation,
                       UNKNOWN_SERIES, RequestError, decode, encode, error, with_id)
from .records import Rejected, check_series, json_kind, validate_batch
from .retention import BATCH as RETENTION_BATCH
from .store import Store, redact

log = logging.getLogger(__name__)
# Provisional answers (see Service._models_forecast) may take this share of the event loop's
# time, in bursts of up to PROVISIONAL_BURST seconds. Past it, a forecast first waits up to
# LEARNT_WAIT seconds for learning to issue its series' forecast.
PROVISIONAL_SHARE = 0.25
PROVISIONAL_BURST = 0.05
LEARNT_WAIT = 0.01
# `forget` waits up to FORGET_WAIT seconds for learning to reach the series' newest records,
# trying again every FORGET_RETRY; it deletes as many observations per transaction as retention.
FORGET_WAIT = 30.0
FORGET_RETRY = 0.1
FORGET_BATCH = RETENTION_BATCH
# The connection of the request being answered (protocol.Conversation), set by `handle_line`
# for the op it calls: only `ingest` reads it.
_CONVERSATION: ContextVar[Conversation | None] = ContextVar("adaptd_conversation", default=None)


class TimeBudget:
    """A token bucket of seconds: refills `share` of a second every second, holds up to `burst`.

    >>> now = [0.0]
    >>> budget = TimeBudget(share=0.25, burst=0.05, clock=lambda: now[0])
    >>> budget.spend(0.2); budget.available()
    False
    >>> now[0] = 0.8; budget.available()   # the 0.15 s of debt is repaid at 0.25 s a second
    True
    """

    def __init__(self, share: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.share, self.burst, self.clock = share, burst, clock
        self.tokens, self.at = burst, clock()

    def available(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.share)
        self.at = now
        return self.tokens > 0

    def spend(self, seconds: float) -> None:
        self.available()
        self.tokens -= seconds

Op = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REJECTIONS_LISTED = 1000


def _echoable_id(request: dict[str, Any]) -> Any:
    """The request's id (NO_ID when it has none) if it can be written back as JSON; else a
    bad_request (without the id)."""
    if "id" not in request:
        return NO_ID
    try:
        encode({"id": request["id"]})
    except (ValueError, RecursionError):
        raise RequestError(BAD_REQUEST, "id must be a JSON value that can be echoed back "
                           "(no NaN or Infinity, not nested too deeply)") from None
    return request["id"]


class Service:
    def __init__(self, settings: Settings, store: Store, writer: IngestWriter, engine: Engine,
                 catalog: SeriesCatalog, metrics: Metrics, learner: LearningWorker | None = None,
                 meta_training: Callable[[], dict[str, Any]] | None = None,
                 retention: Callable[[], dict[str, Any]] | None = None,
                 drop_state: Callable[[list[str]], int] | None = None):
        self.settings = settings
        self.membership = settings.membership()
        self.store = store
        self.writer = writer
        self.engine = engine
        self.catalog = catalog
        self.metrics = metrics
        self.learner = learner
        self.meta_training = meta_training   # the scheduled meta-training's state (online engine)
        self.retention = retention           # `[store] retention` and its newest pass
        # A removed series' checkpoint and the like (the daemon's: clear of its checkpoints).
        self.drop_state = drop_state or (lambda names: self.store.drop_state(names))
        self.started = time.time()
        self.stopping = False   # set at shutdown: removals stop waiting for learning
        self._removing: dict[str, asyncio.Task[Removal]] = {}   # by series: one removal at a time
        self.provisional_budget = TimeBudget(PROVISIONAL_SHARE, PROVISIONAL_BURST)
        self.ops: dict[str, Op] = {
            "ping": self.ping, "ingest": self.ingest, "forecast": self.forecast,
            "series": self.series, "stats": self.stats, "forget": self.forget,
        }

    async def handle_line(self, line: bytes, conversation: Conversation | None = None) -> bytes:
        started = time.perf_counter()
        _CONVERSATION.set(conversation)
        op, request_id = "invalid", NO_ID
        try:
            request = decode(line)
            request_id = _echoable_id(request)
            name = request.get("op")
            if not isinstance(name, str):
                raise RequestError(BAD_REQUEST, "request needs an \"op\" string")
            if name not in self.ops:
                raise RequestError(UNKNOWN_OP, f"unknown op {name[:40]!r} (ops: {', '.join(self.ops)})")
            op = name
            if conversation is not None and conversation.closing:
                raise RequestError(OVERLOADED, "the daemon is shutting down; this request was not served: "
                                   "re-send it when the daemon is back")
            response = with_id(await self.ops[name](request), request_id)
            payload, outcome = encode(response), "ok"
        except RequestError as exc:
            payload, outcome = encode(error(exc.code, exc.message, request_id, exc.detail)), exc.code
        except Exception:
            log.exception("internal error answering a %s request", op)
            payload, outcome = encode(error(INTERNAL, "internal error; see the daemon's log", request_id)), INTERNAL
        self.metrics.requests.labels(op, outcome).inc()
        if op in OPS:
            self.metrics.request_seconds.labels(op).observe(time.perf_counter() - started)
        return payload

    async def ping(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    async def ingest(self, request: dict[str, Any]) -> dict[str, Any]:
        records = request.get("records")
        if not isinstance(records, list):
            raise RequestError(BAD_REQUEST, "ingest needs \"records\": a list of {series, ts, value}")
        limit = self.settings.server.max_batch_records
        if len(records) > limit:
            raise RequestError(TOO_LARGE, f"{len(records)} records in one batch; the limit is {limit}")
        conversation = _CONVERSATION.get()
        if conversation is not None and conversation.behind_refusal:
            conversation.refused = True
            raise RequestError(OVERLOADED, "sent before this connection's answer refusing an earlier batch "
                               "reached the client; re-send the refused batches in order, after a short pause")
        accepted, problems = validate_batch(records, None if self.membership.alone else self.membership.refusal)
        rejected = [self._rejection(records, index, exc) for index, exc in problems[:MAX_REJECTIONS_LISTED]]
        for _index, exc in problems:
            self.metrics.records_rejected.labels(exc.field).inc()
        if accepted:   # another member's records alone need no room
            try:
                await self._wait_for_room(len(accepted))
            except RequestError:
                if conversation is not None:
                    conversation.refused = True
                raise
        try:
            await self._writer_answer(self.writer.submit(accepted))
        except Exception as exc:
            if conversation is not None:   # a later batch stored ahead of this one would be late to the models
                conversation.refused = True
            if _passing(exc):   # the writer goes on, so does the client
                raise RequestError(OVERLOADED, f"the store could not commit this batch ({_first_line(exc)}); "
                                   "nothing of it was acknowledged: retry after a short pause") from None
            log.exception("ingest of %d records failed", len(accepted))
            raise RequestError(INTERNAL, "the store could not commit this batch; nothing of it was "
                               "acknowledged, re-send it") from None
        response: dict[str, Any] = {"ok": True, "accepted": len(accepted), "rejected": rejected}
        if len(records) - len(accepted) > len(rejected):
            response["rejected_total"] = len(records) - len(accepted)
        return response

    def _rejection(self, records: list[Any], index: int, exc: Rejected) -> dict[str, Any]:
        item = {"index": index, "code": BAD_REQUEST, "message": str(exc)}
        if exc.field == "cluster":   # extension: the member to send it to, for a program to route by
            item["member"] = self.membership.owner_of(records[index]["series"])
        return item

    async def _wait_for_room(self, n: int) -> None:
        """Backpressure: wait (bounded) while the writer's queue or the models' learning backlog
        is full, then refuse; an admitted batch is acknowledged as soon as it is committed."""
        deadline = time.monotonic() + self.settings.server.overload_wait
        while (busy := self._busy(n)) is not None:
            if time.monotonic() >= deadline:
                raise RequestError(OVERLOADED, f"{busy}; retry after a short pause")
            await asyncio.sleep(0.005)

    def _busy(self, n: int) -> str | None:
        pending = self.writer.pending_records
        if pending > 0 and pending + n > self.settings.server.max_pending_records:
            return f"{pending} records are waiting for the store"
        if self.learner is not None and self.learner.full:
            return f"the models are {self.learner.backlog} records behind ([model] learning_backlog)"
        return None

    @staticmethod
    def _series_of(request: dict[str, Any]) -> str:
        try:
            return check_series(request.get("series"))
        except Rejected as exc:
            raise RequestError(BAD_REQUEST, str(exc)) from None

    def _unknown(self, series: str) -> RequestError:
        why = self.membership.refusal(series)
        if why:   # another member's: say which, for programs to ask it (as ingest's rejections do)
            return RequestError(UNKNOWN_SERIES, why, {"member": self.membership.owner_of(series)})
        return RequestError(UNKNOWN_SERIES, f"no observations of series {series!r}")

    async def forecast(self, request: dict[str, Any]) -> dict[str, Any]:
        series = self._series_of(request)
        horizon = request.get("horizon")
        top = self.settings.model.max_horizon
        if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= top:
            plain = isinstance(horizon, (int, float)) and not isinstance(horizon, bool) and len(repr(horizon)) <= 40
            shown = repr(horizon) if plain else json_kind(horizon)   # never echo a huge value back
            raise RequestError(BAD_REQUEST, f"horizon must be an integer from 1 to {top}, got {shown}")
        try:
            fc = await self._models_forecast(series, horizon)
        except UnknownSeries:
            raise self._unknown(series) from None
        except NotReady as exc:
            raise RequestError(NOT_READY, str(exc)) from None
        source = ("fallback" if fc.model.get("kind") in FALLBACK_KINDS else
                  "provisional" if fc.model.get("unlearnt") else "models")
        self.metrics.forecast_answers.labels(source).inc()
        return {
            "ok": True, "series": fc.series, "origin": fc.origin, "step": fc.step,
            "points": [{"ts": p.ts, "value": p.value, "lo": p.lo, "hi": p.hi} for p in fc.points],
            "model": fc.model,
        }

    async def _models_forecast(self, series: str, horizon: int) -> Forecast:
        """The models' forecast from the series' newest record. The one learning issues is a
        cached read; for a series learning has not reached, the models forecast at once from the
        unlearnt records (`provisional`, ~0.5-0.6 ms of the event loop). Those answers get at most
        `PROVISIONAL_SHARE` of the event loop: clients asking back to back would otherwise take
        the CPU learning needs to catch up. Past that, a forecast first waits up to `LEARNT_WAIT`
        for learning. When the models cannot forecast yet (learning is writing the series, or is
        far behind), the wait goes on up to `forecast_wait`, then the naive fallback answers; after
        `LEARNT_WAIT` already when learning, at the rate it has been going, needs longer than the
        rest of the wait for its backlog (a bulk load, a restart's catch-up): waiting would end
        in the same answer. (The rate is per record and learning's cost partly per round, so the
        estimate can be far off for a burst after a trickle: the short wait comes first.)"""
        started = time.monotonic()
        deadline = started + self.settings.server.forecast_wait
        if not self.provisional_budget.available():
            learnt_by = started + min(LEARNT_WAIT, self.settings.server.forecast_wait)
            while not self.engine.caught_up(series) and time.monotonic() < learnt_by:
                await asyncio.sleep(0.002)
        while True:
            began = time.perf_counter()
            fc = self.engine.forecast_current(series, horizon)
            if fc is not None:
                if fc.model.get("unlearnt"):
                    self.provisional_budget.spend(time.perf_counter() - began)
                return fc
            now = time.monotonic()
            if now >= deadline or (now - started >= LEARNT_WAIT and self.learner is not None
                                   and self.learner.catch_up_seconds > deadline - now):
                return self.engine.forecast(series, horizon)
            await asyncio.sleep(0.002)

    async def forget(self, request: dict[str, Any]) -> dict[str, Any]:
        """Remove a series whole (extension; `adaptd forget`): its observations, drift events,
        checkpoint and models, as `[store] forget_after` removes a silent one. Records it is sent
        after this request arrived are never deleted: they stop the removal. Once begun, the
        removal goes on if the client goes away."""
        series = self._series_of(request)
        if series not in self.catalog:
            unknown = self._unknown(series)
            # A name mistyped in a command that deletes: say which of ours it may have meant.
            similar = [] if unknown.detail else difflib.get_close_matches(series, list(self.catalog.snapshot()),
                                                                          n=3, cutoff=0.75)
            if similar:
                named = ", ".join(map(repr, similar))
                raise RequestError(UNKNOWN_SERIES, f"{unknown.message} (similar names: {named})")
            raise unknown
        task = self._removing.get(series)
        if task is None:   # a second request for it while one runs shares its outcome
            task = self._removing[series] = asyncio.ensure_future(self._remove(series, time.monotonic()))
            task.add_done_callback(lambda _: self._removing.pop(series, None))
        removal = await asyncio.shield(task)
        if removal.stopped == GONE:   # removed meanwhile by `[store] forget_after`
            raise self._unknown(series)
        if removal.removed:
            return {"ok": True, "series": series, "removed": True, "deleted": removal.deleted}
        kept = f" ({removal.deleted} older observations were deleted)" if removal.deleted else ""
        detail = {"deleted": removal.deleted}
        if removal.stopped == ARRIVED:
            raise RequestError(NOT_READY, f"records of series {series!r} arrived during its removal and are "
                               f"kept{kept}: stop sending it, then retry", detail)
        if removal.stopped == LEARNING:
            backlog = self.learner.backlog if self.learner is not None else 0
            raise RequestError(NOT_READY, f"the models have not learnt series {series!r}'s newest records "
                               f"within {FORGET_WAIT:g}s (learning backlog: {backlog} records){kept}: retry "
                               "once it has caught up", detail)
        raise RequestError(OVERLOADED, f"the daemon is shutting down; series {series!r} was not removed{kept}: "
                           "re-send when the daemon is back", detail)

    async def _remove(self, series: str, asked: float) -> Removal:
        """The ingest writer's removal of everything acknowledged for `series` before `asked`;
        tried again while learning has not reached its newest records, up to FORGET_WAIT."""
        deleted = 0
        while True:
            removal = await self._writer_removal(series, asked)
            deleted += removal.deleted
            if removal.stopped == LEARNING and self.stopping:   # no waiting for learning at shutdown
                removal = removal._replace(stopped=STOPPED)
            if removal.stopped != LEARNING or time.monotonic() - asked >= FORGET_WAIT:
                break
            await asyncio.sleep(FORGET_RETRY)
        if removal.removed:
            try:
                await asyncio.to_thread(self.drop_state, [series])
            except Exception as exc:   # the series is gone; a leftover checkpoint is never restored
                log.warning("series %r was removed, but its checkpoint and drift events could not be "
                            "deleted: %s", series, exc)
            self.metrics.series_forgotten.inc()
            log.info("removed series %r on request: %d observations deleted", series, deleted)
        return removal._replace(deleted=deleted)

    async def _writer_removal(self, series: str, asked: float) -> Removal:
        """One `IngestWriter.forget`, given up (STOPPED) if the writer stops before it answers."""
        try:
            return await self._writer_answer(self.writer.forget(series, asked, FORGET_BATCH))
        except WriterStopped:   # shutdown
            return Removal(False, 0, STOPPED)

    async def _writer_answer(self, pending: concurrent.futures.Future[Any]) -> Any:
        """The writer's answer to `pending`; WriterStopped if it stops without giving one (then
        nobody else would, and the client would wait for ever)."""
        waiting = asyncio.wrap_future(pending)
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=1.0)
            if done:
                return waiting.result()
            if not self.writer.alive and not pending.done():   # (done: its answer is on its way here)
                waiting.cancel()
                raise WriterStopped("the store writer is not running")

    async def series(self, _request: dict[str, Any]) -> dict[str, Any]:
        listing = [{"series": name, "observations": info.observations, "first_ts": info.first_ts,
                    "last_ts": info.last_ts, "late": info.late, "overwritten": info.overwritten}
                   for name, info in sorted(self.catalog.snapshot().items())]
        return {"ok": True, "series": listing}

    async def stats(self, _request: dict[str, Any]) -> dict[str, Any]:
        m = self.metrics
        return {
            "ok": True,
            "health": liveness.health(w for w in (self.writer, self.learner) if w is not None) or "ok",
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 3),
            "series": len(self.catalog),
            "records_ingested": int(m.value("adaptd_records_ingested_total")),
            "records_rejected": int(m.rejected_total()),
            "records_late": int(m.value("adaptd_records_late_total")),
            "ingest_queue_records": self.writer.pending_records,
            "learning_backlog_records": self.learner.backlog if self.learner else 0,
            "commit_failures": int(m.value("adaptd_store_commit_failures_total")),
            "connections": int(m.value("adaptd_connections")),
            "engine": self.engine.stats(),
            "store": {"url": redact(str(self.store.engine.url)), "dialect": self.store.dialect,
                      **({"retention": self.retention()} if self.retention is not None else {})},
            "cluster": {"members": self.membership.members, "member": self.membership.member},
            "max_horizon": self.settings.model.max_horizon,
            "config": self.settings.source,
            **({"meta_training": self.meta_training()} if self.meta_training is not None else {}),
        }


# PostgreSQL SQLSTATEs of a server restarting, refusing connections for now or contended, where
# retrying helps; so do the whole classes 08 (connection) and 40 (a transaction rolled back:
# serialization failure, deadlock).
PASSING_SQLSTATES = {"57P01", "57P02", "57P03", "55P03", "53300"}


def _passing(exc: BaseException) -> bool:
    """Whether a failed commit is the database busy, restarting or unreachable (retry soon),
    not full, read-only or broken (which retrying does not mend)."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, sa.exc.InterfaceError):   # the connection went
        return True
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate:
        return sqlstate[:2] in ("08", "40") or sqlstate in PASSING_SQLSTATES
    message = str(orig).lower()   # SQLite: "database is locked", "database table is locked"
    return isinstance(exc, sa.exc.OperationalError) and ("locked" in message or "busy" in message)


def _first_line(exc: BaseException) -> str:
    """A database error's own message, without SQLAlchemy's statement and parameters."""
    inner = getattr(exc, "orig", None) or exc
    return (str(inner).strip().splitlines() or [type(inner).__name__])[0]
