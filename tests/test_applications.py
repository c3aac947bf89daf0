"""A keras.applications convnet through the whole library with default arguments
(issue 21, item 3): the smallest member of a family at a small input, on the backend
under test. The larger models run the same stages in ``benchmarks/applications.py``
(docs/benchmarks.md); this test keeps one real architecture (depthwise and pointwise
convolutions, BatchNorm, ReLU6, global pooling) in every CI run."""

import warnings

import keras
import numpy as np

from keras_lowrank import DLRT, analysis, compression
from keras_lowrank._keras_compat import all_sublayers
from keras_lowrank._low_rank.model import low_rank_layers
from keras_lowrank.robustness import PGD, evaluate_robustness

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _kernel_layers(model):
    return [layer for layer in all_sublayers(model) if hasattr(layer, "kernel")]


def test_mobilenet_converts_trains_exports_is_attacked_and_analysed_with_defaults(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNet(weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.25,
                                         classifier_activation=None)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(16, 32, 32, 3)).astype("float32")
    y = np.arange(16) % 10

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        low = compression.to_low_rank(model, rank=8)  # random weights: full spectra, tol would keep them dense
    converted = {layer.name for layer in low_rank_layers(low)}
    assert converted
    # every kernel layer is converted or named in a warning (depthwise: kept dense)
    said = " ".join(str(w.message) for w in caught)
    for layer in _kernel_layers(model):
        if layer.name not in converted:
            assert layer.name in said or type(layer).__name__ in said, layer.name

    low.compile(DLRT(keras.optimizers.Adam(1e-3)), CE)
    history = low.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    ranks = compression.truncate_ranks(low)
    assert set(ranks) == converted

    written = compression.export_compressed(low, str(tmp_path / "export"), formats="keras")
    reloaded = keras.saving.load_model(written["keras"], compile=False)
    assert not [layer for layer in all_sublayers(reloaded) if type(layer).__module__.startswith("keras_lowrank")]
    expected = keras.ops.convert_to_numpy(low.predict(x, verbose=0))
    got = keras.ops.convert_to_numpy(reloaded.predict(x, verbose=0))
    # float32 rounding of the same products in another order, over ~30 layers
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))
    assert reloaded.count_params() < model.count_params()

    attack = PGD(8 / 255, steps=10, seed=0)
    report = evaluate_robustness(low, (x, y), attacks=[PGD(8 / 255, steps=10, seed=0)], large_eps=None)
    adversarial = keras.ops.convert_to_numpy(attack(low, x, y))
    assert np.abs(adversarial - x).max() <= 8 / 255 + 1e-6
    direct = np.mean(np.argmax(keras.ops.convert_to_numpy(low.predict(adversarial, verbose=0)), -1) == y)
    # the same attack from the same seed, in Keras' evaluate and called directly: a near-tie
    # of a random network may part by one example between two graphs' roundings
    assert abs(report.accuracy("PGD", 8 / 255) - direct) <= 1 / 16 + 1e-6
    assert report.accuracy("PGD", 8 / 255) <= report.clean_accuracy + 1e-6

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        measured = analysis.representation_ranks(low, x)
    assert measured and converted & set(measured)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        cka = analysis.cka_map(low, x)
    assert converted & set(cka.rows)  # the low-rank layers are compared, not only the head
    diagonal = np.diag(cka.matrix)
    # a layer constant over the 16 images (deep layers of an untrained network) is NaN, named
    constant = [name for name, value in zip(cka.rows, diagonal) if np.isnan(value)]
    assert all(name in " ".join(str(w.message) for w in caught) for name in constant)
    assert converted & (set(cka.rows) - set(constant))
    np.testing.assert_allclose(diagonal[np.isfinite(diagonal)], 1.0, atol=1e-4)
