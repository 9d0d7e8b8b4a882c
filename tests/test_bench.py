"""The benchmark scripts' own arithmetic (the scripts themselves run models: see bench/)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_rate_by_rows_groups_steps_by_batch_rows():
    from bench_sampling import rate_by_rows

    # the first mark ends the prefill that starts the batch: not a decode step
    marks = [(1.0, 128), (1.2, 128), (1.3, 100), (1.4, 40), (1.45, 10)]
    bins = {b["min_rows"]: b for b in rate_by_rows(marks)}
    assert sorted(bins) == [1, 32, 96]  # no step had 64-95 rows
    assert bins[96]["steps"] == 2 and bins[96]["tokens"] == 228
    assert bins[96]["tok_s"] == pytest.approx(228 / 0.3)
    assert bins[32]["tok_s"] == pytest.approx(400) and bins[1]["tok_s"] == pytest.approx(200)
    assert sum(b["share_of_time"] for b in bins.values()) == pytest.approx(1.0)
    assert bins[96]["share_of_time"] == pytest.approx(0.3 / 0.45)
    assert rate_by_rows([(0.0, 5)]) == []
