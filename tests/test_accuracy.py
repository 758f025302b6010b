"""Every zoo model, trained with three optimizers and run for inference: the `--device cpu` peak
predicted on meta is within 1% of the CPU allocator's peak for the same step on real tensors."""

from __future__ import annotations

import pytest
from accuracy import RECIPES, compare
from zoo import ZOO

TOLERANCE = 0.01


@pytest.mark.parametrize("mode,optimizer", RECIPES, ids=[f"{m}-{o.split(':')[0]}" for m, o in RECIPES])
@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_cpu_peak_matches_the_allocator(case, mode: str, optimizer: str) -> None:  # type: ignore[no-untyped-def]
    cmp = compare(case, mode, optimizer)
    assert abs(cmp.error) <= TOLERANCE, (
        f"{case.name} {mode} {optimizer}: predicted {cmp.predicted:,} vs measured {cmp.measured:,} "
        f"({100 * cmp.error:+.3f}%), peak at {cmp.result.peak.phase.value}/{cmp.result.peak.op}/"
        f"{cmp.result.peak.module}"
    )
