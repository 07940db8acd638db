"""Socket protocol v1 framing: one JSON object per line in, one per line out (DESIGN.md §2)."""

from __future__ import annotations

import json
from typing import Any

from .records import json_kind

BAD_REQUEST = "bad_request"
UNKNOWN_OP = "unknown_op"
UNKNOWN_SERIES = "unknown_series"
NOT_READY = "not_ready"
TOO_LARGE = "too_large"
OVERLOADED = "overloaded"
INTERNAL = "internal"
CODES = (BAD_REQUEST, UNKNOWN_OP, UNKNOWN_SERIES, NOT_READY, TOO_LARGE, OVERLOADED, INTERNAL)


class _NoId:
    """A request without an "id" key, as opposed to one with "id": null (echoed as null)."""

    def __repr__(self) -> str:
        return "NO_ID"


NO_ID: Any = _NoId()


class Conversation:
    """One connection's state between requests: the server sets `behind_refusal` for each line,
    the service sets `refused` when it refuses the line's ingest (overloaded, or not committed).
    `closing`: the daemon is shutting down; the requests it had received are answered, not served.

    A request is behind a refusal when its first byte had reached the daemon by the time an
    earlier ingest's refusal on the same connection was sent: the client sent it
    without having read that answer (a client sending batches ahead of their answers). Stored,
    it would go ahead of the refused batch, whose records would then be late to the models.
    """

    __slots__ = ("behind_refusal", "refused", "closing")

    def __init__(self) -> None:
        self.behind_refusal = False
        self.refused = False
        self.closing = False


class RequestError(Exception):
    """A request that gets an error response; the connection stays open. `detail`: fields the
    error object carries besides code and message, for programs (e.g. `member`)."""

    def __init__(self, code: str, message: str, detail: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail or {}


def decode(line: bytes) -> dict[str, Any]:
    try:
        # Decode first: json.loads(bytes) would also take UTF-16/32 and encoded surrogates.
        text = line.decode("utf-8")
        request = json.loads(text)
    except UnicodeDecodeError:
        raise RequestError(BAD_REQUEST, "request is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        # Counted from the start of the line: json's own line/column would put a missing brace
        # at "line 2 column 1", past the newline.
        where = "at the end of the line" if exc.pos >= len(text.rstrip()) else f"at character {exc.pos + 1}"
        raise RequestError(BAD_REQUEST, f"request is not valid JSON: {exc.msg} {where}") from None
    except RecursionError:
        raise RequestError(BAD_REQUEST, "request is nested too deeply") from None
    except ValueError as exc:
        # Python refuses integer literals over sys.get_int_max_str_digits() (4300) digits with a
        # plain ValueError, not a JSONDecodeError: still the client's bad request, not ours.
        raise RequestError(BAD_REQUEST, f"request has a number that cannot be read: {str(exc)[:100]}") from None
    if not isinstance(request, dict):
        raise RequestError(BAD_REQUEST, f"request must be a JSON object, got {json_kind(request)}")
    return request


def encode(response: dict[str, Any]) -> bytes:
    text = json.dumps(response, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    # A lone surrogate (valid as a JSON escape in a request, e.g. in an "id") has no UTF-8 form;
    # written back as the same \uXXXX escape, the answer stays valid JSON and echoes it exactly.
    return text.encode("utf-8", "backslashreplace") + b"\n"


def with_id(response: dict[str, Any], request_id: Any) -> dict[str, Any]:
    """The response echoing the request's id whenever the request had one, null included.

    >>> with_id({"ok": True}, None), with_id({"ok": True}, NO_ID)
    ({'ok': True, 'id': None}, {'ok': True})
    """
    if request_id is not NO_ID:
        response["id"] = request_id
    return response


def error(code: str, message: str, request_id: Any = NO_ID, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    return with_id({"ok": False, "error": {"code": code, "message": message, **(detail or {})}}, request_id)
