"""Online weighting of the experts' forecasts: exponentiated gradient on recent losses.

Each series and scored lead keeps an exponentially weighted mean of every expert's squared
normalised error; weights are a softmax of -eta * loss / (typical loss), so they follow
whichever expert has been better lately, and a reset (after drift) can hand the weight to a
chosen expert.

An `anchor` share of the weight stays on a `prior` blend (fixed, or learnt: below). Following recent losses alone
chases noise: on WTH's validation rows a fixed half-RLS, half-recurrent blend was as good as RLS
alone and better than every adaptive weighting, and anchoring half the weight there beat the
fully adaptive weights on the validation rows of ETTh2, ETTm1 and WTH alike (BENCHMARKS.md,
"Anchored mixture"). The anchor is for noise, not for a broken expert: one whose recent loss
at some lead is `gate` times the best expert's there holds none of it (an RLS fitted to a
noiseless cycle forecasts hundreds of scale units off after a level shift; a quarter of the
weight kept on it sent the forecast the wrong way for over ten hours).

With `blend_memory` > 0 the anchor's blend of the two experts the prior weighs is learnt
instead of fixed: their errors keep a slowly forgetting second-moment matrix per series and lead,
and the blend is the combination with the least mean squared error under it (Bates and Granger,
1969), shrunk a little toward equal footing and kept within [0, 1]. It starts as the prior (the
matrix starts as if each expert's errors had been inversely proportional to its prior weight).
A long memory makes it the stable partner of the fast weights: on WTH's validation rows the
recurrent model is 11% worse than RLS and the fixed half share cost accuracy; on ETTh2 it is the
better expert at many steps (BENCHMARKS.md, "Learnt blend"). It is a long-run judgement of the
two experts' roles, so an adaptation that replaces the recurrent weights leaves it as it is. An
expert the gate takes out of the anchor leaves its share to the other prior expert, as with the
fixed blend.
"""

from __future__ import annotations

import numpy as np


# An expert whose recent loss is this many times the best expert's gets none of the anchor.
GATE = 3.0
# Share of a learnt blend's second moments replaced by their mean variance: toward equal weights,
# and a well-posed solve while the experts' errors are nearly collinear.
SHRINK = 0.03
# Errors count at most this much (in their units): a bound against overflow. A level shift's
# errors do dominate the learnt blend's record for about 1/blend_memory observations.
ERROR_BOUND = 1e3


class Mixture:
    def __init__(self, experts: int, eta: float = 4.0, memory: float = 0.05,
                 anchor: float = 0.0, prior: np.ndarray | None = None, gate: float = GATE,
                 blend_memory: float = 0.0):
        self.experts = experts
        self.eta = eta
        self.memory = memory  # weight of the newest loss in the running mean
        self.anchor = anchor
        self.gate = gate
        prior = np.full(experts, 1.0 / experts) if prior is None else np.asarray(prior, dtype=float)
        if prior.shape != (experts,) or (prior < 0).any() or not np.isclose(prior.sum(), 1.0):
            raise ValueError(f"prior must be {experts} non-negative weights summing to 1, not {prior!r}")
        self.prior = prior[None, :, None]
        self.blend_memory = blend_memory   # 0: the anchor's blend is the fixed prior
        self.blended = np.flatnonzero(prior > 0)
        if blend_memory > 0 and len(self.blended) != 2:
            raise ValueError(f"a learnt blend is of two experts; the prior weighs {len(self.blended)}")
        # The second moments a fresh blend starts from: equal ones for the engine's halves.
        weighed = prior[self.blended]
        self._fresh = np.diag(weighed.mean() / weighed) if weighed.size else np.zeros((0, 0))
        self.loss = np.zeros((0, experts, 0))
        self.moments = np.zeros((0, len(self.blended), len(self.blended), 0))   # (n, B, B, leads)

    def resize(self, capacity: int, leads: int) -> None:
        old = self.loss.shape[0]
        if capacity > old or self.loss.shape[2] != leads:
            loss = np.ones((capacity, self.experts, leads))
            loss[:old, :, : self.loss.shape[2]] = self.loss[:, :, :leads]
            self.loss = loss
            moments = self.fresh_moments(capacity, leads)
            moments[:old, :, :, : self.moments.shape[3]] = self.moments[..., :leads]
            self.moments = moments

    def fresh_moments(self, n: int, leads: int | None = None) -> np.ndarray:
        """What a series' learnt blend starts from: the prior's equal footing (`leads`: as now)."""
        B, leads = len(self.blended), self.moments.shape[3] if leads is None else leads
        return np.broadcast_to(self._fresh[None, :, :, None], (n, B, B, leads)).copy()

    def forget(self, slots: np.ndarray | int) -> None:
        """A new series' record: every expert level, the learnt blend back at the prior."""
        self.loss[slots] = 1.0
        self.moments[slots] = self._fresh[:, :, None]

    def update(self, slots: np.ndarray, lead_index: np.ndarray, errors: np.ndarray,
               to_long_run: np.ndarray | None = None) -> None:
        """errors: (n, experts) normalised errors for (slot, lead) pairs; to_long_run: (n,) what
        turns them into the units the learnt blend weighs them in (the engine: the long-run scale's)."""
        ok = np.isfinite(errors).all(axis=1)
        slots, lead_index, errors = slots[ok], lead_index[ok], np.clip(errors[ok], -ERROR_BOUND, ERROR_BOUND)
        current = self.loss[slots, :, lead_index]
        self.loss[slots, :, lead_index] = (1 - self.memory) * current + self.memory * errors ** 2
        if self.blend_memory > 0:
            e = errors[:, self.blended] * (1.0 if to_long_run is None else to_long_run[ok, None])
            known = np.isfinite(e).all(axis=1)   # a scale that overflowed says nothing about the experts
            slots, lead_index, e = slots[known], lead_index[known], np.clip(e[known], -ERROR_BOUND, ERROR_BOUND)
            current = self.moments[slots, :, :, lead_index]                     # (n, B, B)
            self.moments[slots, :, :, lead_index] = ((1 - self.blend_memory) * current
                                                     + self.blend_memory * e[:, :, None] * e[:, None, :])

    def learnt_blend(self, slots: np.ndarray) -> np.ndarray:
        """(n, experts, leads) the anchor's learnt blend at each scored lead (the module's docstring).

        >>> mixture = Mixture(3, prior=np.array([0.5, 0.5, 0.0]), blend_memory=0.5)
        >>> mixture.resize(1, 1)
        >>> mixture.learnt_blend(np.array([0]))[0, :, 0].tolist()                # nothing seen yet
        [0.5, 0.5, 0.0]
        >>> for _ in range(20):
        ...     mixture.update(np.array([0]), np.array([0]), np.array([[0.5, 2.0, 1.0]]))
        >>> mixture.learnt_blend(np.array([0]))[0, :, 0].round(2).tolist()       # the first is better
        [1.0, 0.0, 0.0]
        """
        m = self.moments[slots]                                                   # (n, 2, 2, leads)
        mean_variance = 0.5 * (m[:, 0, 0] + m[:, 1, 1])
        a = (1 - SHRINK) * m[:, 0, 0] + SHRINK * mean_variance
        c = (1 - SHRINK) * m[:, 1, 1] + SHRINK * mean_variance
        b = (1 - SHRINK) * m[:, 0, 1]
        # The w minimising the blend's mean squared error (w, 1 - w) M (w, 1 - w)ᵀ, kept within
        # [0, 1]; a + c - 2b is the mean square of the two errors' difference (0: never differed).
        difference = a + c - 2 * b
        with np.errstate(all="ignore"):
            w = np.clip((c - b) / difference, 0.0, 1.0)
        w = np.where(np.isfinite(w) & (difference > 0), w, 0.5)
        out = np.zeros((slots.size, self.experts, m.shape[3]))
        out[:, self.blended[0]], out[:, self.blended[1]] = w, 1 - w
        return out

    def weights(self, slots: np.ndarray, spread: np.ndarray, anchored: np.ndarray | None = None) -> np.ndarray:
        """(n, experts, H) weights at every lead (spread: the (L, H) interpolation matrix;
        anchored: (n,) which rows hold the anchor, default all).

        >>> mixture = Mixture(2, eta=4.0, anchor=0.5, prior=np.array([0.5, 0.5]))
        >>> mixture.resize(1, 1)
        >>> mixture.update(np.array([0]), np.array([0]), np.array([[0.0, 30 ** 0.5]]))
        >>> mixture.weights(np.array([0]), np.eye(1))[0, :, 0].round(3).tolist()
        [0.749, 0.251]
        >>> mixture.update(np.array([0]), np.array([0]), np.array([[0.0, 1e3]]))   # broken: no anchor
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
        if self.blend_memory > 0:
            # All of a learnt blend on a gated expert: its share goes to the other, as above.
            learnt = (self.learnt_blend(slots) @ spread) * sound
            prior = np.where(learnt.sum(axis=1, keepdims=True) > 0, learnt, prior)
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
