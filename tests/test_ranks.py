import numpy as np
import pytest

from keras_lowrank import analysis

pytestmark = pytest.mark.torch  # in the torch half of the suite (make test-torch) too


def matrix_of_rank(rng, n, m, r, spectrum=None):
    q1, _ = np.linalg.qr(rng.normal(size=(n, r)))
    q2, _ = np.linalg.qr(rng.normal(size=(m, r)))
    s = np.arange(r, 0, -1.0) if spectrum is None else np.asarray(spectrum)
    return ((q1 * s) @ q2.T).astype("float32"), s


def test_singular_values_match_numpy(rng):
    x = rng.normal(size=(40, 7, 3)).astype("float32")
    expected = np.linalg.svd(x.reshape(40, -1), compute_uv=False)
    np.testing.assert_allclose(analysis.singular_values(x), expected, rtol=1e-4)
    centred = x.reshape(40, -1) - x.reshape(40, -1).mean(0)
    np.testing.assert_allclose(analysis.singular_values(x, center=True),
                               np.linalg.svd(centred, compute_uv=False), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("r", [1, 3, 8])
def test_ranks_of_known_rank_matrices(rng, r):
    # Equal singular values: every rank measure equals the true rank.
    x, _ = matrix_of_rank(rng, 50, 20, r, spectrum=np.full(r, 2.0))
    assert analysis.variance_rank(x, 0.999) == r
    assert analysis.effective_rank(x) == pytest.approx(r, rel=1e-3)
    assert analysis.stable_rank(x) == pytest.approx(r, rel=1e-3)


def test_ranks_against_definitions(rng):
    x, s = matrix_of_rank(rng, 30, 12, 5, spectrum=[10, 4, 2, 1, 0.5])
    p = s / s.sum()
    assert analysis.effective_rank(x) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-4)
    assert analysis.stable_rank(x) == pytest.approx(np.linalg.norm(x) ** 2 / np.linalg.norm(x, 2) ** 2,
                                                    rel=1e-4)
    # σ² = 100, 16, 4, 1, 0.25 of 121.25: cumulative 0.825, 0.957, 0.9897, 0.9979, 1
    assert analysis.variance_rank(x, 0.80) == 1
    assert analysis.variance_rank(x, 0.95) == 2
    assert analysis.variance_rank(x, 0.98) == 3
    assert analysis.variance_rank(x, 0.99) == 4
    assert analysis.variance_rank(x, 0.999) == 5


def test_rank_measure_orderings(rng):
    # stable rank ≤ effective rank ≤ rank, and variance rank grows with threshold.
    x = rng.normal(size=(60, 15)) @ np.diag(np.geomspace(1, 1e-2, 15))
    assert 1 <= analysis.stable_rank(x) <= analysis.effective_rank(x) <= 15
    ranks = [analysis.variance_rank(x, t) for t in (0.5, 0.9, 0.99, 1.0)]
    assert ranks == sorted(ranks) and ranks[-1] == 15


def test_edge_cases_and_errors():
    assert analysis.effective_rank(np.zeros((4, 3))) == 0.0
    assert analysis.variance_rank(np.zeros((4, 3))) == 0
    with pytest.raises(ValueError, match="`threshold`"):
        analysis.variance_rank(np.eye(3), threshold=0)
    with pytest.raises(ValueError, match="`x`"):
        analysis.effective_rank(np.ones(5))
    with pytest.raises(ValueError, match="`singular_values`"):
        analysis.stable_rank_from_singular_values([1.0, -2.0])
