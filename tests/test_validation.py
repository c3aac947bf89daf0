"""Arguments every public entry point checks (keras_lowrank/_validation.py): numpy
scalars accepted as Python numbers, non-finite numbers refused, and the obscure inputs
that each get a clear error naming the fix."""

import keras
import numpy as np
import pytest
from keras import ops
from models import linear_classifier, unit_data

from keras_lowrank import callbacks, compression
from keras_lowrank.analysis import cka_map
from keras_lowrank.layers import DynamicLowRankDense, LowRankProjection
from keras_lowrank.optimizers import DLRT
from keras_lowrank.robustness import FGSM, PGD, GaussianNoise, evaluate_robustness


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_numpy_scalars_are_accepted_and_non_finite_numbers_refused():
    layer = DynamicLowRankDense(np.int64(8), max_rank=np.int32(4), rank=np.int64(2),
                                tol=np.float32(0.1))
    assert (layer.units, layer.max_rank, layer.initial_rank) == (8, 4, 2)
    assert type(layer.units) is int
    assert PGD(np.float32(0.1), steps=np.int64(3)).steps == 3
    assert DLRT("sgd", steps_per_cycle=np.int64(5)).steps_per_cycle == 5
    assert LowRankProjection(rank=np.int64(4)).rank == 4
    assert LowRankProjection(rank=4, warmup_steps=np.int64(0)).warmup_steps == 0
    assert GaussianNoise(np.float64(0.2)).sigma == pytest.approx(0.2)
    # numpy seeds (Keras' SeedGenerator refused them: "Argument `seed` must be an integer"),
    # drawing what the Python int draws
    from keras_lowrank.robustness import SPSA, Corruption
    from keras_lowrank.robustness.attacks import APGD, AutoAttack, Square

    x = np.full((4, 8), 0.5, "float32")
    for make in (lambda s: GaussianNoise(0.1, seed=s), lambda s: Corruption("gaussian_noise", 3, seed=s)):
        np.testing.assert_array_equal(_np(make(np.int64(3))(None, x)), _np(make(3)(None, x)))
    for make in (PGD, SPSA, APGD, Square, AutoAttack):
        assert type(make(0.1, seed=np.int64(3)).seed) is int
    x, y = unit_data()
    by_numpy = evaluate_robustness(linear_classifier(), (x, y), noise_sigmas=[0.2], seed=np.int64(3), large_eps=None)
    by_int = evaluate_robustness(linear_classifier(), (x, y), noise_sigmas=[0.2], seed=3, large_eps=None)
    assert by_numpy.rows == by_int.rows
    refused = [
        lambda: PGD(0.1, seed="a"),
        lambda: GaussianNoise(0.1, seed=1.5),
        lambda: evaluate_robustness(linear_classifier(), (x, y), large_eps=float("nan")),
        lambda: LowRankProjection(rank=4, projection_weight=float("nan")),
        lambda: LowRankProjection(rank=4, norm_weight=float("inf")),
        lambda: LowRankProjection(rank=4, warmup_steps=-1),
        lambda: LowRankProjection(rank=4, warmup_steps=2.5),
        lambda: DynamicLowRankDense(8, spectral_weight=float("nan")),
        lambda: DynamicLowRankDense(8, tol=float("nan")),
        lambda: PGD(float("nan")),
        lambda: FGSM(np.float32("inf")),
        lambda: GaussianNoise(float("nan")),
        lambda: FGSM(0.1, clip=(0.0, float("nan"))),
        lambda: DLRT("sgd", steps_per_cycle=2.5),
        lambda: DynamicLowRankDense(True),
        lambda: callbacks.SpectralConditioning(kappa=float("nan")),
    ]
    for make in refused:
        with pytest.raises(ValueError, match="must be"):
            make()


def _two_outputs():
    inputs = keras.Input((6,))
    return keras.Model(inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(3)(inputs)])


def _lstm_with_state():
    inputs = keras.Input((6, 1))
    out, h, c = keras.layers.LSTM(3, return_state=True)(inputs)
    return keras.Model(inputs, [out, h, c])


def _built_lr():
    layer = LowRankProjection(2)
    layer.build((None, 6))
    return layer


def _nan_kernel_model():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu", name="h"),
                              keras.layers.Dense(3)])
    model.get_layer("h").kernel.assign(np.full((6, 16), np.nan, "float32"))
    return model


_X = np.random.default_rng(0).uniform(size=(16, 6)).astype("float32")


_Y = np.arange(16) % 3


def _three():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])


@pytest.mark.parametrize("case, call, message", [
    ("two outputs, attack", lambda: FGSM(0.1)(_two_outputs(), _X, _Y), "2 outputs"),
    ("two outputs, report", lambda: evaluate_robustness(_two_outputs(), (_X, _Y), attacks=[FGSM(0.1)]), "2 outputs"),
    ("LSTM return_state", lambda: FGSM(0.1)(_lstm_with_state(), _X[..., None], _Y), "3 outputs"),
    ("string labels", lambda: evaluate_robustness(_three(), (_X, _Y.astype(str)), attacks=[FGSM(0.1)]), "dtype <U"),
    ("string labels, attack", lambda: FGSM(0.1)(_three(), _X, _Y.astype(str)), "dtype <U"),
    ("one-hot width", lambda: evaluate_robustness(_three(), (_X, np.eye(5)[_Y]), attacks=[FGSM(0.1)]), "width 5"),
    ("(x, None)", lambda: evaluate_robustness(_three(), (_X, None), attacks=[FGSM(0.1)]), r"\(x, None\)"),
    ("seed -1", lambda: PGD(0.1, seed=-1), "`seed`"),
    ("encode before build", lambda: LowRankProjection(2).encode(_X), "not built"),
    ("encode width", lambda: _built_lr().encode(_X[:, :5]), "built for 6 features"),
    ("decode width", lambda: _built_lr().decode(_X[:, :5]), r"shape \(n, 2\)"),
    ("unbuilt model", lambda: compression.to_low_rank(keras.Sequential([keras.layers.Dense(4)]), rank=2),
     "not built"),
    ("NaN kernel", lambda: compression.to_low_rank(_nan_kernel_model(), rank=2), "NaN or ±inf in its kernel"),
    ("NaN CKA", lambda: cka_map(_nan_kernel_model(), _X), "NaN or ±inf weights"),
])
def test_obscure_inputs_get_clear_errors(case, call, message):
    with pytest.raises(ValueError, match=message):
        call()

