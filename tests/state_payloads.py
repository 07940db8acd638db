"""Saved model state as other adaptd versions would write it (checkpoints, initializers)."""

from __future__ import annotations

import io
import json

import numpy as np


def _open(payload: bytes) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return arrays, json.loads(arrays.pop("__header__").tobytes().decode())


def _save(arrays: dict[str, np.ndarray], header: dict) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, __header__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
    return buffer.getvalue()


def newer_format(payload: bytes) -> bytes:
    """The same snapshot, labelled with a format version no current adaptd reads."""
    arrays, header = _open(payload)
    return _save(arrays, dict(header, format=99))


def with_rls_recent(payload: bytes, duplicate: bool = True) -> bytes:
    """An online checkpoint as adaptd wrote it with four experts (rls, rls_recent, gru, last):
    the same format version, plus `rls_recent_P`/`_B` and an `rls_recent` row at index 1 of
    `mixture_loss` and of the expert axis of `preds` (four experts, then the combined forecast).

    duplicate: as written once the restart policy stopped resetting `rls_recent`, a copy of
    `rls` in every array. Otherwise as when it was reset at drifts: state, record and forecasts
    of its own."""
    arrays, header = _open(payload)
    loss, preds = arrays["mixture_loss"], arrays["preds"]
    if duplicate:
        state = {"P": arrays["rls_P"], "B": arrays["rls_B"]}
        row, column = loss[0], preds[:, 0]
    else:
        state = {"P": 10.0 * np.eye(arrays["rls_P"].shape[0]), "B": np.ones_like(arrays["rls_B"])}
        row, column = 0.5 * loss[0] + 0.3, preds[:, 0] + 1.0
    arrays.update({f"rls_recent_{k}": v.copy() for k, v in state.items()})
    arrays["mixture_loss"] = np.insert(loss, 1, row, axis=0)
    arrays["preds"] = np.insert(preds, 1, column, axis=1)
    return _save(arrays, header)
