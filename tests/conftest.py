from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT.parent / "shared" / "fixtures" / "peer"
SEEDS = ROOT.parent / "shared" / "seeds"
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture
def peer() -> Path:
    if not PEER.is_dir():
        pytest.fail(f"peer fixtures not found at {PEER}: shared/ must sit beside the repository")
    return PEER
