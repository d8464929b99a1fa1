"""torch, if the program has loaded it: the numpy stage never imports torch, so the runtime it
shares with the torch stages looks torch up instead of importing it."""
from __future__ import annotations

import sys


def loaded_torch():
    """The torch module when this program imported it, else None."""
    return sys.modules.get("torch")
