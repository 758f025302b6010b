from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))


@pytest.fixture(autouse=True)
def _no_dispatch_mode_left() -> object:
    """Every test leaves no dispatch mode, saved-tensor hook or patched function behind."""
    import torch
    import torch.nn.functional as F
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    sdpa = F.scaled_dot_product_attention
    yield
    assert _get_current_dispatch_mode() is None
    assert F.scaled_dot_product_attention is sdpa
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regen-golden", action="store_true", help="Rewrite tests/golden/*.out from this run.")


@pytest.fixture()
def regen_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--regen-golden"))
