"""A versioned, pickle-free byte format for per-series model state (checkpoints).

A payload is an .npz archive: named arrays plus a JSON header with the format version and
the model shape it was made for. Decoding refuses a newer format, another shape, or bytes
that are not such an archive, with a message saying which.

>>> import numpy as np
>>> blob = encode({"a": np.arange(3.0)}, {"shape": [1, 2]})
>>> arrays, header = decode(blob, {"shape": [1, 2]})
>>> arrays["a"].tolist(), header["format"]
([0.0, 1.0, 2.0], 1)
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

FORMAT_VERSION = 1


class SnapshotError(ValueError):
    """The payload cannot be used; the message says why."""


def encode(arrays: dict[str, np.ndarray], header: dict[str, Any], version: int = FORMAT_VERSION) -> bytes:
    buffer = io.BytesIO()
    meta = dict(header, format=version)
    np.savez(buffer, __header__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return buffer.getvalue()


def decode(payload: bytes, expect: dict[str, Any],
           newest: int = FORMAT_VERSION) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and header of a payload in format `newest` or older (the caller converts those)."""
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise SnapshotError(f"not a readable snapshot ({exc})") from None
    try:
        header = json.loads(arrays.pop("__header__").tobytes().decode())
    except (KeyError, ValueError, UnicodeDecodeError):
        raise SnapshotError("snapshot has no valid header") from None
    version = header.get("format")
    if not isinstance(version, int) or version > newest:
        raise SnapshotError(f"snapshot format {version!r} is newer than this adaptd reads ({newest})")
    for key, value in expect.items():
        if header.get(key) != value:
            raise SnapshotError(f"snapshot was made for {key}={header.get(key)!r}, this model has {value!r}")
    return arrays, header
