"""A stand-in cluster member on a real Unix socket, for client tests that need no PostgreSQL.

It answers protocol v1 lines as a member of `members` would: `stats` with its place, `ingest`
storing its own series' records (kept in `records`, in arrival order) and rejecting the others'
with the daemon's reason (from ingest batch `fail_from` on, counted from 1: `internal`),
`forecast` of its own series (no points), `series` of what it stored.
Imported as a plain module, as daemon_harness is.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

from adaptd.cluster import Membership


class FakeMember:
    def __init__(self, path: Path, members: int, member: int, fail_from: int = 0, cluster: bool = True):
        self.path = path
        self.membership = Membership(members, member)
        self.fail_from = fail_from
        self.cluster = cluster          # False: a daemon from before [cluster] (no such key in stats)
        self.records: list[dict[str, Any]] = []
        self.ops: list[str] = []
        self.batches = 0
        self._lock = threading.Lock()   # one answer at a time, whichever connection asks
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown(socket.SHUT_RDWR)   # wakes accept(): the thread ends
        self._server.close()
        self._thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._converse, args=(conn,), daemon=True).start()

    def _converse(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                with self._lock:
                    answer = self._answer(json.loads(line))
                stream.write(json.dumps(answer).encode() + b"\n")
                stream.flush()

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        self.ops.append(request["op"])
        if request["op"] == "stats":
            m = self.membership
            return {"ok": True, "health": "ok", **({"cluster": {"members": m.members, "member": m.member}}
                                                    if self.cluster else {})}
        if request["op"] == "ingest":
            self.batches += 1
            if self.fail_from and self.batches >= self.fail_from:
                return {"ok": False, "error": {"code": "internal", "message": "see the daemon's log"}}
            rejected = []
            for index, record in enumerate(request["records"]):
                why = self.membership.refusal(record["series"])
                if why is None:
                    self.records.append(record)
                else:
                    rejected.append({"index": index, "code": "bad_request", "message": why})
            return {"ok": True, "accepted": len(request["records"]) - len(rejected), "rejected": rejected}
        if request["op"] == "forecast":
            why = self.membership.refusal(request["series"])
            if why is not None:
                return {"ok": False, "error": {"code": "unknown_series", "message": why}}
            return {"ok": True, "series": request["series"], "origin": 0.0, "step": 3600.0, "points": [],
                    "model": {"kind": "fake"}}
        if request["op"] == "series":
            names = sorted({r["series"] for r in self.records})
            return {"ok": True, "series": [{"series": n, "observations": 1, "first_ts": 0.0, "last_ts": 0.0}
                                           for n in names]}
        return {"ok": False, "error": {"code": "unknown_op", "message": request["op"]}}
