"""The exported form of each low-rank layer (``compression.forms``): the factor pair or the
layer's own Keras class with the kernel multiplied back, chosen by size, by speed or by hand."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_lowrank import compression
from keras_lowrank.compression import forms
from keras_lowrank.layers import DynamicLowRankDense
from keras_lowrank.layers.dynamic_low_rank_einsum import einsum_kernel_matrix


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


# (input shape, the Keras layer, its full rank min(n_in, n_out)): every kind to_low_rank
# converts, with strides, dilation, padding, activations, biases on and off, and an
# EinsumDense with a bias over two axes
KINDS = {
    "dense": ((12,), lambda: keras.layers.Dense(10, activation="relu", name="k"), 10),
    "conv1d": ((20, 6), lambda: keras.layers.Conv1D(7, 5, strides=2, padding="same", activation="tanh",
                                                    name="k"), 7),
    "conv2d": ((9, 9, 4), lambda: keras.layers.Conv2D(6, 3, dilation_rate=2, use_bias=False, name="k"), 6),
    "einsum": ((5, 12), lambda: keras.layers.EinsumDense("abc,cde->abde", (5, 3, 4), bias_axes="de",
                                                         activation="gelu", name="k"), 12),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_dense_form_at_full_rank_is_the_original_layer_back(rng, kind):
    shape, make, full = KINDS[kind]
    original = make()
    model = keras.Sequential([keras.Input(shape), original, keras.layers.Flatten(), keras.layers.Dense(2)])
    for variable in original.weights:  # a bias that is not zero
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    # to_low_rank keeps a layer dense at a rank past break-even: converted at rank 1 with
    # room for the full rank, then set to the full SVD of the kernel as a matrix
    low = compression.to_low_rank(model, rank=1, max_rank=full, layers=["k"])
    layer = low.get_layer("k")
    matrix = einsum_kernel_matrix(original.equation, _np(original.kernel)) if kind == "einsum" \
        else _np(original.kernel).reshape(-1, original.kernel.shape[-1])
    u, d, vt = np.linalg.svd(matrix.astype("float64"), full_matrices=False)
    layer.set_factors(u[:, :full], d[:full], vt[:full].T)
    assert layer.rank == full
    plain = compression.compressed_model(low, prefer={"k": "dense"})
    back = plain.get_layer("k")
    assert type(back) is type(original)
    # its configuration is the original layer's (strides, padding, dilation, activation,
    # bias axes…), but for the initialisers, which a trained layer no longer needs
    skip = {"kernel_initializer", "bias_initializer"}
    config = {k: v for k, v in back.get_config().items() if k not in skip}
    assert config == {k: v for k, v in original.get_config().items() if k not in skip}
    # its kernel is the original one (an SVD at full rank, multiplied back in float32)
    kernel = _np(original.kernel)
    np.testing.assert_allclose(_np(back.kernel), kernel, atol=1e-5 * np.abs(kernel).max() * np.sqrt(kernel.size))
    x = rng.normal(size=(4, *shape)).astype("float32")
    np.testing.assert_allclose(_np(plain(x)), _np(model(x)), atol=1e-4)
    assert plain.count_params() == model.count_params()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_from_keras_layer_computes_the_layer_from_its_factors_without_drawing_a_kernel(rng, kind, monkeypatch):
    """Each low-rank class converts its own Keras class: given the full SVD of the
    kernel matrix it computes the Keras layer's outputs, with its bias, activation and
    configuration (the dense form gives the layer back); the factors are the initial
    values, so no kernel is drawn and decomposed on the way."""
    from keras_lowrank.compression.convert import LOW_RANK_CLASSES
    from keras_lowrank.layers import dynamic_low_rank

    shape, make, full = KINDS[kind]
    original = make()
    x = rng.uniform(size=(3, *shape)).astype("float32")
    original(x)  # built
    for variable in original.weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    expected = _np(original(x))
    matrix = einsum_kernel_matrix(original.equation, _np(original.kernel)) if kind == "einsum" \
        else _np(original.kernel).reshape(-1, original.kernel.shape[-1])
    u, d, vt = np.linalg.svd(matrix.astype("float64"), full_matrices=False)

    def no_draw(*args):
        raise AssertionError("a kernel was drawn and decomposed")

    monkeypatch.setattr(dynamic_low_rank, "_leading_factors", no_draw)
    low = LOW_RANK_CLASSES[type(original)].from_keras_layer(original, (u, d, vt.T), max_rank=full)
    assert low.rank == full and low.name == original.name
    got = _np(low(x))
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))
    skip = {"kernel_initializer", "bias_initializer"}
    back = {k: v for k, v in low.exported_dense_layer().get_config().items() if k not in skip}
    assert back == {k: v for k, v in original.get_config().items() if k not in skip}
    with pytest.raises(ValueError, match="takes a"):
        DynamicLowRankDense.from_keras_layer(keras.layers.Conv1D(2, 3), (u, d, vt.T))
    with pytest.raises(ValueError, match="not built"):
        type(low).from_keras_layer(make(), (u, d, vt.T))


def _two_layers(rank_big):
    """32 → 32 → 32 → 3: the first low-rank layer at ``rank_big`` (break-even 16), the second at 4."""
    model = keras.Sequential([
        keras.Input((32,)),
        DynamicLowRankDense(32, max_rank=24, rank=rank_big, activation="relu", name="big"),
        DynamicLowRankDense(32, max_rank=8, rank=4, name="small"),
        keras.layers.Dense(3, name="head"),
    ])
    return model


@pytest.mark.parametrize("rank,form", [(20, "dense"), (16, "factors"), (12, "factors")])
def test_size_keeps_the_form_with_fewer_weights_and_the_summary_counts_it(rng, rank, form):
    model = _two_layers(rank)
    assert model.get_layer("big").rank == rank
    plain = compression.compressed_model(model)
    big = plain.get_layer("big")
    assert (type(big) is keras.layers.Dense) == (form == "dense")
    assert type(plain.get_layer("small")) is keras.Sequential
    # the count the summary reports is the exported model's, and never above the dense model's:
    # 32·32 + 32 for the big layer where r(32 + 32) + 32 would be more
    total = compression.compression_summary(model).total
    expected_big = min(32 * 32, rank * 64) + 32
    assert plain.count_params() == total["model_exported_params"] == expected_big + (4 * 64 + 32) + 99
    assert total["model_exported_params"] <= total["model_dense_params"]
    x = rng.normal(size=(8, 32)).astype("float32")
    np.testing.assert_allclose(_np(plain(x)), _np(model(x)), atol=1e-5)


def _fake_timings(seconds):
    def timed(layer, x, rounds):
        return {"params": forms.parameter_counts(layer), "seconds": dict(seconds[layer.name]),
                "input_shape": tuple(x.shape)}
    return timed


def test_speed_keeps_the_faster_form_and_the_smaller_one_when_timings_are_close(monkeypatch):
    model = _two_layers(12)  # both layers smaller as factors
    seconds = {"big": {"factors": 1.0, "dense": 0.8}, "small": {"factors": 1.0, "dense": 0.95}}
    monkeypatch.setattr(forms, "_timed", _fake_timings(seconds))
    chosen, timings = forms.export_forms(model, "speed")
    assert chosen == {"big": "dense", "small": "factors"}  # 20 % faster; 5 %: within the margin
    assert timings["big"]["seconds"] == seconds["big"]
    seconds["small"] = {"factors": 0.5, "dense": 1.0}
    model = _two_layers(20)  # "big" now smaller dense: kept dense when as fast, factors only if faster
    seconds["big"] = {"factors": 0.95, "dense": 1.0}
    assert forms.export_forms(model, "speed")[0] == {"big": "dense", "small": "factors"}
    seconds["big"] = {"factors": 0.8, "dense": 1.0}
    assert forms.export_forms(model, "speed")[0] == {"big": "factors", "small": "factors"}


def test_speed_times_both_forms_on_what_each_layer_receives(rng, tmp_path):
    inputs = keras.Input((None, 16))
    hidden = keras.layers.EinsumDense("abc,cd->abd", (None, 24), bias_axes="d", activation="relu",
                                    name="wide")(inputs)
    outputs = keras.layers.Dense(5, name="out")(keras.layers.GlobalAveragePooling1D()(hidden))
    model = compression.to_low_rank(keras.Model(inputs, outputs), rank=3, layers=["wide"])
    with pytest.raises(ValueError, match=r"'wide'.*unknown size.*pass `data`"):
        compression.export_compressed(model, str(tmp_path / "out"), formats="keras", prefer="speed")
    assert not os.path.exists(tmp_path / "out")
    x = rng.normal(size=(6, 11, 16)).astype("float32")
    written = compression.export_compressed(model, str(tmp_path / "out"), formats="keras", prefer="speed",
                                            data=(x, np.zeros(6)))
    timing = written["timings"]["wide"]
    assert timing["input_shape"] == (6, 11, 16)
    assert all(seconds > 0 for seconds in timing["seconds"].values())
    assert timing["params"] == {"factors": 3 * (16 + 24) + 24, "dense": 16 * 24 + 24}
    assert written["forms"]["wide"] in forms.FORMS
    reloaded = keras.saving.load_model(written["keras"])
    np.testing.assert_allclose(_np(reloaded(x)), _np(model(x)), atol=1e-5)


def test_prefer_is_checked_before_anything_is_written(tmp_path):
    model = _two_layers(4)
    out = str(tmp_path / "out")
    for prefer, message in [
        ("fast", r'"size", "speed" or a mapping'),
        ({"big": "dense"}, r"missing: \['small'\]"),
        ({"big": "dense", "small": "factors", "head": "dense"}, r"not low-rank layers of the model: \['head'\]"),
        ({"big": "svd", "small": "factors"}, r"unknown forms: \{'big': 'svd'\}"),
    ]:
        with pytest.raises(ValueError, match=message):
            compression.export_compressed(model, out, formats="keras", prefer=prefer)
        assert not os.path.exists(out)
    with pytest.raises(ValueError, match="`rounds` must be a positive int"):
        forms.time_export_forms(model, rounds=0)
