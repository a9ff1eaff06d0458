"""waterfill: integer bit allocation against the continuous reverse water-filling optimum, an
exhaustive search and an exact dynamic programme (DESIGN.md section 3, "Attention-aware bit budget")."""

import itertools
import math

import numpy as np
import pytest

from oscar_cluster.waterfill import allocate_bits, analytic_reverse_waterfill, runs

MAX_BITS = 4
GAUSSIAN_D = [2.0 ** (-2 * b) for b in range(MAX_BITS + 1)]  # D(b) = 2^(-2b) on a unit-variance source
SEEDS = [0, 1, 2, 3]
CHANNELS = 64
MEAN_BITS = 2
WIDTHS = [1, 2, 4, 8]
TINY_CASES = [(4, 6, 1), (4, 9, 1), (5, 10, 1), (8, 8, 2), (8, 12, 4), (6, 12, 3)]  # (channels, budget, width)


def log_uniform_variances(n: int, seed: int, lo: float = 1e-2, hi: float = 1e1) -> list[float]:
    rng = np.random.default_rng(seed)
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n)).tolist()


def total_distortion(imp, bits, dist) -> float:
    return sum(i * dist[b] for i, b in zip(imp, bits))


def dp_optimum(imp, budget: int, dist) -> float:
    """Exact integer optimum by dynamic programming over channels: best[j][B] = least distortion
    of the first j channels with B bits (independent of the greedy argument)."""
    inf = float("inf")
    best = [0.0] + [inf] * budget
    for w in imp:
        new = [inf] * (budget + 1)
        for B in range(budget + 1):
            for b in range(min(len(dist) - 1, B) + 1):
                if best[B - b] < inf:
                    new[B] = min(new[B], best[B - b] + w * dist[b])
        best = new
    return best[budget]


def brute_force(imp, budget: int, dist, width: int) -> float:
    """Least distortion over every allocation of segment bits in 0..max with the exact budget."""
    segs = [sum(imp[s:s + width]) for s in range(0, len(imp), width)]
    best = float("inf")
    for bits in itertools.product(range(len(dist)), repeat=len(segs)):
        if sum(bits) * width == budget:
            best = min(best, sum(w * dist[b] for w, b in zip(segs, bits)))
    return best


# ----- the reference itself -----------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_analytic_reference_is_consistent(seed):
    """Rates sum to the budget, and the returned total is sum_j var_j 2^(-2 b_j)."""
    var = log_uniform_variances(CHANNELS, seed)
    rates, total = analytic_reverse_waterfill(var, MEAN_BITS)
    assert min(rates) >= 0
    assert sum(rates) == pytest.approx(MEAN_BITS * CHANNELS, rel=1e-9)
    assert total == pytest.approx(sum(v * 2 ** (-2 * r) for v, r in zip(var, rates)), rel=1e-9)


# ----- Gaussian source, 64 channels, mean 2 bits ------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_gaussian_source_near_continuous_optimum(seed):
    var = log_uniform_variances(CHANNELS, seed)
    budget = MEAN_BITS * CHANNELS
    bits = allocate_bits(var, budget, GAUSSIAN_D)
    rates, optimum = analytic_reverse_waterfill(var, MEAN_BITS)
    got = total_distortion(var, bits, GAUSSIAN_D)
    # integers in 0..4 are a subset of the continuous feasible set: never below its optimum
    assert got >= optimum * (1 - 1e-9)
    assert got <= 1.25 * optimum
    assert sum(bits) == budget
    for b, r in zip(bits, rates):
        if r < MAX_BITS:
            assert abs(b - r) <= 1.0, (b, r)


@pytest.mark.parametrize("seed", SEEDS)
def test_gaussian_source_equals_exact_integer_optimum(seed):
    var = log_uniform_variances(CHANNELS, seed)
    budget = MEAN_BITS * CHANNELS
    bits = allocate_bits(var, budget, GAUSSIAN_D)
    assert total_distortion(var, bits, GAUSSIAN_D) == pytest.approx(dp_optimum(var, budget, GAUSSIAN_D), rel=1e-12)


@pytest.mark.parametrize("n,budget,width", TINY_CASES)
def test_tiny_problems_equal_exhaustive_optimum(n, budget, width):
    for seed in range(5):
        imp = log_uniform_variances(n, 100 * seed + n)
        bits = allocate_bits(imp, budget, GAUSSIAN_D, width=width)
        assert sum(bits) == budget
        assert total_distortion(imp, bits, GAUSSIAN_D) == pytest.approx(
            brute_force(imp, budget, GAUSSIAN_D, width), rel=1e-12)


def test_tiny_problem_with_a_non_gaussian_convex_distortion():
    """Any decreasing convex D: here the Gaussian Lloyd-Max MSEs for 1-4 bits (Max, 1960)."""
    dist = [1.0, 0.3634, 0.1175, 0.03454, 0.009497]
    for seed in range(5):
        imp = log_uniform_variances(4, seed, 1e-3, 1e2)
        bits = allocate_bits(imp, 6, dist)
        assert total_distortion(imp, bits, dist) == pytest.approx(brute_force(imp, 6, dist, 1), rel=1e-12)


def test_zero_importance_channels_get_bits_last():
    imp = [5.0, 0.0, 3.0, 0.0]
    bits = allocate_bits(imp, 8, GAUSSIAN_D)
    assert bits[1] == bits[3] == 0 and sum(bits) == 8


# ----- segments, budget, monotonicity, errors ---------------------------------------------------
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("seed", SEEDS)
def test_segments_budget_and_monotone(width, seed):
    imp = sorted(log_uniform_variances(CHANNELS, seed), reverse=True)
    budget = MEAN_BITS * CHANNELS
    bits = allocate_bits(imp, budget, GAUSSIAN_D, width=width)
    assert len(bits) == CHANNELS
    assert sum(bits) == budget
    assert all(0 <= b <= MAX_BITS for b in bits)
    for s in range(0, CHANNELS, width):
        assert len(set(bits[s:s + width])) == 1
    assert all(a >= b for a, b in zip(bits, bits[1:]))
    assert all(w % width == 0 for w, _ in runs(bits))


@pytest.mark.parametrize("width", WIDTHS)
def test_wider_segments_never_beat_narrower(width):
    """Segments constrain the allocation, so distortion can only grow with width (nested when
    widths divide each other)."""
    imp = sorted(log_uniform_variances(CHANNELS, 9), reverse=True)
    budget = MEAN_BITS * CHANNELS
    free = total_distortion(imp, allocate_bits(imp, budget, GAUSSIAN_D), GAUSSIAN_D)
    seg = total_distortion(imp, allocate_bits(imp, budget, GAUSSIAN_D, width=width), GAUSSIAN_D)
    assert seg >= free * (1 - 1e-12)


def test_equal_importances_stay_monotone():
    bits = allocate_bits([1.0] * 8, 12, GAUSSIAN_D)
    assert sum(bits) == 12 and max(bits) - min(bits) <= 1
    assert all(a >= b for a, b in zip(bits, bits[1:]))


def test_full_and_empty_budgets():
    imp = log_uniform_variances(8, 0)
    assert allocate_bits(imp, 0, GAUSSIAN_D) == [0] * 8
    assert allocate_bits(imp, 8 * MAX_BITS, GAUSSIAN_D) == [MAX_BITS] * 8


@pytest.mark.parametrize("budget,width", [(6, 4), (9, 2), (130, 8)])
def test_budget_not_multiple_of_width_raises(budget, width):
    with pytest.raises(ValueError, match="multiple of segment width"):
        allocate_bits([1.0] * 16, budget, GAUSSIAN_D, width=width)


def test_channels_not_multiple_of_width_raises():
    with pytest.raises(ValueError, match="not a multiple of segment width"):
        allocate_bits([1.0] * 10, 8, GAUSSIAN_D, width=4)


def test_budget_above_max_bits_raises():
    with pytest.raises(ValueError, match="exceeds"):
        allocate_bits([1.0] * 4, 4 * MAX_BITS + 1, GAUSSIAN_D)


def test_runs_is_run_length_form():
    assert runs([4, 4, 3, 3, 3, 0]) == [(2, 4), (3, 3), (1, 0)]
    assert runs([]) == []
