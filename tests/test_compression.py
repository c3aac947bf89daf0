"""to_low_rank, compression_summary, export_compressed, and the callbacks."""

import os
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from keras import ops
from models import dense_mlp
from truncated import truncated_copy

from keras_lowrank import LowRankWarning, callbacks, compression
from keras_lowrank._keras_compat import layer_paths
from keras_lowrank.layers import DynamicLowRankConv2D, DynamicLowRankDense, LowRankProjection
from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankBase

pytestmark = pytest.mark.torch  # in the torch half of the suite (make test-torch) too


def _cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2d")(inputs)
    h = keras.layers.Conv2D(32, 3, strides=2, activation="relu", name="conv2d_1")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu", name="dense")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))


def _np(x):
    return ops.convert_to_numpy(x)


def test_to_low_rank_at_full_rank_reproduces_the_model_and_truncation_error_is_bounded(rng):
    model = _cnn()
    x = rng.uniform(size=(6, 8, 8, 1)).astype("float32")
    # rank 5 pays for every layer (break-even ≥ 5.76): the converted kinds
    exact = compression.to_low_rank(model, rank=5)
    kinds = [type(l).__name__ for l in exact.layers]
    assert kinds == ["InputLayer", "DynamicLowRankConv2D", "DynamicLowRankConv2D", "Flatten",
                     "DynamicLowRankDense", "Dense"]  # last layer skipped by default
    # at a full rank (tol → 0) a factorised layer would be bigger: kept dense, said so
    with pytest.warns(LowRankWarning, match=r"(?s)left these layers dense.*converted no layer"):  # one warning
        full = compression.to_low_rank(model, tol=1e-7)
    assert [type(l).__name__ for l in full.layers] == [
        "InputLayer", "Conv2D", "Conv2D", "Flatten", "Dense", "Dense"]
    np.testing.assert_allclose(_np(full(x)), _np(model(x)), atol=1e-6)
    assert full.count_params() == model.count_params()
    # rank 4: each converted kernel is its best rank-4 approximation
    low = compression.to_low_rank(model, rank=4, layers=["dense"])
    (converted,) = [l for l in low.layers if isinstance(l, DynamicLowRankDense)]
    kernel = _np(model.get_layer("dense").kernel)
    u, d, vt = np.linalg.svd(kernel, full_matrices=False)
    np.testing.assert_allclose(_np(converted.kernel), (u[:, :4] * d[:4]) @ vt[:4], atol=1e-5)
    assert converted.rank == 4 and converted.max_rank == 8


def test_a_given_rank_of_a_large_kernel_takes_the_leading_triplets_only(monkeypatch):
    """With `rank` given, a large kernel (≥ 256 on its short side) is factorised from its
    leading singular triplets alone (ARPACK: scipy's svds): the same best rank-r
    approximation as numpy's full SVD truncated, the same default room (2r); a zero
    kernel, with nothing for ARPACK to converge to, still converts (orthonormal bases,
    zero S); and the new layers start from those factors without decomposing a kernel
    of their own."""
    scipy_linalg = pytest.importorskip("scipy.sparse.linalg")
    calls = []
    svds = scipy_linalg.svds

    def counting(a, k, **kwargs):
        calls.append((a.shape, k))
        return svds(a, k=k, **kwargs)

    monkeypatch.setattr(scipy_linalg, "svds", counting)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((300,)), keras.layers.Dense(320, name="big"),
                              keras.layers.Dense(270, kernel_initializer="zeros", name="zero"),
                              keras.layers.Dense(4, name="head")])
    from keras_lowrank.layers import dynamic_low_rank

    initial_svds = []  # the new layers are built from the planned factors, no kernel drawn
    monkeypatch.setattr(dynamic_low_rank, "_svd_factors", lambda m: initial_svds.append(m) or 1 / 0)
    low = compression.to_low_rank(model, rank=8)
    assert ((300, 320), 8) in calls and ((320, 270), 8) in calls
    assert initial_svds == []
    big = low.get_layer("big")
    assert (big.rank, big.max_rank) == (8, 16)
    u, s, v = (_np(t) for t in big.factors())
    p, d, qt = np.linalg.svd(_np(model.get_layer("big").kernel).astype("float64"))
    best = (p[:, :8] * d[:8]) @ qt[:8]
    np.testing.assert_allclose(u @ s @ v.T, best, atol=1e-5 * d[0])
    np.testing.assert_allclose(np.linalg.svd(s, compute_uv=False)[:8], d[:8], rtol=1e-5)
    zero = low.get_layer("zero")
    u, s, v = (_np(t) for t in zero.factors())
    assert zero.rank == 8 and np.all(s == 0)
    np.testing.assert_allclose(u[:, :8].T @ u[:, :8], np.eye(8), atol=1e-6)
    np.testing.assert_allclose(v[:, :8].T @ v[:, :8], np.eye(8), atol=1e-6)


def test_to_low_rank_errors_name_the_argument():
    with pytest.raises(ValueError, match="layers"):
        compression.to_low_rank(_cnn(), layers=["nope"])
    with pytest.raises(ValueError, match="rank"):
        compression.to_low_rank(_cnn(), rank=0)

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="not built"):
        compression.to_low_rank(Sub())
    with pytest.raises(ValueError, match="keras.Model"):
        compression.to_low_rank(keras.layers.Dense(3))


def test_compression_summary_counts_parameters_and_multiply_adds():
    model = compression.to_low_rank(_cnn(), rank=4)
    summary = compression.compression_summary(model)
    rows = {r["layer"]: r for r in summary.rows}
    dense = rows["dense"]  # 288 × 64 at rank 4
    # what export writes: S folded into the second factor, biases counted
    assert (dense["dense_params"], dense["low_rank_params"]) == (288 * 64 + 64, 4 * (288 + 64) + 64)
    assert rows["logits"]["rank"] is None  # kept dense: its own row
    conv = rows["conv2d_1"]  # 3×3×16 → 32, 'valid' stride 2 on 8×8: 3×3 output positions
    assert conv["dense_macs"] == 9 * 144 * 32 and conv["low_rank_macs"] == 9 * 4 * (144 + 32)
    low_rows = [r for r in summary.rows if r["rank"] is not None]
    dense_total = sum(r["dense_params"] for r in low_rows)
    low_total = sum(r["low_rank_params"] for r in low_rows)
    assert summary.total["compression_rate"] == pytest.approx(1 - low_total / dense_total)
    # the whole model: the original's count, and exactly what export builds
    assert summary.total["model_dense_params"] == _cnn().count_params()
    assert summary.total["model_exported_params"] == compression.compressed_model(model).count_params()
    assert "| **whole model** |" in str(summary)


def test_dense_on_feature_maps_counts_multiply_adds_per_position(rng):
    # A pointwise Dense on 4×6 maps (ConvNeXt's MLP): 24 positions per sample, each
    # an 8 → 16 product; the exported pair does r(8 + 16) per position.
    inputs = keras.Input((4, 6, 8))
    h = keras.layers.Dense(16, activation="relu", name="pointwise")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(keras.layers.Flatten()(h)))
    low = compression.to_low_rank(model, rank=2)
    row = {r["layer"]: r for r in compression.compression_summary(low).rows}["pointwise"]
    assert (row["dense_macs"], row["low_rank_macs"]) == (24 * 8 * 16, 24 * 2 * (8 + 16))
    # the layer says the same (one count, the layer's own), and on vectors one position
    assert low.get_layer("pointwise").multiply_adds() == (row["dense_macs"], row["low_rank_macs"])
    assert low.get_layer("pointwise").multiply_adds(input_shape=(None, 8)) == (8 * 16, 2 * (8 + 16))
    x = rng.normal(size=(5, 4, 6, 8)).astype("float32")
    assert low.predict(x, verbose=0).shape == (5, 3)


def _nested_model():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((12,)), keras.layers.Dense(24, activation="relu", name="inner_dense")],
                             name="inner")
    inputs = keras.Input((12,))
    h = keras.layers.Dense(12, activation="relu", name="outer_dense")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(inner(h)))


def test_to_low_rank_converts_the_layers_of_nested_models_by_path(rng):
    model = _nested_model()
    low = compression.to_low_rank(model, rank=2)
    assert type(low.get_layer("outer_dense")) is DynamicLowRankDense
    assert type(low.get_layer("inner").get_layer("inner_dense")) is DynamicLowRankDense
    x = rng.normal(size=(4, 12)).astype("float32")
    truth = truncated_copy(model, ["outer_dense", "inner/inner_dense"], 2)
    np.testing.assert_allclose(_np(low(x)), _np(truth(x)), rtol=1e-5, atol=1e-5)
    # by path, by unique name, by predicate; the original is untouched
    only = compression.to_low_rank(model, layers=["inner/inner_dense"], rank=2)
    assert type(only.get_layer("outer_dense")) is keras.layers.Dense
    assert type(only.get_layer("inner").get_layer("inner_dense")) is DynamicLowRankDense
    by_name = compression.to_low_rank(model, layers=["inner_dense"], rank=2)
    assert type(by_name.get_layer("inner").get_layer("inner_dense")) is DynamicLowRankDense
    picked = compression.to_low_rank(model, layers=lambda path, layer: path.startswith("inner/"), rank=2)
    assert [p for p, l in layer_paths(picked) if isinstance(l, DynamicLowRankDense)] == ["inner/inner_dense"]
    assert type(model.get_layer("inner").get_layer("inner_dense")) is keras.layers.Dense
    with pytest.raises(ValueError, match=r"'nope'.*inner/inner_dense"):
        compression.to_low_rank(model, layers=["nope"], rank=2)


def test_to_low_rank_converts_multi_head_attention_projections(rng):
    """Keras' MultiHeadAttention builds its query/key/value/output EinsumDense layers
    inside itself: each converts, and the model computes what the model with those four
    kernels truncated to rank 2 computes."""
    keras.utils.set_random_seed(0)
    tokens = keras.Input((6, 16))
    attended = keras.layers.MultiHeadAttention(2, 8, name="mha")(tokens, tokens)
    model = keras.Model(tokens, keras.layers.Dense(3)(keras.layers.Dense(16, name="mlp")(attended)))
    low = compression.to_low_rank(model, rank=2)
    converted = sorted(p for p, l in layer_paths(low) if isinstance(l, DynamicLowRankBase))
    assert converted == ["mha/attention_output", "mha/key", "mha/query", "mha/value", "mlp"]
    truth = truncated_copy(model, converted, 2)
    x = rng.normal(size=(3, 6, 16)).astype("float32")
    np.testing.assert_allclose(_np(low(x)), _np(truth(x)), rtol=1e-5, atol=1e-5)
    assert low.count_params() < model.count_params()


@keras.saving.register_keras_serializable(package="tests")
class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(32, activation="relu", name="hidden")
        self.out = keras.layers.Dense(3, name="out")

    def call(self, x):
        return self.out(self.hidden(x))


def test_to_low_rank_converts_a_subclassed_model_and_export_reloads_it(rng, tmp_path):
    keras.utils.set_random_seed(0)
    model = _Subclassed()
    x = rng.normal(size=(4, 24)).astype("float32")
    model(x)
    low = compression.to_low_rank(model, layers=["hidden"], rank=3)
    assert isinstance(low, _Subclassed) and type(low.hidden) is DynamicLowRankDense
    np.testing.assert_allclose(_np(low(x)), _np(truncated_copy(model, ["hidden"], 3)(x)), rtol=1e-5, atol=1e-5)
    written = compression.export_compressed(low, str(tmp_path / "out"), formats="keras")
    reloaded = keras.saving.load_model(written["keras"])
    assert isinstance(reloaded, _Subclassed)
    np.testing.assert_allclose(_np(reloaded(x)), _np(low(x)), rtol=1e-5, atol=1e-5)
    assert reloaded.count_params() < model.count_params()


def test_to_low_rank_skips_grouped_convolutions_by_default_and_refuses_them_by_name(rng):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 4))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="plain")(inputs)
    h = keras.layers.Conv2D(16, 3, padding="same", groups=16, name="depthwise")(h)  # ConvNeXt-style
    h = keras.layers.Conv2D(32, 1, activation="relu", name="pointwise")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(h)))
    with pytest.warns(LowRankWarning, match=r"depthwise \(groups=16\)"):
        low = compression.to_low_rank(model, rank=2)
    assert type(low.get_layer("depthwise")) is keras.layers.Conv2D
    assert type(low.get_layer("plain")) is DynamicLowRankConv2D
    np.testing.assert_array_equal(_np(low.get_layer("depthwise").kernel), _np(model.get_layer("depthwise").kernel))
    assert low.predict(rng.normal(size=(2, 8, 8, 4)).astype("float32"), verbose=0).shape == (2, 3)
    with pytest.raises(ValueError, match="groups=16"):
        compression.to_low_rank(model, layers=["depthwise"], rank=2)



class _SubclassedDense(keras.layers.Dense):
    pass


def test_to_low_rank_names_the_kernel_layers_it_does_not_convert(rng):
    """Separable and depthwise convolutions (Xception, MobileNet) and subclasses of
    Dense are no class to_low_rank converts: a warning names each, they stay as they
    were (weights and outputs), the convertible layers around them convert."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 4))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="plain")(inputs)
    h = keras.layers.SeparableConv2D(16, 3, padding="same", name="separable")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(h)
    h = keras.layers.Conv2D(32, 1, activation="relu", name="pointwise")(h)
    h = _SubclassedDense(8, name="mine")(keras.layers.GlobalAveragePooling2D()(h))
    h = LowRankProjection(rank=2, name="lr")(h)  # low rank already: not named
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(h))
    with pytest.warns(LowRankWarning) as caught:
        low = compression.to_low_rank(model, rank=2)
    message = " ".join(str(w.message) for w in caught)
    for expected in (r"SeparableConv2D ×1 \(separable;", r"DepthwiseConv2D ×1 \(depthwise; one filter per channel",
                     r"_SubclassedDense ×1 \(mine;"):
        assert re.search(expected, message), (expected, message)
    assert "plain" not in message and "pointwise" not in message and "LowRankProjection" not in message
    assert [type(low.get_layer(n)).__name__ for n in ("plain", "separable", "depthwise", "pointwise", "mine")] == [
        "DynamicLowRankConv2D", "SeparableConv2D", "DepthwiseConv2D", "DynamicLowRankConv2D", "_SubclassedDense"]
    for name in ("separable", "depthwise", "mine"):
        for a, b in zip(low.get_layer(name).get_weights(), model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_to_low_rank_says_everything_in_one_warning(rng):
    """A kernel constraint dropped, a layer kept dense (its rank does not pay) and a
    layer it does not convert: one LowRankWarning, each said in it."""
    inputs = keras.Input((32,))
    h = keras.layers.Dense(32, kernel_constraint=keras.constraints.MaxNorm(3.0), name="constrained")(inputs)
    h = keras.layers.Dense(4, name="narrow")(h)  # rank 4 of 32×4: r(n_in + n_out) > n_in·n_out
    h = _SubclassedDense(16, name="mine")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(h))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        low = compression.to_low_rank(model, rank=4)
    said = [str(w.message) for w in caught if issubclass(w.category, LowRankWarning)]
    assert len(said) == 1, said
    for expected in ("dropped the kernel_constraint of ['constrained']", "left these layers dense", "narrow",
                     "_SubclassedDense ×1 (mine;"):
        assert expected in said[0], (expected, said[0])
    assert said[0].startswith("to_low_rank has 3 notes:")
    assert isinstance(low.get_layer("constrained"), DynamicLowRankDense)


def _train_briefly(model, x, y):
    from keras_lowrank.optimizers import DLRT

    model.compile(optimizer=DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)


def test_conv1d_models_convert_train_with_dlrt_and_export(rng, tmp_path):
    """MNIST-1D-style CNN: Conv1D layers convert (the causal one stays, named), match
    the model at full rank, train a DLRT epoch, and export to Keras-only Conv1D layers."""
    from keras_lowrank import DLRT, DynamicLowRankConv1D

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((40, 1)),
        keras.layers.Conv1D(16, 5, padding="same", activation="relu", name="c1"),
        keras.layers.Conv1D(32, 3, strides=2, padding="same", activation="relu", name="c2"),
        keras.layers.Conv1D(8, 2, padding="causal", name="causal"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, name="out"),
    ])
    x = rng.uniform(size=(64, 40, 1)).astype("float32")
    y = rng.integers(0, 10, size=64)
    # c1 (5×16) stays dense too: rank 4 does not pay
    with pytest.warns(LowRankWarning) as caught:  # one warning says both
        low = compression.to_low_rank(model, rank=4)
    (message,) = [str(w.message) for w in caught if issubclass(w.category, LowRankWarning)]
    assert "causal" in message and re.search(r"c1 \(rank 4", message), message
    assert [type(layer).__name__ for layer in low.layers[:3]] == ["Conv1D", "DynamicLowRankConv1D", "Conv1D"]
    layer = low.get_layer("c2")
    assert isinstance(layer, DynamicLowRankConv1D) and layer.rank == 4
    # the best rank-4 approximation of the trained (3·16) × 32 kernel, by numpy's SVD
    u, d, vt = np.linalg.svd(_np(model.get_layer("c2").kernel).reshape(48, 32).astype(np.float64))
    np.testing.assert_allclose(_np(layer.kernel).reshape(48, 32), (u[:, :4] * d[:4]) @ vt[:4], atol=1e-5)
    low.compile(DLRT(keras.optimizers.Adam(1e-3)), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    low.fit(x, y, epochs=1, batch_size=16, verbose=0)
    row = next(r for r in compression.compression_summary(low).rows if r["layer"] == "c2")
    r = row["rank"]
    assert (row["n_in"], row["n_out"]) == (3 * 16, 32) and row["low_rank_macs"] == 20 * r * (48 + 32)
    written = compression.export_compressed(low, str(tmp_path / "out"), formats="keras")
    plain = keras.saving.load_model(written["keras"])
    assert [type(part).__name__ for part in plain.get_layer("c2").layers] == ["Conv1D", "Conv1D"]
    np.testing.assert_allclose(_np(plain(x)), _np(low(x)), atol=1e-5)


def _attention_block(seed=0):
    """A transformer-style block from Keras layers: EinsumDense projections (query and
    output) and a Dense MLP on the tokens."""
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((6, 16))
    query = keras.layers.EinsumDense("abc,cde->abde", (6, 4, 8), bias_axes="de", name="query")(tokens)
    # a sequence length given in output_shape, as users write it (Keras then knows it)
    mixed = keras.layers.EinsumDense("abcd,cde->abe", (6, 16), bias_axes="e", name="attention_output")(query)
    hidden = keras.layers.Dense(32, activation="gelu", name="mlp")(mixed)
    pooled = keras.layers.GlobalAveragePooling1D()(hidden)
    return keras.Model(tokens, keras.layers.Dense(3, name="head")(pooled))


def test_einsum_dense_models_convert_train_with_dlrt_and_export(rng, tmp_path):
    from keras_lowrank import DLRT, DynamicLowRankEinsumDense

    model = _attention_block()
    x = rng.normal(size=(32, 6, 16)).astype("float32")
    y = rng.integers(0, 3, size=32)
    full = compression.to_low_rank(model, rank=7)  # 7 < break-even 16·32/48 of the query
    assert type(full.get_layer("query")) is DynamicLowRankEinsumDense
    low = compression.to_low_rank(model, rank=3)
    assert [type(low.get_layer(n)).__name__ for n in ("query", "attention_output", "mlp", "head")] == [
        "DynamicLowRankEinsumDense", "DynamicLowRankEinsumDense", "DynamicLowRankDense", "Dense"]
    # The model with each kernel, as a matrix, replaced by its best rank-3 approximation
    # (numpy's SVD) computes what the converted model computes.
    truncated = keras.models.clone_model(model)
    truncated.set_weights(model.get_weights())
    for name, rows in (("query", 16), ("attention_output", 32), ("mlp", 16)):
        kernel = _np(model.get_layer(name).kernel)
        u, d, vt = np.linalg.svd(kernel.reshape(rows, -1).astype(np.float64))
        best = ((u[:, :3] * d[:3]) @ vt[:3]).reshape(kernel.shape)
        np.testing.assert_allclose(_np(low.get_layer(name).kernel), best, atol=1e-5)
        truncated.get_layer(name).kernel.assign(best.astype("float32"))
    np.testing.assert_allclose(_np(low(x)), _np(truncated(x)), atol=1e-5)
    low.compile(DLRT(keras.optimizers.Adam(1e-3), steps_per_cycle=2),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    low.fit(x, y, epochs=1, batch_size=8, verbose=0)
    compression.truncate_ranks(low)
    row = next(r for r in compression.compression_summary(low).rows if r["layer"] == "query")
    assert (row["n_in"], row["n_out"]) == (16, 32)
    assert row["low_rank_macs"] == 6 * row["rank"] * 48 and row["dense_macs"] == 6 * 16 * 32
    written = compression.export_compressed(low, str(tmp_path / "out"), formats="keras")
    plain = keras.saving.load_model(written["keras"])
    assert [type(part).__name__ for part in plain.get_layer("query").layers] == ["EinsumDense", "EinsumDense"]
    np.testing.assert_allclose(_np(plain(x)), _np(low(x)), atol=1e-5)


def test_export_compressed_keras_file_is_small_and_reloads_exactly(rng, tmp_path):
    x = rng.uniform(size=(32, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=32)
    model = compression.to_low_rank(_cnn(), rank=3)
    _train_briefly(model, x, y)  # 2 steps: ranks differ from the stored maximum
    written = compression.export_compressed(model, str(tmp_path / "out"), formats=("keras",))
    reloaded = keras.models.load_model(written["keras"])
    np.testing.assert_allclose(_np(reloaded(x)), _np(model(x)), atol=1e-5)
    exported_params = sum(int(np.prod(w.shape)) for w in written["model"].weights)
    ranks = {l.name: l.rank for l in model.layers if isinstance(l, (DynamicLowRankDense, DynamicLowRankConv2D))}
    expected = sum(r * (l.n_in + l.n_out) for l in model.layers if l.name in ranks
                   for r in (ranks[l.name],))
    others = sum(int(np.prod(w.shape)) for l in model.layers if l.name not in ranks for w in l.weights)
    biases = sum(int(np.prod(l.bias.shape)) for l in model.layers if l.name in ranks)
    assert exported_params == expected + others + biases
    assert compression.compression_summary(model).total["model_exported_params"] == exported_params


def test_exported_file_shrinks_with_the_parameters(tmp_path):
    keras.utils.set_random_seed(0)
    mlp = keras.Sequential([keras.Input((256,)), keras.layers.Dense(512, activation="relu"),
                            keras.layers.Dense(512, activation="relu"), keras.layers.Dense(10)])
    mlp.save(tmp_path / "dense.keras")
    low = compression.to_low_rank(mlp, rank=16)
    written = compression.export_compressed(low, str(tmp_path / "out"), formats="keras")
    dense_bytes, low_bytes = (os.path.getsize(p) for p in (tmp_path / "dense.keras", written["keras"]))
    params = lambda m: sum(int(np.prod(w.shape)) for w in m.weights)  # noqa: E731
    assert low_bytes < dense_bytes * (params(written["model"]) / params(mlp)) * 1.5
    assert low_bytes < 0.15 * dense_bytes


@pytest.mark.parametrize("optimizer", ["dlrt", "adam"])
def test_export_of_a_compiled_model_keeps_compile_settings_but_no_optimizer_state(
        optimizer, rng, tmp_path):
    from keras_lowrank.optimizers import DLRT

    x = rng.uniform(size=(32, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=32)
    low = compression.to_low_rank(_cnn(), rank=3)
    adam = keras.optimizers.Adam(1e-2)
    low.compile(optimizer=DLRT(adam, steps_per_cycle=3) if optimizer == "dlrt" else adam,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    low.fit(x, y, batch_size=16, epochs=1, verbose=0)  # the optimizer has slots now
    written = compression.export_compressed(low, str(tmp_path / "out"), formats="keras")
    compact = written["model"]
    bare = compact.__class__.from_config(compact.get_config())  # same layers, never compiled
    bare.set_weights(compact.get_weights())
    bare.save(tmp_path / "bare.keras")
    # Adam's two zero slots per weight would make the file ~3× the bare one.
    assert os.path.getsize(written["keras"]) < 1.2 * os.path.getsize(tmp_path / "bare.keras")
    reloaded = keras.models.load_model(written["keras"])
    assert isinstance(reloaded.optimizer, keras.optimizers.Adam)  # the inner one, not DLRT
    assert reloaded.optimizer.learning_rate.numpy() == pytest.approx(1e-2)
    np.testing.assert_allclose(_np(reloaded(x)), _np(low(x)), atol=1e-5)
    reloaded.fit(x, y, epochs=1, verbose=0)  # compiled: ready to fine-tune with Keras alone


def _tol_rank(d, tol, min_rank=1):
    """The tolerance rule by hand: fewest r with ‖d[r:]‖ < tol·‖d‖."""
    tails = [np.linalg.norm(d[r:]) for r in range(len(d) + 1)]
    return max(min_rank, next(r for r, tail in enumerate(tails) if tail < tol * np.linalg.norm(d)))


def test_truncate_ranks_ends_an_unfinished_dlrt_cycle_before_export(rng, tmp_path):
    import warnings

    from keras_lowrank.optimizers import DLRT

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((20,)),
        DynamicLowRankDense(32, max_rank=16, rank=4, tol=0.3, activation="relu", name="low"),
        keras.layers.Dense(3, name="out"),
    ])
    model.compile(optimizer=DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = rng.normal(size=(64, 20)).astype("float32")
    y = rng.integers(0, 3, size=64)
    # A custom loop (train_on_batch: no end of fit, so the cycle is not finished
    # for us): 8 steps, inside the second cycle.
    for i in range(8):
        model.train_on_batch(x[8 * i:8 * i + 8], y[8 * i:8 * i + 8])
    layer = model.get_layer("low")
    assert layer.rank == 8  # augmented at step 5: min(max_rank, 2r)
    with pytest.warns(LowRankWarning, match="truncate_ranks"):
        compression.compressed_model(model)
    kernel = _np(layer.kernel)
    d = np.linalg.svd(kernel, compute_uv=False)
    expected = _tol_rank(d, 0.3)

    assert compression.truncate_ranks(model) == {"low": expected}
    u, sv, vt = np.linalg.svd(kernel)  # Eckart–Young: the best rank-r kernel
    np.testing.assert_allclose(_np(layer.kernel), (u[:, :expected] * sv[:expected]) @ vt[:expected],
                               atol=1e-5)
    assert int(_np(model.optimizer.cycle_step.value)) == 10  # the next step augments again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = compression.export_compressed(model, str(tmp_path / "out"), formats="keras")
    assert not [w for w in caught if "truncate_ranks" in str(w.message)]
    assert written["model"].get_layer("low").layers[0].kernel.shape == (20, expected)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # training goes on from there
    assert np.all(np.isfinite(_np(layer.kernel)))


_LOAD_WITHOUT_PACKAGE = """
import sys
sys.modules["keras_lowrank"] = None  # importing it would fail
import numpy as np
x = np.load(sys.argv[2])
import {module}
{load}
print(float(np.abs(out - np.load(sys.argv[3])).max()))
"""


def test_exported_savedmodel_and_keras_file_load_without_keras_lowrank(rng, tmp_path):
    pytest.importorskip("tensorflow")  # the SavedModel is loaded with plain TensorFlow
    x = rng.uniform(size=(32, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=32)
    model = compression.to_low_rank(_cnn(), rank=3)
    _train_briefly(model, x, y)
    written = compression.export_compressed(model, str(tmp_path / "out"), formats=("keras", "saved_model"))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", _np(model(x)))
    loaders = {
        "tensorflow": "m = tensorflow.saved_model.load(sys.argv[1]); out = m.serve(x).numpy()",
        "keras": "m = keras.models.load_model(sys.argv[1]); out = np.asarray(m(x))",
    }
    for module, path in (("tensorflow", written["saved_model"]), ("keras", written["keras"])):
        script = _LOAD_WITHOUT_PACKAGE.format(module=module, load=loaders[module])
        result = subprocess.run(
            [sys.executable, "-c", script, path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
            capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
            env={**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert float(result.stdout.strip().splitlines()[-1]) <= 1e-5


def test_export_formats_are_checked(tmp_path):
    with pytest.raises(ValueError, match="formats"):
        compression.export_compressed(compression.to_low_rank(_cnn(), rank=2), str(tmp_path), formats=("h5",))


@pytest.mark.parametrize("formats", [("onnx",), ("keras", "onnx")])
def test_onnx_export_runs_in_onnxruntime_smaller_and_equal(rng, tmp_path, formats):
    """Keras' ONNX export of the exact-rank model (on JAX written by TensorFlow from the
    .keras file, on torch from the model loaded from it), run in onnxruntime at another
    batch size than any seen; the dense model's ONNX file, written the same way, is larger."""
    onnxruntime = pytest.importorskip("onnxruntime")
    x = rng.uniform(size=(13, 8, 8, 1)).astype("float32")
    dense = _cnn()
    model = compression.to_low_rank(dense, rank=3)
    written = compression.export_compressed(model, str(tmp_path / "out"), formats=formats)
    assert sorted(f for f in os.listdir(tmp_path / "out") if not f.startswith(".")) == sorted(
        {"keras": "model.keras", "onnx": "model.onnx"}[f] for f in formats)
    session = onnxruntime.InferenceSession(written["onnx"])
    (name,) = [i.name for i in session.get_inputs()]
    (out,) = session.run(None, {name: x})
    expected = _np(model(x))
    np.testing.assert_allclose(out, expected, atol=1e-5 * max(1.0, np.abs(expected).max()))
    reference = compression.export_compressed(dense, str(tmp_path / "dense"), formats=formats)
    assert os.path.getsize(written["onnx"]) < os.path.getsize(reference["onnx"])


def test_onnx_export_without_its_packages_is_refused_before_any_work(tmp_path, monkeypatch):
    from keras_lowrank.compression import export

    found = export.importlib.util.find_spec
    missing = {"tensorflow": "tf2onnx", "jax": "tf2onnx", "torch": "onnxscript"}[keras.backend.backend()]
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name, *a: None if name == missing else found(
        name, *a))
    with pytest.raises(ValueError, match=rf"needs {missing} installed.*keras-lowrank\[onnx\].*Nothing was written"):
        compression.export_compressed(compression.to_low_rank(_cnn(), rank=2), str(tmp_path / "out"),
                                      formats=("keras", "onnx"))
    assert not (tmp_path / "out").exists()


# -- callbacks ------------------------------------------------------------------
def _factor_model():
    return keras.Sequential([
        keras.Input((16,)),
        DynamicLowRankDense(16, max_rank=8, rank=8, tol=0.2, activation="relu"),
        DynamicLowRankDense(4, max_rank=4, rank=4),
    ])


def test_rank_truncation_callback_with_a_plain_optimizer(rng):
    x = rng.normal(size=(64, 16)).astype("float32")
    y = rng.normal(size=(64, 4)).astype("float32")
    model = _factor_model()
    first = model.layers[0]
    q = np.linalg.qr(rng.normal(size=(16, 16)))[0].astype("float32")
    first.set_factors(q[:, :8], np.array([4, 3, 2, 1, 0.1, 0.05, 0.02, 0.01], "float32"), q[:, 8:])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                        callbacks=[callbacks.RankTruncation(), callbacks.LowRankMonitor()])
    u, s, v = first.factors()
    r = first.rank
    np.testing.assert_allclose(u.T @ u, np.eye(r), atol=1e-4)
    np.testing.assert_allclose(v.T @ v, np.eye(r), atol=1e-4)
    assert r == 3  # ‖(1, 0.1, …, 0.01)‖ ≈ 1.01 < 0.2·‖d‖ ≈ 1.10 < ‖(2, 1, …)‖ ≈ 2.24
    # the monitor logged ranks and the compression rate into History
    assert history.history[f"{first.name}/rank"][-1] == r
    assert history.history["compression_rate"][-1] == pytest.approx(
        compression.compression_summary(model).total["compression_rate"])
    assert np.isfinite(history.history[f"{first.name}/cond"][-1])


def test_spectral_conditioning_callback_caps_the_condition_number(rng):
    x = rng.normal(size=(64, 16)).astype("float32")
    y = rng.normal(size=(64, 4)).astype("float32")
    model = _factor_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0,
              callbacks=[callbacks.SpectralConditioning(kappa=1.2, frequency=2)])
    for layer in model.layers:
        assert callbacks.condition_number(layer) <= 1.2 + 1e-3


def _gradient_like_moments(rng, layer, optimizer):
    """Sets Adam's first moments of U, S, V to the gradients ∂L/∂U = G V Sᵀ,
    ∂L/∂S = Uᵀ G V, ∂L/∂V = Gᵀ U S of a weight gradient G (chain rule, numpy)."""
    from keras_lowrank._low_rank.optimizer_slots import optimizer_slots

    u, s, v = (ops.convert_to_numpy(t).astype("float64") for t in (layer.u, layer.s, layer.v))
    g = rng.normal(size=(u.shape[0], v.shape[0]))
    momenta = {}
    for variable, value in ((layer.u, g @ v @ s.T), (layer.s, u.T @ g @ v), (layer.v, g.T @ u @ s)):
        (slot,) = [t for t in optimizer_slots(optimizer, variable) if t.name.endswith("_momentum")]
        slot.assign(value.astype("float32"))
        momenta[variable.name] = slot
    return g, momenta


def test_rank_truncation_carries_the_moments_as_the_gradients_move(rng):
    layer = DynamicLowRankDense(12, max_rank=6, rank=6, tol=0.01)
    model = keras.Sequential([keras.Input((10,)), layer])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.optimizer.build(model.trainable_variables)
    # Factors as plain Adam leaves them: U, V not orthonormal, S not diagonal; rank 5
    # of which W uses 3 (truncating drops only zero singular values: W is kept).
    u, v, s = np.zeros((10, 6)), np.zeros((12, 6)), np.zeros((6, 6))
    u[:, :5] = rng.normal(size=(10, 5))
    v[:, :5] = rng.normal(size=(12, 5))
    s[:5, :5] = rng.normal(size=(5, 3)) @ rng.normal(size=(3, 5))
    for variable, value in zip((layer.u, layer.s, layer.v), (u, s, v)):
        variable.assign(value.astype("float32"))
    w = u @ s @ v.T
    g, momenta = _gradient_like_moments(rng, layer, model.optimizer)
    truncation = callbacks.RankTruncation()
    truncation.set_model(model)
    truncation.on_epoch_end(0, {})
    assert layer.rank == 3
    u1, s1, v1 = (ops.convert_to_numpy(t).astype("float64") for t in (layer.u, layer.s, layer.v))
    np.testing.assert_allclose(u1 @ s1 @ v1.T, w, atol=1e-4 * np.abs(w).max())
    # the carried moments are the gradients at the new factors (same W, same G)
    expected = {layer.u.name: g @ v1 @ s1.T, layer.s.name: u1.T @ g @ v1, layer.v.name: g.T @ u1 @ s1}
    for name, slot in momenta.items():
        want = expected[name]
        np.testing.assert_allclose(ops.convert_to_numpy(slot.value), want, atol=1e-3 * np.abs(want).max())
    # conditioning keeps the bases, and the optimizer keeps its slots
    before = {name: ops.convert_to_numpy(slot.value).copy() for name, slot in momenta.items()}
    conditioning = callbacks.SpectralConditioning(kappa=1.1)
    conditioning.set_model(model)
    conditioning.on_epoch_end(0, {})
    assert callbacks.condition_number(layer) <= 1.1 + 1e-3
    for name, slot in momenta.items():
        np.testing.assert_array_equal(ops.convert_to_numpy(slot.value), before[name])


def test_callbacks_refuse_to_truncate_non_finite_factors():
    model = _factor_model()
    model.layers[0].s.assign(np.full((8, 8), np.nan, "float32"))
    callback = callbacks.RankTruncation()
    callback.set_model(model)
    with pytest.raises(FloatingPointError, match="non-finite"):
        callback.on_epoch_end(0, {})
    with pytest.raises(ValueError, match="frequency"):
        callbacks.RankTruncation(frequency=0)
    with pytest.raises(ValueError, match="kappa"):
        callbacks.SpectralConditioning(kappa=0.5)


@pytest.mark.tf_only("TFLite export converts a TensorFlow SavedModel")
def test_tflite_export_runs_in_the_interpreter_and_matches(rng, tmp_path):
    import tensorflow as tf

    x = rng.uniform(size=(4, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=4)
    model = compression.to_low_rank(_cnn(), rank=3)
    _train_briefly(model, x, y)
    written = compression.export_compressed(model, str(tmp_path / "out"), formats=("tflite",))
    interpreter = tf.lite.Interpreter(model_path=written["tflite"])
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(out["index"]), _np(model(x)), atol=1e-5)


@pytest.mark.parametrize("kind", ["gaussian", "orthogonal", "rank 3", "zero"])
def test_leading_triplets_give_the_best_approximation_on_awkward_spectra(kind):
    """The factorisation `to_low_rank` and the layers start from, for a rank of a large
    matrix: whatever the spectrum (all singular values equal, fewer nonzero ones than the
    rank, none), orthonormal bases and the Eckart–Young error of numpy's full SVD."""
    from keras_lowrank._low_rank.svd import matrix_svd

    rng = np.random.default_rng(0)
    a = {"gaussian": lambda: rng.normal(size=(600, 520)),
         "orthogonal": lambda: np.linalg.qr(rng.normal(size=(512, 512)))[0],
         "rank 3": lambda: rng.normal(size=(600, 3)) @ rng.normal(size=(3, 520)),
         "zero": lambda: np.zeros((300, 320))}[kind]()
    u, d, v = matrix_svd(a, rank=8)
    u, d, v = u[:, :8], d[:8], v[:, :8]
    np.testing.assert_allclose(u.T @ u, np.eye(8), atol=1e-8)
    np.testing.assert_allclose(v.T @ v, np.eye(8), atol=1e-8)
    assert np.all(np.diff(d) <= 1e-12 * max(d[0], 1.0))  # decreasing
    exact = np.linalg.svd(a, compute_uv=False)
    np.testing.assert_allclose(d, exact[:8], atol=1e-10 * max(exact[0], 1.0))
    error = np.linalg.norm(a - (u * d) @ v.T)
    assert error <= np.sqrt(np.sum(exact[8:] ** 2)) + 1e-9 * max(exact[0], 1.0)


def test_converting_a_low_rank_model_again_says_its_layers_stay():
    """``to_low_rank(to_low_rank(m, rank=4), rank=2)`` returned rank-4 layers without a word."""
    keras.utils.set_random_seed(0)
    dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu", name="a"),
                              keras.layers.Dense(32, activation="relu", name="b"), keras.layers.Dense(3)])
    once = compression.to_low_rank(dense, rank=4)
    stay = r"2 layer\(s\) that are low rank already as they are \(a, b\).*truncate_ranks"
    with pytest.warns(LowRankWarning) as caught:  # one warning says both
        twice = compression.to_low_rank(once, rank=2)
    (message,) = [str(w.message) for w in caught if issubclass(w.category, LowRankWarning)]
    assert "converted no layer" in message and re.search(stay, message), message
    assert [getattr(layer, "rank", None) for layer in twice.layers] == [4, 4, None]
    x = np.random.default_rng(0).normal(size=(8, 16)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(twice(x)), keras.ops.convert_to_numpy(once(x)),
                               rtol=1e-5, atol=1e-5)


def _keras_file_error_without_package(path, x, expected, folder):
    """Largest |output − expected| of the .keras file at ``path`` on ``x``, loaded by a
    fresh Python in which importing keras_lowrank fails (as on a serving machine)."""
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", expected)
    script = _LOAD_WITHOUT_PACKAGE.format(
        module="keras", load="out = keras.ops.convert_to_numpy(keras.models.load_model(sys.argv[1])(x))")
    result = subprocess.run(
        [sys.executable, "-c", script, path, str(folder / "x.npy"), str(folder / "y.npy")],
        capture_output=True, text=True, cwd=str(folder), timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode,flatten", [("input", True), ("projection", True), ("projection", False)])
def test_lr_layer_exports_to_keras_layers_that_load_without_keras_lowrank(rng, tmp_path, mode, flatten):
    """A LowRankProjection becomes Keras' own layers in the export (an Identity, or a
    Dense computing Wᵀ(a + b) − b): the file loads without keras_lowrank, computes
    what the model computes, and the summary counts exactly its parameters."""
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = LowRankProjection(rank=2, output_mode=mode, flatten=flatten, name="lr")(h)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(24, activation="relu")(h)))
    lr = model.get_layer("lr")
    lr.kernel.assign(rng.normal(size=lr.kernel.shape).astype("float32"))
    lr.bias.assign(rng.normal(size=lr.bias.shape).astype("float32"))
    low = compression.to_low_rank(model, rank=2)
    x = rng.uniform(size=(5, 6, 6, 2)).astype("float32")
    written = compression.export_compressed(low, str(tmp_path / "out"), formats="keras")
    assert written["model"].count_params() == compression.compression_summary(low).total["model_exported_params"]
    scale = max(1.0, float(np.abs(_np(low(x))).max()))
    assert _keras_file_error_without_package(written["keras"], x, _np(low(x)), tmp_path) <= 1e-5 * scale


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantised_export_loads_with_plain_keras_smaller_and_close(rng, tmp_path, mode):
    """Keras' own quantisation of the exported factors: a smaller file that loads
    without keras_lowrank, outputs within the quantisation error of the float model."""
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])
    low = compression.to_low_rank(model, rank=16)
    x = rng.uniform(size=(32, 64)).astype("float32")
    plain = compression.export_compressed(low, str(tmp_path / "float"), formats="keras")
    quantised = compression.export_compressed(low, str(tmp_path / mode), formats="keras", quantize=mode)
    assert os.path.getsize(quantised["keras"]) < 0.6 * os.path.getsize(plain["keras"])
    scale = float(np.abs(_np(low(x))).max())
    error = _keras_file_error_without_package(quantised["keras"], x, _np(low(x)), tmp_path)
    assert 0 < error < {"int8": 0.05, "int4": 0.3}[mode] * scale  # quantised, yet close
    with pytest.raises(ValueError, match="`quantize`"):
        compression.export_compressed(low, str(tmp_path / "bad"), formats="keras", quantize="int2")


def test_to_low_rank_keeps_dense_where_the_rank_does_not_pay():
    model = dense_mlp()  # random kernels: full spectra, tol 0.05 keeps nearly all
    with pytest.warns(LowRankWarning, match=r"(?s)left these layers dense.*converted no layer"):  # one warning
        converted = compression.to_low_rank(model, tol=0.05)
    assert converted.count_params() <= model.count_params()
    summary = compression.compression_summary(converted)
    assert summary.total["model_exported_params"] <= summary.total["model_dense_params"]
    assert {r["layer"] for r in summary.rows if r["rank"] is None} >= {
        model.layers[0].name, model.layers[1].name}
    small = compression.to_low_rank(model, rank=4)  # pays: 4·(16+32) < 16·32
    summary = compression.compression_summary(small)
    assert summary.total["model_exported_params"] == compression.compressed_model(
        small).count_params() < model.count_params()

