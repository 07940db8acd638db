"""Saved model state as other adaptd versions would write it (checkpoints, initializers)."""

from __future__ import annotations

import io
import json

import numpy as np


def newer_format(payload: bytes) -> bytes:
    """The same snapshot, labelled with a format version no current adaptd reads."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays.pop("__header__").tobytes().decode())
    buffer = io.BytesIO()
    np.savez(buffer, __header__=np.frombuffer(json.dumps(dict(header, format=99)).encode(), dtype=np.uint8), **arrays)
    return buffer.getvalue()
