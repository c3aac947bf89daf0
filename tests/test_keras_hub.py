"""keras-hub's transformers (tests/keras_hub_models.py: BERT, GPT-2, Llama, Gemma, ViT,
backbones and tasks) through the library's main job: convert every attention and
feed-forward kernel, compute what the truncated model computes, train with DLRT, export
files that reload in a fresh process and generate the same text."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops
from keras_hub_models import NAMES, inputs, main_output, make
from truncated import truncated_copy

from keras_lowrank import DLRT, LowRankWarning, compression
from keras_lowrank._keras_compat import layer_paths
from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankBase

pytestmark = pytest.mark.torch  # in the torch half too (make test-torch)

RANK = 8
KERNELS = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Conv2D)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _kernel_layers(model):
    return [(p, l) for p, l in layer_paths(model) if type(l) in KERNELS]


def _close(actual, expected, scale_tol=2e-5):
    """Equal up to float32 round-off grown through two transformer layers: an error
    below ``scale_tol`` of the output's largest magnitude (float32's ε is 1.2e-7;
    each of the ~20 matmuls, norms and softmaxes on the way adds a few ε·√n)."""
    actual, expected = (np.asarray(keras.ops.convert_to_numpy(t), "float64") for t in (actual, expected))
    assert actual.shape == expected.shape
    error = np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30)
    assert error < scale_tol, f"relative error {error:.2e}"


@pytest.fixture(scope="module")
def converted():
    """{name: (original, converted at rank 8, batch)} for the nine models."""
    found = {}
    for name in NAMES:
        model = make(name)
        found[name] = model, compression.to_low_rank(model, rank=RANK), inputs(model)
    return found


@pytest.mark.parametrize("name", NAMES)
def test_conversion_reaches_the_kernels_and_computes_the_truncated_model(name, converted):
    model, low, batch = converted[name]
    kernels = [p for p, _ in _kernel_layers(model)]
    done = [p for p, l in layer_paths(low) if isinstance(l, DynamicLowRankBase)]
    # every kernel converts but the task's own head (skip_last): ≥ 90 % of them
    assert set(done) <= set(kernels) and len(done) >= 0.9 * len(kernels), (done, kernels)
    assert type(low) is type(model)
    assert low.count_params() < model.count_params()
    truth = truncated_copy(model, done, RANK)
    _close(main_output(low(batch, training=False)), main_output(truth(batch, training=False)))
    # the original is untouched
    assert not [l for _, l in layer_paths(model) if isinstance(l, DynamicLowRankBase)]


@pytest.mark.parametrize("name", ["GPT2CausalLM", "LlamaCausalLM"])
def test_tied_embeddings_stay_tied(name, converted):
    model, low, _ = converted[name]
    embeddings = [l for _, l in layer_paths(low) if type(l).__name__ == "ReversibleEmbedding"]
    original = [l for _, l in layer_paths(model) if type(l).__name__ == "ReversibleEmbedding"]
    assert len(embeddings) == 1 and embeddings[0].tie_weights == original[0].tie_weights
    assert embeddings[0].tie_weights or name == "LlamaCausalLM"  # keras-hub unties Llama's
    # the dense model's parameters less exactly what the factorisation saved: no
    # embedding copied, nothing untied
    dense = dict(_kernel_layers(model))
    saved = sum(int(np.prod(dense[p].kernel.shape)) - sum(int(np.prod(w.shape)) for w in (n.u, n.s, n.v))
                for p, n in layer_paths(low) if isinstance(n, DynamicLowRankBase))
    assert low.count_params() == model.count_params() - saved


@pytest.mark.parametrize("name", ["BertTextClassifier", "GPT2CausalLM", "LlamaCausalLM", "ViTImageClassifier",
                                  "GemmaBackbone"])
def test_dlrt_fine_tunes_every_converted_layer(name, converted):
    model, _, batch = converted[name]
    low = compression.to_low_rank(model, rank=RANK)
    if name.endswith("Backbone"):  # a head on the sequence output to have a loss
        head = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(main_output(low.output)))
        trained = keras.Model(low.inputs, head)
        y = np.arange(len(next(iter(batch.values())))) % 2
    elif name.endswith("CausalLM"):
        trained, y = low, batch["token_ids"]
    else:
        trained, y = low, np.arange(len(next(iter(batch.values())))) % 3
    layers = [l for _, l in layer_paths(low) if isinstance(l, DynamicLowRankBase)]
    before = [_np(l.s) for l in layers]
    trained.compile(DLRT(keras.optimizers.Adam(1e-3), steps_per_cycle=2),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = trained.fit(batch, y, batch_size=len(y), epochs=6, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    moved = [not np.allclose(_np(l.s), b) for l, b in zip(layers, before)]
    assert all(moved), [l.name for l, m in zip(layers, moved) if not m]
    for layer in layers:  # the integrator's bases stay orthonormal
        u = layer.factors()[0]
        np.testing.assert_allclose(u.T @ u, np.eye(u.shape[1]), atol=1e-4)


def test_dlrt_warns_on_a_model_without_low_rank_layers(converted):
    batch = converted["GPT2CausalLM"][2]
    model = make("GPT2CausalLM")
    model.compile(DLRT(keras.optimizers.Adam(1e-3)), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.warns(LowRankWarning, match="without dynamic low-rank layers"):
        model.fit(batch, batch["token_ids"], epochs=1, verbose=0)


@pytest.fixture(scope="module")
def exported(converted, tmp_path_factory):
    """Each converted model exported (.keras, and a SavedModel on TensorFlow), then
    reloaded in one fresh process: {name: (written, its outputs there)}."""
    folder = tmp_path_factory.mktemp("hub")
    tensorflow = keras.backend.backend() == "tensorflow"
    written = {}
    for name, (_, low, batch) in converted.items():
        formats = ("keras", "saved_model") if tensorflow else ("keras",)
        written[name] = compression.export_compressed(low, str(folder / name), formats=formats)
        np.savez(folder / f"{name}.npz", **batch)
    script = f"""
import json, sys
import numpy as np
import keras
import keras_lowrank  # its SubstitutedModel rebuilds the low-rank sublayers
sys.path.insert(0, {os.path.dirname(__file__)!r})
from keras_hub_models import main_output
folder = {str(folder)!r}
found = {{}}
for name in {list(written)!r}:
    model = keras.saving.load_model(f"{{folder}}/{{name}}/model.keras")
    batch = dict(np.load(f"{{folder}}/{{name}}.npz"))
    np.save(f"{{folder}}/{{name}}.out.npy", keras.ops.convert_to_numpy(main_output(model(batch, training=False))))
    found[name] = [type(model).__name__, model.count_params()]
print(json.dumps(found))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "KERAS_BACKEND": keras.backend.backend()})
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads(run.stdout.strip().splitlines()[-1])
    return {name: (written[name], info[name], np.load(folder / f"{name}.out.npy"), folder) for name in written}


@pytest.mark.parametrize("name", NAMES)
def test_export_writes_a_smaller_model_that_reloads_in_a_fresh_process(name, converted, exported):
    model, low, batch = converted[name]
    written, (class_name, params), outputs, _ = exported[name]
    assert class_name == type(model).__name__
    # exported at the exact ranks: smaller than the converted model (which stores room
    # for DLRT's augmentation) and than the original
    assert params == written["model"].count_params() < low.count_params() < model.count_params()
    expected = _np(main_output(low(batch, training=False)))
    _close(_np(main_output(written["model"](batch, training=False))), expected)
    _close(outputs, expected)


@pytest.mark.parametrize("name", ["BertTextClassifier", "GPT2CausalLM", "LlamaCausalLM"])
def test_int8_factors_of_a_keras_hub_model_save_and_reload(name, converted, tmp_path):
    """Keras' int8 quantisation of the exported factor layers inside keras-hub's blocks:
    the backbone's config keys its quantisation map by each layer's path, so the factor
    layers of every block need their own (they once all had the block-relative one, and
    saving failed); the reloaded file computes what the quantised model computes."""
    _, low, batch = converted[name]
    if name == "BertTextClassifier":  # its head sits outside the backbone, whose config alone keeps quantisation
        with pytest.warns(LowRankWarning, match="task's own layers stay float32.*logits"):
            written = compression.export_compressed(low, str(tmp_path / "int8"), formats="keras", quantize="int8")
    else:
        written = compression.export_compressed(low, str(tmp_path / "int8"), formats="keras", quantize="int8")
    quantised = written["model"]
    paths = [layer.path for layer in quantised._flatten_layers() if layer.quantization_mode is not None]
    assert paths and len(paths) == len(set(paths))
    reloaded = keras.saving.load_model(written["keras"])
    assert sum(layer.quantization_mode == "int8" for layer in reloaded._flatten_layers()) == len(paths)
    _close(_np(main_output(reloaded(batch, training=False))), _np(main_output(quantised(batch, training=False))))


@pytest.mark.tf_only("SavedModel export")
def test_saved_models_load_with_tensorflow_alone(converted, exported):
    folder = next(iter(exported.values()))[3]
    script = f"""
import sys
for blocked in ("keras", "keras_hub", "keras_lowrank"):
    sys.modules[blocked] = None
import numpy as np
import tensorflow as tf
for name in {NAMES!r}:
    loaded = tf.saved_model.load(f"{folder}/{{name}}/saved_model")  # kept: it owns the variables
    batch = dict(np.load(f"{folder}/{{name}}.npz"))
    out = loaded.serve(*batch.values()) if len(batch) == 1 else loaded.serve(batch)
    out = out["sequence_output"] if isinstance(out, dict) else out
    np.save(f"{folder}/{{name}}.sm.npy", np.asarray(out))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in NAMES:
        _, low, batch = converted[name]
        _close(np.load(folder / f"{name}.sm.npy"), _np(main_output(low(batch, training=False))))


@pytest.mark.parametrize("name", ["GPT2CausalLM", "LlamaCausalLM"])
def test_generate_on_the_converted_and_the_exported_model_agree(name, converted, exported):
    _, low, batch = converted[name]
    compact = exported[name][0]["model"]
    prompt = {"token_ids": batch["token_ids"][:2].copy(), "padding_mask": np.zeros_like(batch["padding_mask"][:2])}
    prompt["padding_mask"][:, :5] = 1  # a 5-token prompt, 11 tokens to generate
    prompt["token_ids"][:, 5:] = 0
    for model in (low, compact):
        model.compile(sampler="greedy")
    ours, theirs = (m.generate(prompt, max_length=16, stop_token_ids=None) for m in (low, compact))
    np.testing.assert_array_equal(ours["token_ids"][:, :5], prompt["token_ids"][:, :5])
    np.testing.assert_array_equal(ours["token_ids"], theirs["token_ids"])
    assert ours["padding_mask"].all()


def test_analysis_reads_layers_of_a_task_with_dict_inputs(converted):
    """A keras-hub task takes a dict (token_ids, padding_mask, segment_ids); its backbone's
    layers are named by path. The last encoder layer's output is the backbone's
    sequence output: its spectrum and its linear CKA with the logits, computed here with
    numpy from the backbone and the model called directly, are what the tools return."""
    from keras_lowrank.analysis import cka_map, representation_ranks

    _, low, _ = converted["BertTextClassifier"]
    batch = inputs(low, n=24, seed=1)
    path = f"{low.backbone.name}/transformer_layer_1"
    tokens = _np(low.backbone(batch)["sequence_output"]).astype("float64")
    logits = _np(low(batch)).astype("float64")
    with pytest.raises(ValueError, match="flatten=False"):  # tokens of any number: no whole vector
        representation_ranks(low, batch, layers=[path], flatten=True)
    ranks = representation_ranks(low, batch, layers=[path])  # each token's 64 features
    rows = tokens.reshape(-1, tokens.shape[-1])
    expected = np.linalg.svd(rows - rows.mean(0), compute_uv=False)
    got = ranks["transformer_layer_1"].singular_values
    np.testing.assert_allclose(got[: len(expected)], expected, rtol=1e-3, atol=1e-3 * expected[0])
    found = cka_map(low, batch, layers=[path, "logits"], unbiased=False)
    flat = tokens.reshape(len(tokens), -1)
    flat = flat - flat.mean(0)
    y = logits - logits.mean(0)
    truth = np.linalg.norm(y.T @ flat) ** 2 / (np.linalg.norm(flat.T @ flat) * np.linalg.norm(y.T @ y))
    assert found.matrix[0, 1] == pytest.approx(truth, rel=1e-4)
    with pytest.raises(ValueError, match="custom layer"):
        representation_ranks(low, batch, layers=[path + "/feedforward_intermediate_dense"])


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX backend's SavedModel export")
def test_saved_model_export_that_keras_cannot_do_on_jax_is_refused_naming_the_way_round(converted, tmp_path):
    _, low, _ = converted["GPT2CausalLM"]
    with pytest.raises(ValueError, match=r"jax backend.*nothing was written.*KERAS_BACKEND=tensorflow"):
        compression.export_compressed(low, str(tmp_path / "out"), formats=("keras", "saved_model"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["BertTextClassifier", "GPT2CausalLM"])
def test_robustness_tools_refuse_token_inputs_and_point_to_embedding_noise(name, converted):
    from keras_lowrank.robustness import PGD, GaussianNoise, PerturbedModel, evaluate_robustness

    model, _, batch = converted[name]
    y = np.zeros(len(batch["token_ids"]), "int32")
    for attempt in (lambda: evaluate_robustness(model, (batch, y), noise_sigmas=[0.1]),
                    lambda: PerturbedModel(model, GaussianNoise(0.1)),
                    lambda: PGD(0.1)(model, batch, y),
                    lambda: GaussianNoise(0.1)(model, batch)):
        with pytest.raises(ValueError, match=r"token_ids.*embedding_noise"):
            attempt()


@pytest.mark.parametrize("name", ["BertTextClassifier", "GPT2CausalLM"])
def test_embedding_noise_adds_gaussian_noise_to_the_token_embeddings_only(name, converted):
    """The noisy copy's embedding outputs differ from the clean table's lookups by noise
    of the asked size (σ × the table's RMS entry, measured over 4·16·64 draws); the
    tied reverse projection (GPT-2's logits) is exact; σ = 0 is the model itself."""
    from keras_lowrank.robustness import NoisyEmbedding, embedding_noise

    model, _, batch = converted[name]
    table = _np(model.backbone.token_embedding.embeddings).astype("float64")
    rms = np.sqrt(np.mean(table**2))
    noisy = embedding_noise(model, 0.5, seed=3)
    layer = noisy.backbone.token_embedding
    assert isinstance(layer, NoisyEmbedding)
    drawn = _np(layer(batch["token_ids"])) - table[batch["token_ids"]]
    # the sample standard deviation of n normal draws is within 5/√(2n) of σ (5 s.d.)
    assert abs(drawn.std() / (0.5 * rms) - 1) < 5 / np.sqrt(2 * drawn.size)
    assert abs(drawn.mean()) < 5 * 0.5 * rms / np.sqrt(drawn.size)
    hidden = np.random.default_rng(0).normal(size=(2, 3, table.shape[1])).astype("float32")
    if name == "GPT2CausalLM":
        np.testing.assert_array_equal(_np(layer(hidden, reverse=True)),
                                      _np(model.backbone.token_embedding(hidden, reverse=True)))
    clean = embedding_noise(model, 0.0)
    _close(_np(clean(batch, training=False)), _np(model(batch, training=False)), 1e-6)
    assert not np.allclose(_np(noisy(batch, training=False)), _np(model(batch, training=False)))
    noisy.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    y = batch["token_ids"] if name == "GPT2CausalLM" else np.zeros(len(batch["token_ids"]), "int32")
    assert 0.0 <= noisy.evaluate(batch, y, verbose=0, return_dict=True)["accuracy"] <= 1.0


def test_a_model_of_one_integer_input_is_refused_too():
    """Token ids in one integer input (no dict): noise would be added to the ids
    silently; refused, naming the input and its dtype."""
    from keras_lowrank.robustness import GaussianNoise, evaluate_robustness

    tokens = keras.Input((6,), dtype="int32", name="ids")
    model = keras.Model(tokens, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(
        keras.layers.Embedding(20, 8)(tokens))))
    x = np.arange(24).reshape(4, 6) % 20
    with pytest.raises(ValueError, match=r"ids \(int32\).*embedding_noise"):
        evaluate_robustness(model, (x, np.zeros(4, "int32")), noise_sigmas=[0.1], clip=None)
    with pytest.raises(ValueError, match=r"ids \(int32\)"):
        GaussianNoise(0.1, clip=None)(model, x)
