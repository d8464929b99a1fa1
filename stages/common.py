"""A stage run as a file, `python stages/stage06_optim.py` (what an editor's Run button does).

Python then puts this folder, stages/, first on sys.path, so the stage's `from common.cli import
...` finds this file instead of the course's common/ package. This file puts the course's folder
in place of stages/ on the path and hands over to the real package, so the stage runs exactly as
`python -m stages.stage06_optim` would, inside the same signal window (stages/__init__.py): the
stages themselves need no line for it. Run the usual way, `python -m stages...`, this file is
never imported.
"""
import sys
from pathlib import Path

_STAGES = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _STAGES]
sys.path.insert(0, str(_STAGES.parent))
del sys.modules[__name__]  # the course's own package takes this name from here on
import common  # noqa: E402  (the real one, found through the path set just above)

sys.modules[__name__] = common
_main = sys.modules.get("__main__")
if Path(getattr(_main, "__file__", "") or ".").resolve().parent == _STAGES:  # a stage, run as a file
    from common.run import signals

    signals.guard_program("stage", Path(_main.__file__).stem)
