import keras
import numpy as np
import pytest
from models import unit_data

from keras_lowrank import LowRankWarning, analysis
from keras_lowrank.analysis import cka_map, class_selectivity, representation_ranks

pytestmark = pytest.mark.torch  # in the torch half of the suite (make test-torch) too


def conv_model():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(5, name="dense")(x)
    return keras.Model(inputs, x)


def test_streaming_equals_full_matrix(rng):
    model = conv_model()
    x = (rng.normal(size=(100, 6, 6, 2)) + 3.0).astype("float32")  # large mean
    results = analysis.representation_ranks(model, x, layers=["conv", "dense"])
    assert list(results) == ["conv", "dense"]
    full = keras.Model(model.inputs, [model.get_layer("conv").output,
                                      model.get_layer("dense").output]).predict(x, verbose=0)
    for name, acts in zip(["conv", "dense"], full):
        a = acts.reshape(100, -1).astype(np.float64)
        s = np.linalg.svd(a - a.mean(0), compute_uv=False)
        got = results[name]
        assert got.num_samples == 100 and got.num_features == a.shape[1]
        np.testing.assert_allclose(got.singular_values[: len(s)], s, rtol=1e-4, atol=1e-3)
        assert got.variance_rank == analysis.variance_rank_from_singular_values(s, 0.99)
        assert got.effective_rank == pytest.approx(
            analysis.effective_rank_from_singular_values(s), rel=1e-3)


def test_dataset_batches_uncentred_and_channel_mode(rng):
    tf = pytest.importorskip("tensorflow")  # tf.data input; a JAX-only install skips

    model = conv_model()
    x = rng.normal(size=(64, 6, 6, 2)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, np.zeros(64))).batch(10)
    res = analysis.representation_ranks(model, data, layers="conv", center=False,
                                        flatten=False)["conv"]
    acts = keras.Model(model.inputs, model.get_layer("conv").output).predict(x, verbose=0)
    expected = np.linalg.svd(acts.reshape(-1, 4), compute_uv=False)
    assert res.num_samples == 64 * 16 and res.num_features == 4
    np.testing.assert_allclose(res.singular_values, expected, rtol=1e-4)


def test_layer_errors():
    model = conv_model()
    with pytest.raises(ValueError, match="no layer named 'nope'.*conv"):
        analysis.representation_ranks(model, np.zeros((2, 6, 6, 2)), layers=["nope"])
    with pytest.raises(ValueError, match="max_features"):
        analysis.representation_ranks(model, np.zeros((2, 6, 6, 2)), layers=["conv"],
                                      max_features=10, flatten=True)
    with pytest.raises(ValueError, match="max_features"):  # even a channel vector is wider
        analysis.representation_ranks(model, np.zeros((2, 6, 6, 2)), layers=["conv"], max_features=3)
    with pytest.raises(ValueError, match="flatten"):
        analysis.representation_ranks(model, np.zeros((2, 6, 6, 2)), flatten="yes")


def test_default_measures_wide_maps_as_channel_vectors(rng):
    """flatten='auto': a map wider than max_features is measured per position (as
    flatten=False, by numpy's SVD), narrower layers whole; each result says which."""
    model = conv_model()
    x = rng.normal(size=(40, 6, 6, 2)).astype("float32")
    with pytest.warns(LowRankWarning, match=r"flat \(64\)"):  # a 64-vector has no channel axis to split
        res = analysis.representation_ranks(model, x, max_features=32)
    assert list(res) == ["conv", "dense"]
    acts = keras.Model(model.inputs, model.get_layer("conv").output).predict(x, verbose=0)
    expected = np.linalg.svd(acts.reshape(-1, 4) - acts.reshape(-1, 4).mean(0), compute_uv=False)
    assert not res["conv"].flattened and res["conv"].num_samples == 40 * 16
    np.testing.assert_allclose(res["conv"].singular_values, expected, rtol=1e-4, atol=1e-4)
    whole = analysis.representation_ranks(model, x)  # 64 features ≤ 8192: whole outputs
    assert whole["conv"].flattened and whole["conv"].num_features == 64


def test_an_x_y_pair_of_arrays_is_read_as_its_inputs(rng):
    """(x, y) pairs, as ``evaluate_robustness`` takes them, measure x (the labels
    were fed to the model before); mismatched lengths are refused."""
    model = conv_model()
    x = rng.normal(size=(40, 6, 6, 2)).astype("float32")
    y = np.arange(40) % 5
    from_pair = analysis.representation_ranks(model, (x, y), layers=["dense"])["dense"]
    from_x = analysis.representation_ranks(model, x, layers=["dense"])["dense"]
    np.testing.assert_array_equal(from_pair.singular_values, from_x.singular_values)
    cka = analysis.cka_map(model, (x, y), layers=["conv", "dense"])
    np.testing.assert_allclose(cka.matrix, analysis.cka_map(model, x, layers=["conv", "dense"]).matrix)
    with pytest.raises(ValueError, match="x has 40 samples but y has 39"):
        analysis.representation_ranks(model, (x, y[:39]), layers=["dense"])


@pytest.mark.parametrize("n", [5, 63, 64, 100])
@pytest.mark.parametrize("center", [True, False])
def test_moments_equal_the_svd_with_fewer_or_more_rows_than_features(rng, n, center):
    """Below m rows the spectrum comes from the rows' Gram matrix, from m rows on from
    the m × m scatter (the switch falls inside a batch for n = 100): both equal numpy's
    SVD of the (centred) matrix, zeros included."""
    from keras_lowrank.analysis.representation import _SecondMoments

    m = 64
    a = rng.normal(size=(n, m)) @ rng.normal(size=(m, m)) * 0.1 + 3.0  # correlated, off-centre
    moments = _SecondMoments(center)
    for start in range(0, n, 9):
        moments.update(a[start:start + 9])
    reference = np.linalg.svd(a - a.mean(axis=0) if center else a, compute_uv=False)
    expected = np.concatenate([reference, np.zeros(m - len(reference))])
    got = moments.singular_values()
    assert got.shape == (m,) and moments.count == n
    # float64 eigenvalues of a Gram/scatter: errors ~1e-16·σ₁², i.e. ~1e-8·σ₁ in σ
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7 * reference[0])


def _relu_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    h = keras.layers.Dense(6, activation="relu", name="h")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(h))


def test_analysis_entry_points_refuse_what_they_cannot_measure():
    x, y = unit_data(n=40)
    model = _relu_model()
    with pytest.raises(ValueError, match="`layers` is empty"):
        cka_map(model, x, layers=[])
    with pytest.raises(ValueError, match="`layers` is empty"):
        representation_ranks(model, x, layers=[])
    x_nan = x.copy()
    x_nan[0, 0] = np.nan
    # refused as input, not left to the activations (a ReLU maps NaN to 0 on AVX-512's oneDNN)
    with pytest.raises(ValueError, match="batch 0 holds NaN"):
        representation_ranks(model, x_nan)
    with pytest.raises(ValueError, match="batch 0 holds NaN"):
        cka_map(model, x_nan)
    with pytest.raises(ValueError, match="batch 0 holds NaN"):
        class_selectivity(model, (x_nan, y), layers=["h"])
    with pytest.raises(ValueError, match="at least 2"):
        representation_ranks(model, x[:1])
    with pytest.raises(ValueError, match="integer classes"):
        class_selectivity(model, (x, y + 0.7), layers=["h"])
    with pytest.raises(ValueError, match="one class"):
        class_selectivity(model, (x, np.zeros_like(y)), layers=["h"])
    # valid inputs still measure
    ranks = representation_ranks(model, x)
    assert all(r.variance_rank >= 1 for r in ranks.values())

