"""Whether the configured engine's libraries load, asked before anything imports them.

A broken install (a missing shared object, a wheel for another Python or CPU) then stops
start-up with one line naming the library and the way out, not with a traceback from deep
inside the daemon. This module imports nothing heavy itself: `serve` asks before importing
the daemon, which needs numpy whatever the engine.
"""

from __future__ import annotations

import importlib

# What each engine imports, by the module that loads the compiled code (river's top-level
# package does not: its Rust extension comes with river.drift).
NEEDS = {"naive": ("numpy",), "online": ("numpy", "torch", "river.drift")}


def engine_problem(engine: str) -> str | None:
    """Why `[model] engine = ENGINE` cannot run here; None when its libraries load."""
    for module in NEEDS[engine]:
        try:
            importlib.import_module(module)
        except Exception as exc:   # a broken library can fail its import with any error
            library = module.split(".")[0]
            instead = ("" if library in NEEDS["naive"] else
                       ' or set [model] engine = "naive" to serve seasonal-naive forecasts without it')
            return (f'[model] engine = "{engine}" needs {library}, which does not load here '
                    f"({type(exc).__name__}: {exc}); reinstall it (`make` installs the versions pinned in "
                    f"constraints.txt){instead}")
    return None
