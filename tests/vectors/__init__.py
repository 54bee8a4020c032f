"""The peer protocol's worked example, made by ``generate.py`` (see docs/protocol.md, "Worked example").

Readers load it from here, so nobody needs anything outside the repository; importing this module
loads none of the project's signing code (tests/interop must stay independent of it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VERIFICATION_REQUEST = HERE / "verification-request.json"
BATCH = HERE / "batch.json"  # docs/protocol.md section 18


def load(path: Path = VERIFICATION_REQUEST) -> dict[str, Any]:
    """The vector as a dict (a missing file is an error: the vector is committed with the code)."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
