"""`adaptd bench accuracy`: leak-free online accuracy of models and baselines on ETTh2, ETTm1 and
WTH, beside the published numbers of BENCHMARK_ANCHORS.md.

Entry points: `main(args)` (argparse namespace; flags from `add_arguments`), `run(...)` (returns a
`BenchReport`; accepts extra models as `ModelSpec`s), `render_markdown(report)`, and
`evaluate(model, values, first_target, end, horizon)` for a single leak-free run.
"""

from __future__ import annotations

from .report import BenchReport, add_arguments, main, plan_columns, render_markdown, run
from .runner import BenchContext, EvalResult, ModelError, ModelSpec, OnlineModel, SkipModel, evaluate

__all__ = ["BenchContext", "BenchReport", "EvalResult", "ModelError", "ModelSpec", "OnlineModel", "SkipModel",
           "add_arguments", "evaluate", "main", "plan_columns", "render_markdown", "run"]
