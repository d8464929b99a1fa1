"""The course uses PyTorch's public API only: nothing under common/ or stages/ reaches into
`torch._...` (private modules and functions change without notice between releases)."""
from __future__ import annotations

import re

from tests.helpers import ROOT

PRIVATE = re.compile(r"\btorch\._\w+")


def test_no_private_torch_api_in_the_course():
    found = [f"{path.relative_to(ROOT)}:{n}: {PRIVATE.search(line)[0]}"
             for folder in ("common", "stages") for path in sorted((ROOT / folder).rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if PRIVATE.search(line)]
    assert found == []
