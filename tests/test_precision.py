"""The analysis estimators and DLRT's basis updates multiply in full float32.

GPUs default to TF32 products (≈ 1e-3 relative error); CPUs have no TF32, so on
this machine the numbers cannot show it. What is checked here is the switch each
backend reads when a product is made: every ``keras.ops.matmul`` these functions
make (executed, or traced into a compiled function) sees exact float32 precision,
a product outside them sees the backend's default, and the default is restored.
(On an H100 the float64 comparisons of test_cka / test_selectivity and the
orthonormality checks of the DLRT tests pass at 1e-6 / 1e-5 only with this.)
"""

import keras
import numpy as np
import pytest

import keras_lowrank
from keras_lowrank._low_rank import factorization
from keras_lowrank.analysis import cka_map, class_selectivity_index, linear_cka, rbf_cka
from keras_lowrank.layers.low_rank_projection import randomized_truncate_to_rank, truncate_to_rank

pytestmark = [pytest.mark.own_precision, pytest.mark.torch]  # torch: in the torch half


def exact_float32_now():
    if keras.backend.backend() == "jax":
        import jax

        return jax.config.jax_default_matmul_precision in ("highest", "float32")
    if keras.backend.backend() == "torch":  # matmuls are exact by default there, convolutions are not
        import torch

        return torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
    import tensorflow as tf

    return not tf.config.experimental.tensor_float_32_execution_enabled()


@pytest.fixture
def matmul_precisions(monkeypatch):
    """The precision seen by each keras.ops.matmul call (our modules call it by attribute)."""
    seen = []
    original = keras.ops.matmul

    def spy(*args, **kwargs):
        seen.append(exact_float32_now())
        return original(*args, **kwargs)

    monkeypatch.setattr(keras.ops, "matmul", spy)
    return seen


def test_estimators_and_basis_updates_multiply_in_full_float32(matmul_precisions):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.normal(size=(32, 4)).astype("float32")
    labels = np.arange(32) % 3

    keras.ops.matmul(x, x.T)
    assert matmul_precisions == [False]  # the backend's default outside

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(3)])
    u, _ = np.linalg.qr(rng.normal(size=(6, 4)).astype("float32"))
    v, _ = np.linalg.qr(rng.normal(size=(5, 4)).astype("float32"))
    s = np.diag([3.0, 2.0, 1.0, 0.5]).astype("float32")
    u, s, v = (keras.ops.convert_to_tensor(a) for a in (u, s, v))  # as the optimizer holds them
    calls = {
        "linear_cka": lambda: linear_cka(x, y),
        "rbf_cka": lambda: rbf_cka(x, y),
        "cka_map": lambda: cka_map(model, x),  # traces the compiled extractor inside
        "class_selectivity_index": lambda: class_selectivity_index(np.abs(x), labels, 3),
        "augment": lambda: factorization.augment(u, s, v, u, v, 4),
        "truncate": lambda: factorization.truncate(u, s, v, 0.2, 1),
        "basis_change": lambda: factorization.basis_change(u, v, u, v),
        "carry_slot": lambda: factorization.carry_slot(s, s, s, "linear"),
        "condition": lambda: factorization.condition(s, 4, 2.0),
        "orthonormalize": lambda: factorization.orthonormalize(u, s, v),
        "truncate_to_rank": lambda: truncate_to_rank(s, 2),
        "randomized_truncate_to_rank": lambda: randomized_truncate_to_rank(s, 2, s[:, :3]),
    }
    for name, call in calls.items():
        matmul_precisions.clear()
        call()
        assert matmul_precisions and all(matmul_precisions), name
        assert not exact_float32_now(), f"{name} left exact float32 switched on"


def test_context_manager_nests_and_restores():
    assert not exact_float32_now()
    with keras_lowrank.float32_matmuls():
        assert exact_float32_now()
        with keras_lowrank.float32_matmuls():
            assert exact_float32_now()
        assert exact_float32_now()
    assert not exact_float32_now()
    with pytest.raises(RuntimeError):
        with keras_lowrank.float32_matmuls():
            raise RuntimeError
    assert not exact_float32_now()
