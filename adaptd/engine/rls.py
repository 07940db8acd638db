"""Recursive least squares with forgetting, for many series at once, direct multi-horizon.

For each series (a slot) it keeps P, the inverse of the discounted input covariance, and B,
the discounted input-target cross products, one column per lead. A forecast from features x
is (P x)ᵀ B, i.e. the least-squares weights applied to x without ever forming them. Targets
mature at different times (lead h at origin + h): each (x_origin, y_origin+h) pair is added
to B only once it has been observed, so the learner never sees its future.

>>> import numpy as np
>>> rls = BatchedRLS(n_features=2, horizon=1, forgetting=1.0)
>>> rls.resize(1)
>>> for t in range(50):
...     x = np.array([[1.0, t / 10]])
...     rls.learn_inputs(np.array([0]), x)
...     rls.learn_targets(np.array([0]), x, np.array([[2.0 + 3.0 * t / 10]]), lead=1)
>>> round(float(rls.predict(np.array([0]), np.array([[1.0, 6.0]]))[0, 0]), 2)
20.0
"""

from __future__ import annotations

import numpy as np


class BatchedRLS:
    def __init__(self, n_features: int, horizon: int, forgetting: float = 0.999, delta: float = 10.0):
        self.p = n_features
        self.horizon = horizon
        self.forgetting = forgetting
        self.delta = delta  # P starts at delta * I: a weak prior toward zero weights
        self.P = np.zeros((0, n_features, n_features))
        self.B = np.zeros((0, n_features, horizon))

    @property
    def capacity(self) -> int:
        return self.P.shape[0]

    def resize(self, capacity: int) -> None:
        old = self.capacity
        if capacity <= old:
            return
        P = np.zeros((capacity, self.p, self.p))
        B = np.zeros((capacity, self.p, self.horizon))
        P[:old], B[:old] = self.P, self.B
        self.P, self.B = P, B
        self.reset(np.arange(old, capacity))

    def reset(self, slots: np.ndarray) -> None:
        """Forget everything these slots learned."""
        self.P[slots] = np.eye(self.p) * self.delta
        self.B[slots] = 0.0

    def learn_inputs(self, slots: np.ndarray, x: np.ndarray) -> None:
        """Fold new origins' features into P (Sherman-Morrison with forgetting); x: (n, p)."""
        lam = self.forgetting
        P = self.P[slots]
        Px = np.einsum("nij,nj->ni", P, x)
        denom = lam + np.einsum("ni,ni->n", x, Px)
        P = (P - np.einsum("ni,nj->nij", Px, Px) / denom[:, None, None]) / lam
        # Keep P symmetric and bounded: round-off and long flat stretches otherwise blow it up.
        P = 0.5 * (P + P.transpose(0, 2, 1))
        big = np.einsum("nii->n", P) > 1e8
        if big.any():
            P[big] = np.eye(self.p) * self.delta
        self.P[slots] = P
        self.B[slots] *= lam

    def learn_targets(self, slots: np.ndarray, x: np.ndarray, y: np.ndarray, lead: int) -> None:
        """Add matured targets: y[:, j] observed at origin + lead + j for features x of that origin.

        `y` has shape (n, k) and fills leads lead..lead+k-1; leads past the horizon are ignored.
        """
        k = min(y.shape[1], self.horizon - lead + 1)
        if k <= 0:
            return
        self.B[slots, :, lead - 1: lead - 1 + k] += x[:, :, None] * y[:, None, :k]

    def predict(self, slots: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(n, horizon) forecasts for features x (n, p)."""
        Px = np.einsum("nij,nj->ni", self.P[slots], x)
        return np.einsum("ni,nih->nh", Px, self.B[slots])

    def state(self, slot: int, prefix: str = "rls") -> dict[str, np.ndarray]:
        return {f"{prefix}_P": self.P[slot].copy(), f"{prefix}_B": self.B[slot].copy()}

    def load_state(self, slot: int, state: dict[str, np.ndarray], prefix: str = "rls") -> None:
        self.P[slot] = state[f"{prefix}_P"]
        self.B[slot] = state[f"{prefix}_B"]
