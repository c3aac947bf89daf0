"""CKA against independent float64 numpy computations and its known properties."""

import keras
import numpy as np
import pytest

from keras_lowrank import LowRankWarning, float32_matmuls
from keras_lowrank.analysis import cka_map, linear_cka, rbf_cka

pytestmark = [pytest.mark.own_precision, pytest.mark.torch]  # own_precision: see conftest  # torch: in the torch half
# float64 on TensorFlow; JAX forms its Gram matrices in float32 unless x64 is enabled.
TOL = 1e-6 if keras.backend.backend() == "tensorflow" else 1e-5


def activations(model, names, x):
    """The layers' activations as cka_map computes them: full float32 forward passes."""
    with float32_matmuls():
        return keras.Model(model.inputs, [model.get_layer(n).output for n in names]).predict(x, verbose=0)


def np_linear_cka_feature_space(x, y):
    """Biased linear CKA in feature space: ‖YᵀX‖² / (‖XᵀX‖ ‖YᵀY‖), centred."""
    x = x.reshape(len(x), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def np_hsic_unbiased(k, l):
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    ones = np.ones(n)
    return (np.trace(k @ l) + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
            - 2 * ones @ k @ l @ ones / (n - 2)) / (n * (n - 3))


def np_cka_from_grams(k, l, unbiased):
    if unbiased:
        hsic = np_hsic_unbiased
    else:
        h = np.eye(len(k)) - 1.0 / len(k)
        hsic = lambda a, b: np.sum((h @ a @ h) * (h @ b @ h))  # noqa: E731
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def np_gram_rbf(x, threshold):
    """The reference code's RBF Gram (Kornblith et al.'s Demo.ipynb)."""
    x = x.reshape(len(x), -1).astype(np.float64)
    dots = x @ x.T
    norms = np.diag(dots)
    sq = -2 * dots + norms[:, None] + norms[None, :]
    return np.exp(-sq / (2 * threshold**2 * np.median(sq)))


@pytest.fixture
def xy(rng):
    x = rng.normal(size=(40, 6, 2))
    y = np.tanh(x.reshape(40, -1) @ rng.normal(size=(12, 7))) + 0.3 * rng.normal(size=(40, 7))
    return x.astype("float32"), y.astype("float32")


def test_linear_cka_matches_numpy(xy):
    x, y = xy
    assert linear_cka(x, y) == pytest.approx(np_linear_cka_feature_space(x, y), abs=TOL)
    xf, yf = x.reshape(40, -1).astype(np.float64), y.astype(np.float64)
    assert linear_cka(x, y, unbiased=True) == pytest.approx(
        np_cka_from_grams(xf @ xf.T, yf @ yf.T, True), abs=TOL)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_rbf_cka_matches_numpy(xy, unbiased, threshold):
    x, y = xy
    expected = np_cka_from_grams(np_gram_rbf(x, threshold), np_gram_rbf(y, threshold), unbiased)
    assert rbf_cka(x, y, threshold, unbiased) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("unbiased", [False, True])
def test_invariances(rng, xy, unbiased):
    x, _ = xy
    flat = x.reshape(40, -1)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert linear_cka(flat, flat, unbiased) == pytest.approx(1.0, abs=TOL)
    assert linear_cka(flat, (flat @ q).astype("float32"), unbiased) == pytest.approx(1.0, abs=TOL)
    assert linear_cka(flat, 7.5 * flat, unbiased) == pytest.approx(1.0, abs=TOL)
    skew = (flat @ np.diag(np.geomspace(1, 30, 12))).astype("float32")  # invertible, not orthogonal
    assert linear_cka(flat, skew, unbiased) < 0.99
    # HSIC (both estimators) is blind to a common shift of the samples
    other = np.tanh(flat @ rng.normal(size=(12, 5))).astype("float32")
    shifted = (flat + rng.normal(size=12) * 3.0).astype("float32")
    assert linear_cka(shifted, other, unbiased) == pytest.approx(linear_cka(flat, other, unbiased), abs=TOL)


def test_errors_instead_of_nan(xy):
    x, y = xy
    with pytest.raises(ValueError, match="at least 4 samples"):
        linear_cka(x[:3], y[:3], unbiased=True)
    with pytest.raises(ValueError, match="`y` has no variance"):
        linear_cka(x, np.ones((40, 5), "float32"))
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(x, y[:10])
    # NaN said "no variance (constant features)"; a zero or NaN bandwidth the same
    with pytest.raises(ValueError, match="`x` holds NaN or infinite values"):
        linear_cka(np.where(x > 1, np.nan, x), y)
    with pytest.raises(ValueError, match="`y` holds NaN or infinite values"):
        rbf_cka(x, np.where(y > 1, np.inf, y))
    for threshold in (0.0, float("nan"), -1.0):
        with pytest.raises(ValueError, match="`threshold` must be a finite number > 0"):
            rbf_cka(x, y, threshold=threshold)
        with pytest.raises(ValueError, match="`threshold` must be a finite number > 0"):
            cka_map(small_model(0), np.zeros((8, 6, 6, 1), "float32"), kernel="rbf", threshold=threshold)


def small_model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(8, activation="relu", name="hidden")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(h))


def test_cka_map_equals_mean_hsic_over_batches(rng):
    """Uneven batches (odd sizes too: the Gram is formed in halves)."""
    model, other = small_model(0), small_model(1)
    x = rng.normal(size=(60, 6, 6, 1)).astype("float32")
    batches = [slice(0, 21), slice(21, 40), slice(40, 60)]
    result = cka_map(model, [x[s] for s in batches], model_b=other)
    assert result.rows == ["conv", "hidden", "out"] and result.columns == result.rows
    acts_a, acts_b = activations(model, result.rows, x), activations(other, result.rows, x)
    def grams(acts, s):
        flat = [a[s].reshape(len(a[s]), -1).astype(np.float64) for a in acts]
        return [f @ f.T for f in flat]
    for i in range(3):
        for j in range(3):
            kk = np.mean([np_hsic_unbiased(grams(acts_a, s)[i], grams(acts_a, s)[i]) for s in batches])
            ll = np.mean([np_hsic_unbiased(grams(acts_b, s)[j], grams(acts_b, s)[j]) for s in batches])
            kl = np.mean([np_hsic_unbiased(grams(acts_a, s)[i], grams(acts_b, s)[j]) for s in batches])
            assert result.matrix[i, j] == pytest.approx(kl / np.sqrt(kk * ll), abs=10 * TOL)


def test_cka_map_default_layers_include_a_converted_models_low_rank_layers(rng):
    from keras_lowrank.compression import to_low_rank

    model = small_model(0)
    low = to_low_rank(model, rank=2)  # conv and hidden become low rank; out stays Dense
    x = rng.normal(size=(40, 6, 6, 1)).astype("float32")
    default = cka_map(model, x, model_b=low)
    named = cka_map(model, x, model_b=low, layers=["conv", "hidden", "out"])
    assert default.rows == default.columns == ["conv", "hidden", "out"]
    np.testing.assert_array_equal(default.matrix, named.matrix)


@pytest.mark.parametrize("unbiased", [True, False])
def test_cka_map_rbf_equals_numpy(rng, unbiased):
    model = small_model(0)
    x = rng.normal(size=(31, 6, 6, 1)).astype("float32")
    result = cka_map(model, x, kernel="rbf", threshold=0.8, unbiased=unbiased)
    acts = activations(model, result.rows, x)
    grams = [np_gram_rbf(a.reshape(31, -1), 0.8) for a in acts]
    for i in range(3):
        for j in range(3):
            assert result.matrix[i, j] == pytest.approx(
                np_cka_from_grams(grams[i], grams[j], unbiased), abs=10 * TOL)


def test_cka_map_within_one_model(rng, tmp_path):
    tf = pytest.importorskip("tensorflow")  # tf.data input; a JAX-only install skips

    model = small_model(0)
    x = rng.normal(size=(50, 6, 6, 1)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, np.zeros(50))).batch(16)  # last batch: 2, skipped
    result = cka_map(model, data, layers=(keras.layers.Dense,))
    assert result.rows == ["hidden", "out"]
    np.testing.assert_allclose(np.diag(result.matrix), 1.0, atol=10 * TOL)
    np.testing.assert_allclose(result.matrix, result.matrix.T, atol=10 * TOL)
    single = cka_map(model, x, layers=["hidden", "out"], unbiased=False, max_batches=1)
    acts = activations(model, ["hidden", "out"], x)
    assert single.matrix[0, 1] == pytest.approx(
        np_linear_cka_feature_space(acts[0][:256], acts[1][:256]), abs=10 * TOL)
    result.plot(tmp_path / "cka.png")
    assert (tmp_path / "cka.png").stat().st_size > 0
    assert result.block_structure_score() == pytest.approx(result.matrix[0, 1])  # 2 layers
    with pytest.raises(ValueError, match="`kernel`"):
        cka_map(model, x, kernel="cosine")


def test_block_structure_score_is_the_off_diagonal_mean():
    from keras_lowrank.analysis import CKAMap

    matrix = np.array([[1.0, 0.8, 0.2], [0.8, 1.0, 0.5], [0.2, 0.5, 1.0]])
    assert CKAMap(matrix, list("abc"), list("abc")).block_structure_score() == pytest.approx(
        (0.8 + 0.2 + 0.5) / 3)
    with pytest.raises(ValueError, match="itself"):
        CKAMap(matrix[:2], list("ab"), list("abc")).block_structure_score()


def test_cka_map_follows_training_between_calls(rng):
    """The compiled Gram extractor is cached per model: a second map after the
    weights change must see the new weights (compared with a fresh model)."""
    model = small_model(0)
    x = rng.normal(size=(40, 6, 6, 1)).astype("float32")
    first = cka_map(model, x, layers=(keras.layers.Dense,), unbiased=False).matrix
    other = small_model(1)
    model.set_weights(other.get_weights())
    second = cka_map(model, x, layers=(keras.layers.Dense,), unbiased=False).matrix
    np.testing.assert_allclose(second, cka_map(other, x, layers=(keras.layers.Dense,),
                                               unbiased=False).matrix, atol=10 * TOL)
    assert not np.allclose(first, second)


def test_cka_map_does_not_keep_compared_models_alive(rng):
    """The pair extractor cached on model_a holds model_b's layers (and weights):
    only the latest model_b's is kept, so a model compared once can be freed."""
    import gc
    import weakref

    model, first = small_model(0), small_model(1)
    x = rng.normal(size=(16, 6, 6, 1)).astype("float32")
    before = cka_map(model, x, model_b=first).matrix
    gone = weakref.ref(first.get_layer("hidden"))
    del first
    second = small_model(1)  # same seed: the same weights as `first`
    np.testing.assert_allclose(cka_map(model, x, model_b=second).matrix, before, atol=10 * TOL)
    gc.collect()
    assert gone() is None


def test_cka_map_leaves_constant_layers_nan_and_names_them(rng):
    """A layer constant across the samples: NaN row and column, a warning naming it, the
    other entries as without it (numpy), the block score over the defined pairs."""
    inputs = keras.Input((6,))
    a = keras.layers.Dense(5, name="a")(inputs)
    dead = keras.layers.Dense(4, kernel_initializer="zeros", bias_initializer="ones", name="dead")(a)
    b = keras.layers.Dense(3, name="b")(keras.layers.Concatenate()([a, dead]))
    model = keras.Model(inputs, b)
    x = rng.normal(size=(32, 6)).astype("float32")
    with pytest.warns(LowRankWarning, match=r"\['dead'\]"):
        result = cka_map(model, x, unbiased=False)
    assert result.rows == ["a", "dead", "b"]
    assert np.isnan(result.matrix[1]).all() and np.isnan(result.matrix[:, 1]).all()
    acts = activations(model, ["a", "b"], x)
    expected = linear_cka(acts[0], acts[1])
    assert result.matrix[0, 2] == pytest.approx(expected, abs=TOL)
    assert result.block_structure_score() == pytest.approx(expected, abs=TOL)
