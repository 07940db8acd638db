"""What an online engine's series slot holds: its per-slot arrays and the experts it mixes.

Every series owns one row (its slot) of each array below; OnlineEngine allocates them, its
checkpoints save the PER_SLOT ones.
"""

from __future__ import annotations

import numpy as np

# Per-series arrays (one row per slot) and what a fresh series holds in them.
FRESH: dict[str, float] = {
    "count": 0, "first_origin": -1, "last_ts": -np.inf, "hist": np.nan, "scale_h": np.nan, "mean_h": np.nan,
    "typical_h": np.nan,
    "raw_scale": 0.0, "typical": 0.0, "preds": np.nan, "fc_value": np.nan, "fc_lo": np.nan, "fc_hi": np.nan,
    "fc_origin": np.nan, "last_drift": np.nan, "adaptations": 0, "restarts": 0, "gaps": np.nan,
    # The interval tracker's own widths (scored leads, in `lead_units`) as each recent forecast
    # was issued: it judges a matured forecast against them (conformal.py), so a restart must
    # keep them.
    "issued_q": np.nan,
}
PER_SLOT = tuple(FRESH)
ADDED_LATER = {"gaps", "issued_q"}   # a checkpoint from before these keys loads them fresh
GAP_MEMORY = 16          # recent time gaps kept per series; their median is its step
# Per-series arrays not checkpointed: for metrics (a restart starts them afresh; issued_width:
# the half-widths issued, in units of the fast scale), and how many observations the cached
# forecast was made from (restored from the checkpoint's `count`).
TRANSIENT: dict[str, float] = {"issued_width": np.nan, "now_fc": np.nan, "recent_error": np.nan,
                               "fc_count": np.nan}   # observations behind the cached forecast
# One linear learner (long memory, never reset: see the restart policy in `_apply`), the
# recurrent model and the last value.
EXPERTS = ("rls", "gru", "last")
RLS, GRU, LAST = 0, 1, 2
COMBINED = len(EXPERTS)
# The blend an anchored mixture holds part of its weight on (`mixture_anchor`): as it is, or where a
# learnt blend (`blend_memory`) starts.
MIXTURE_PRIOR = np.array([0.5 if e in ("rls", "gru") else 0.0 for e in EXPERTS])
# With cold start, a new series' mixture gives the recurrent model (θ*) this share at first and
# splits the rest among the others (at that age: the last value; RLS has learnt nothing yet and
# forecasts no change). With a θ* trained for cold starts as well ([meta] cold_start_weight),
# 0.65 beat the half share of before on all four data sets' validation rows (`adaptd bench
# coldstart --rows validation`; 0.8 and more lost on WTH); θ* alone loses where it is far from
# home (15-minute ETTm1).
COLD_START_GRU_SHARE = 0.65
