from __future__ import annotations

import numpy as np
import pytest

from training.sampler import PairSampler

ROWS = np.arange(100, 130)
PIDS = np.array(["a"] * 5 + ["b"] * 10 + ["c"] * 1 + ["d"] * 14)


def test_participant_pairs_are_two_different_segments_of_one_participant() -> None:
    s = PairSampler(ROWS, PIDS, "participant", seed=0)
    assert s.n_participants == 3 and s.dropped == 1  # 'c' has one segment
    owner = dict(zip(ROWS.tolist(), PIDS.tolist(), strict=True))
    for step in range(20):
        b = s.batch(step, 3)
        assert len(set(b.groups.tolist())) == 3  # distinct participants while enough exist
        for a, c in zip(b.rows_a, b.rows_b, strict=True):
            assert a != c and owner[int(a)] == owner[int(c)] != "c"


def test_batches_are_a_function_of_seed_and_step() -> None:
    s1, s2 = PairSampler(ROWS, PIDS, seed=5), PairSampler(ROWS, PIDS, seed=5)
    np.testing.assert_array_equal(s1.batch(7, 8).rows_a, s2.batch(7, 8).rows_a)
    assert not np.array_equal(s1.batch(7, 8).rows_b, s1.batch(8, 8).rows_b)


def test_segment_mode_pairs_a_segment_with_itself() -> None:
    b = PairSampler(ROWS, PIDS, "segment", seed=0).batch(0, 16)
    np.testing.assert_array_equal(b.rows_a, b.rows_b)


def test_slices_for_ranks_cover_the_global_batch() -> None:
    b = PairSampler(ROWS, PIDS, seed=0).batch(0, 8)
    parts = [b.slice(r, 2) for r in range(2)]
    np.testing.assert_array_equal(np.concatenate([p.rows_a for p in parts]), b.rows_a)


def test_errors() -> None:
    with pytest.raises(ValueError, match="mode"):
        PairSampler(ROWS, PIDS, "pairs")
    with pytest.raises(ValueError, match="two segments"):
        PairSampler(ROWS[:3], np.array(["a", "b", "c"]))
