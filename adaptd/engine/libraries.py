"""Whether the online engine's libraries load, asked before anything imports them.

A broken install (a missing shared object, a wheel for another Python or CPU) then stops
start-up with one line naming the library and the way out, not with a traceback from deep
inside the engine's construction.
"""

from __future__ import annotations

import importlib

ONLINE_LIBRARIES = ("numpy", "torch", "river")


def online_engine_problem() -> str | None:
    """Why `[model] engine = "online"` cannot run here; None when its libraries load."""
    for name in ONLINE_LIBRARIES:
        try:
            importlib.import_module(name)
        except Exception as exc:   # a broken library can fail its import with any error
            return (f'[model] engine = "online" needs {name}, which does not load here '
                    f"({type(exc).__name__}: {exc}); reinstall it (`make` installs the versions pinned in "
                    f'constraints.txt) or set [model] engine = "naive" to serve seasonal-naive forecasts '
                    f"without it")
    return None
