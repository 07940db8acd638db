"""Online weighting of the experts' forecasts: exponentiated gradient on recent losses.

Each series and scored lead keeps an exponentially weighted mean of every expert's squared
normalised error; weights are a softmax of -eta * loss / (typical loss), so they follow
whichever expert has been better lately, and a reset (after drift) can hand the weight to a
chosen expert.

An `anchor` share of the weight stays on a fixed `prior` blend. Following recent losses alone
chases noise: on WTH's validation rows a fixed half-RLS, half-recurrent blend was as good as RLS
alone and better than every adaptive weighting, and anchoring half the weight there beat the
fully adaptive weights on the validation rows of ETTh2, ETTm1 and WTH alike (BENCHMARKS.md,
"Anchored mixture"). The anchor is for noise, not for a broken expert: one whose recent loss
at some lead is `gate` times the best expert's there holds none of it (an RLS fitted to a
noiseless cycle forecasts hundreds of scale units off after a level shift; a quarter of the
weight kept on it sent the forecast the wrong way for over ten hours).
"""

from __future__ import annotations

import numpy as np


# An expert whose recent loss is this many times the best expert's gets none of the anchor.
GATE = 3.0


class Mixture:
    def __init__(self, experts: int, eta: float = 4.0, memory: float = 0.05,
                 anchor: float = 0.0, prior: np.ndarray | None = None, gate: float = GATE):
        self.experts = experts
        self.eta = eta
        self.memory = memory  # weight of the newest loss in the running mean
        self.anchor = anchor
        self.gate = gate
        prior = np.full(experts, 1.0 / experts) if prior is None else np.asarray(prior, dtype=float)
        if prior.shape != (experts,) or (prior < 0).any() or not np.isclose(prior.sum(), 1.0):
            raise ValueError(f"prior must be {experts} non-negative weights summing to 1, not {prior!r}")
        self.prior = prior[None, :, None]
        self.loss = np.zeros((0, experts, 0))

    def resize(self, capacity: int, leads: int) -> None:
        old = self.loss.shape[0]
        if capacity > old or self.loss.shape[2] != leads:
            loss = np.ones((capacity, self.experts, leads))
            loss[:old, :, : self.loss.shape[2]] = self.loss[:, :, :leads]
            self.loss = loss

    def update(self, slots: np.ndarray, lead_index: np.ndarray, sq_errors: np.ndarray) -> None:
        """sq_errors: (n, experts) squared normalised errors for (slot, lead) pairs."""
        ok = np.isfinite(sq_errors).all(axis=1)
        slots, lead_index, sq = slots[ok], lead_index[ok], np.minimum(sq_errors[ok], 1e6)
        current = self.loss[slots, :, lead_index]
        self.loss[slots, :, lead_index] = (1 - self.memory) * current + self.memory * sq

    def weights(self, slots: np.ndarray, spread: np.ndarray, anchored: np.ndarray | None = None) -> np.ndarray:
        """(n, experts, H) weights at every lead (spread: the (L, H) interpolation matrix;
        anchored: (n,) which rows hold the anchor, default all).

        >>> mixture = Mixture(2, eta=4.0, anchor=0.5, prior=np.array([0.5, 0.5]))
        >>> mixture.resize(1, 1)
        >>> mixture.update(np.array([0]), np.array([0]), np.array([[0.0, 30.0]]))
        >>> mixture.weights(np.array([0]), np.eye(1))[0, :, 0].round(3).tolist()
        [0.749, 0.251]
        >>> mixture.update(np.array([0]), np.array([0]), np.array([[0.0, 1e6]]))   # broken: no anchor
        >>> mixture.weights(np.array([0]), np.eye(1))[0, :, 0].round(3).tolist()
        [1.0, 0.0]
        """
        loss = self.loss[slots] @ spread                      # (n, K, H)
        typical = loss.min(axis=1, keepdims=True) + 1e-12
        logits = -self.eta * loss / typical
        logits -= logits.max(axis=1, keepdims=True)
        w = np.exp(logits)
        w /= w.sum(axis=1, keepdims=True)
        if self.anchor == 0:
            return w
        anchor = self.anchor if anchored is None else self.anchor * anchored[:, None, None]
        # Sound at every lead or at none: a lead's loss learns of a broken expert only once its
        # targets mature (lead 24: a day after a level shift), lead 1 at once.
        sound = (loss <= self.gate * typical).all(axis=2, keepdims=True)   # (n, K, 1)
        prior = self.prior * sound
        mass = prior.sum(axis=1, keepdims=True)
        prior = np.where(mass > 0, prior / np.where(mass > 0, mass, 1.0), w)   # no sound prior expert: none
        return (1 - anchor) * w + anchor * prior

    def lean(self, slots: np.ndarray, expert: int, share: float) -> None:
        """A fresh record in which `expert` holds `share` of the weight and the others split the rest.

        >>> mixture = Mixture(3, eta=4.0)
        >>> mixture.resize(1, 2)
        >>> mixture.lean(np.array([0]), 1, 0.5)
        >>> mixture.weights(np.array([0]), np.eye(2))[0, :, 0].round(3).tolist()
        [0.25, 0.5, 0.25]
        """
        self.loss[slots] = 1.0
        if self.eta > 0:   # softmax of -eta * loss / min loss: solve for the expert's loss
            others = self.experts - 1
            self.loss[slots, expert, :] = 1.0 / (1.0 + np.log(others * share / (1 - share)) / self.eta)

    def favour(self, slots: np.ndarray, expert: int, factor: float = 0.5) -> None:
        """Forget the record: every expert starts level, `expert` a little ahead."""
        level = self.loss[slots].mean(axis=1, keepdims=True)
        self.loss[slots] = level
        self.loss[slots, expert, :] = level[:, 0, :] * factor
