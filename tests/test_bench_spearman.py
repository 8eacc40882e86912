"""The graded-distortion benchmark's count of visible level pairs (bench/bench_handcrafted_spearman.py)."""
import importlib.util
import pathlib

import numpy as np
import torch
from scipy.stats import spearmanr

_PATH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_handcrafted_spearman.py"
_SPEC = importlib.util.spec_from_file_location("bench_handcrafted_spearman", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def _levels(steps: list[float]) -> torch.Tensor:
    """Five uint8 crops: mid-grey plus a uniform offset per level (PSNR = 20 log10(255 / offset))."""
    base = np.full((5, 8, 8, 3), 128.0)
    return torch.from_numpy((base + np.array(steps).reshape(-1, 1, 1, 1)).astype(np.uint8))


def test_only_pairs_a_viewer_can_tell_apart_are_counted():
    # Offsets 0, 1, 2 are within 40 dB of each other (PSNR >= 42 dB); 10 and 40 are visible from everything.
    batch = _levels([0, 1, 2, 10, 40])
    seen, right = bench.visible_pairs(batch, np.array([0.9, 0.8, 0.7, 0.6, 0.5]))
    assert (seen, right) == (7, 7)


def test_a_visible_pair_in_the_wrong_order_is_counted_wrong():
    batch = _levels([0, 1, 2, 10, 40])
    # The invisible levels 0-2 swapped do not count; level 3 above level 0 is a visible error.
    seen, right = bench.visible_pairs(batch, np.array([0.7, 0.8, 0.9, 0.95, 0.1]))
    assert (seen, right) == (7, 4)


def test_psnr_of_a_uniform_offset():
    batch = _levels([0, 1, 2, 10, 40])
    assert bench.psnr(batch[0], batch[0]) == float("inf")
    assert [round(p, 1) for p in bench.psnr_vs_first(batch)] == [48.1, 42.1, 28.1, 16.1]


def test_a_mean_exactly_at_the_target_meets_it():
    levels = [0, 1, 2, 3, 4]
    # scipy's rho for one swapped neighbour pair is not exactly -0.9 in floating point.
    rhos = [float(spearmanr(levels, scores)[0]) for scores in
            ([5, 4, 2, 3, 1], [5, 4, 3, 2, 1], [5, 3, 4, 1, 2], [5, 4, 2, 3, 1], [5, 4, 2, 3, 1])]   # -0.9 -1 -0.8 -0.9 -0.9
    assert round(float(np.mean(rhos)), 6) == -0.9
    assert bench.meets_target(rhos)
    assert not bench.meets_target(rhos[:-1] + [float(spearmanr(levels, [5, 3, 4, 1, 2])[0])])   # mean -0.88
