"""Feeds the public entry points the inputs users get wrong, and counts outcomes.

Each case says what a demanding user expects: an error ("error": a ValueError,
FileExistsError or argparse exit naming what is wrong) or a result ("ok", with
an optional check of the value). Outcomes:

- clear: the expected error, its message naming what is wrong (a regex per case);
- obscure: any other exception (a backend traceback, a KeyError, ...);
- silent: no error where one was due, or a wrong value;
- correct: the expected result.

Usage: KERAS_BACKEND=jax python benchmarks/input_probe.py [--verbose]
Runs against whichever keras_lowrank is importable (e.g. an older checkout on
PYTHONPATH, to count before and after a change).
"""

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keras_lowrank import SelectivityRegularizedModel, callbacks, compression  # noqa: E402
from keras_lowrank.analysis import (  # noqa: E402
    cka_map,
    class_selectivity,
    class_selectivity_index,
    linear_cka,
    rbf_cka,
    representation_ranks,
)
from keras_lowrank.layers import DynamicLowRankDense, LowRankProjection  # noqa: E402
from keras_lowrank.optimizers import DLRT  # noqa: E402
from keras_lowrank.robustness import (  # noqa: E402
    APGD,
    FAB,
    FGSM,
    PGD,
    AutoAttack,
    GaussianNoise,
    PerturbedModel,
    Square,
    all_corruptions,
    evaluate_robustness,
)

CLEAR = (ValueError, FileExistsError, SystemExit)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
RNG = np.random.default_rng(0)
X = RNG.uniform(size=(48, 8)).astype("float32")
Y = RNG.integers(0, 3, 48)


def classifier(classes=3):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(classes)])


def relu_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    h = keras.layers.Dense(6, activation="relu", name="h")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(h))


def low_rank_mlp(max_rank=4, rank=2, optimizer=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)),
                              DynamicLowRankDense(16, max_rank=max_rank, rank=rank,
                                                  activation="relu", name="hidden"),
                              keras.layers.Dense(3)])
    model.compile(optimizer or DLRT(keras.optimizers.SGD(0.1), steps_per_cycle=4), LOSS)
    return model


def report(model, data, **kwargs):
    return evaluate_robustness(model, data, attacks=[FGSM(0.05)], large_eps=None, **kwargs)


def wrapper_eval(x, y, model=None, perturbation=None):
    wrapper = PerturbedModel(model or classifier(), perturbation or FGSM(0.05))
    wrapper.compile(loss=LOSS, metrics=["accuracy"])
    return wrapper.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)


def selectivity_fit(y):
    regularized = SelectivityRegularizedModel(relu_model(), alpha=1.0)
    regularized.compile("sgd", LOSS)
    return regularized.fit(X, y, batch_size=16, epochs=1, verbose=0).history


def adversarial_fit(**kwargs):
    wrapper = PerturbedModel(classifier(), FGSM(0.05))
    wrapper.compile("adam", LOSS, metrics=["accuracy"])
    return wrapper.fit(X, Y, batch_size=16, epochs=1, verbose=0, **kwargs).history


def fitted_s_norm(ema):
    model = low_rank_mlp(optimizer=DLRT(keras.optimizers.SGD(0.1, use_ema=ema), steps_per_cycle=3))
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    return float(np.linalg.norm(ops.convert_to_numpy(model.get_layer("hidden").s)))


def scaled_training():
    model = low_rank_mlp(optimizer=DLRT(keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1))))
    loss = model.fit(X, Y, batch_size=8, epochs=3, verbose=0).history["loss"]
    return loss[0] - loss[-1]


class Sub(keras.Model):
    def __init__(self):
        super().__init__()
        self.a = DynamicLowRankDense(8, max_rank=4)
        self.b = keras.layers.Dense(3)

    def call(self, x):
        return self.b(self.a(x))


def subclassed(what):
    model = Sub()
    if what == "call":
        return model(X[:2])
    if what == "predict":
        return model.predict(X, verbose=0)
    model.compile(DLRT(keras.optimizers.SGD(0.1)), LOSS)
    return model.fit(X, Y, verbose=0)


def export_into(non_empty, **kwargs):
    folder = tempfile.mkdtemp()
    if non_empty:
        open(os.path.join(folder, "mine.txt"), "w").close()
    model = compression.to_low_rank(keras.Sequential([
        keras.Input((16,)), keras.layers.Dense(32), keras.layers.Dense(3)]), rank=4)
    compression.export_compressed(model, folder, formats="keras", **kwargs)
    return sorted(os.listdir(folder))


def to_low_rank_params(tol):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
    return compression.to_low_rank(model, tol=tol).count_params() / model.count_params()


def cli(*args):
    done = subprocess.run([sys.executable, "-m", "keras_lowrank", "demo", *args],
                          capture_output=True, text=True, timeout=30)
    if done.returncode == 2:
        raise SystemExit(done.stderr.strip().splitlines()[-1])
    raise RuntimeError(f"exit {done.returncode}")


def cli_existing_output():
    folder = tempfile.mkdtemp()
    open(os.path.join(folder, "results.json"), "w").close()
    return cli("--output", folder, "--epochs", "1", "--seeds", "0", "--dlrt-datasets",
               "--analysis-datasets")


def report_alone():
    return evaluate_robustness(classifier(), (X, Y), attacks=FGSM(0.05), noise_sigmas=0.1, large_eps=None)


nan = float("nan")
inf = float("inf")
X_NAN = np.where(X > 0.99, nan, X)
clean_accuracy = float(np.mean(ops.convert_to_numpy(classifier()(X)).argmax(1) == Y))

CASES = [
    # (group, name, expectation, thunk, check)
    ("labels", "labels ≥ classes", "error:`y`", lambda: report(classifier(), (X, np.where(Y == 0, 3, Y))), None),
    ("labels", "labels < 0", "error:`y`", lambda: report(classifier(), (X, np.where(Y == 0, -1, Y))), None),
    ("labels", "labels 3.7 (fractional)", "error:`y`", lambda: report(classifier(), (X, Y + 0.7)), None),
    ("labels", "SelectivityRegularizedModel.fit labels ≥ classes", "error:`y`",
     lambda: selectivity_fit(np.where(Y == 0, 3, Y)), None),
    ("labels", "SelectivityRegularizedModel.fit labels 0.5", "error:`y`", lambda: selectivity_fit(Y + 0.5), None),
    ("values", "PerturbedModel.fit(validation_data=...)", "ok", lambda: adversarial_fit(validation_data=(X, Y)),
     lambda h: "val_accuracy" in h),
    ("labels", "PerturbedModel.evaluate labels ≥ classes", "error:`y`",
     lambda: wrapper_eval(X, np.where(Y == 0, 7, Y)), None),
    ("labels", "one-hot labels", "ok", lambda: report(classifier(), (X, np.eye(3)[Y])),
     lambda r: abs(r.clean_accuracy - clean_accuracy) < 1e-6),
    ("labels", "(x, y) numpy pair", "ok", lambda: report(classifier(), (X, Y)),
     lambda r: abs(r.clean_accuracy - clean_accuracy) < 1e-6),
    ("values", "NaN pixel", "error:`x`.*NaN", lambda: report(classifier(), (np.where(X > 0.99, nan, X), Y)), None),
    ("values", "NaN pixel, clip=None noise", "error:`x`.*NaN",
     lambda: wrapper_eval(np.where(X > 0.99, nan, X), Y, perturbation=GaussianNoise(0.1, clip=None)), None),
    ("values", "uint8 images", "error:`x`.*255|`x`.*range", lambda: report(classifier(), ((X * 255).astype("uint8"), Y)), None),
    ("values", "empty data", "error:`data`.*no examples|empty", lambda: report(classifier(), (X[:0], Y[:0])), None),
    ("values", "regression model (1 output)", "error:`model`.*classes",
     lambda: report(keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)]), (X, Y)), None),
    ("values", "sigmoid model (1 output)", "error:`model`.*classes",
     lambda: report(keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")]),
                    (X, Y % 2)), None),
    ("dlrt", "use_ema=True keeps S", "ok", lambda: fitted_s_norm(True),
     lambda norm: norm > 0.5 * fitted_s_norm(False)),
    ("dlrt", "DLRT(LossScaleOptimizer(...))", "error:LossScaleOptimizer", scaled_training, None),
    ("dlrt", "DLRT(None)", "error:`inner_optimizer`", lambda: DLRT(None), None),
    ("dlrt", "DLRT(SGD(loss_scale_factor=1024))", "error:loss_scale_factor.*LossScaleOptimizer",
     lambda: DLRT(keras.optimizers.SGD(0.1, loss_scale_factor=1024.0)), None),
    ("dlrt", "DLRT(Adam(gradient_accumulation_steps=2))", "error:gradient_accumulation_steps",
     lambda: DLRT(keras.optimizers.Adam(gradient_accumulation_steps=2)), None),
    ("dlrt", "subclassed model: call", "ok", lambda: subclassed("call"), None),
    ("dlrt", "subclassed model: predict", "ok", lambda: subclassed("predict"), None),
    ("dlrt", "subclassed model: fit", "ok", lambda: subclassed("fit"), None),
    ("files", "export into a non-empty folder", "error:overwrite", lambda: export_into(True), None),
    ("files", "export overwrite=True over the user's files", "error:did not write \\(mine.txt\\)",
     lambda: export_into(True, overwrite=True), None),
    ("files", "demo into a non-empty --output", "error:--overwrite", cli_existing_output, None),
    ("args", "--projection-weight nan", "error:projection-weight", lambda: cli("--projection-weight", "nan"), None),
    ("args", "--rank 0", "error:rank", lambda: cli("--rank", "0"), None),
    ("args", "DynamicLowRankDense(np.int64(8))", "ok", lambda: DynamicLowRankDense(np.int64(8)), None),
    ("args", "PGD(np.float32(.1), steps=np.int64(3))", "ok",
     lambda: PGD(np.float32(0.1), steps=np.int64(3)), None),
    ("args", "DLRT(steps_per_cycle=np.int64(5))", "ok", lambda: DLRT("sgd", steps_per_cycle=np.int64(5)), None),
    ("args", "LowRankProjection(rank=np.int64(4))", "ok", lambda: LowRankProjection(rank=np.int64(4)), None),
    ("args", "projection_weight=nan", "error:`projection_weight`", lambda: LowRankProjection(4, projection_weight=nan), None),
    ("args", "norm_weight=inf", "error:`norm_weight`", lambda: LowRankProjection(4, norm_weight=inf), None),
    ("args", "spectral_weight=nan", "error:`spectral_weight`", lambda: DynamicLowRankDense(8, spectral_weight=nan), None),
    ("args", "PGD eps=nan", "error:`eps`", lambda: PGD(nan), None),
    ("args", "GaussianNoise sigma=inf", "error:`sigma`", lambda: GaussianNoise(inf), None),
    ("args", "FGSM clip=(0, nan)", "error:`clip", lambda: FGSM(0.1, clip=(0.0, nan)), None),
    ("args", "SpectralConditioning kappa=nan", "error:`kappa`", lambda: callbacks.SpectralConditioning(nan), None),
    ("convert", "to_low_rank(tol=0.05) grows the model", "ok", lambda: to_low_rank_params(0.05),
     lambda ratio: ratio <= 1.0),
    ("tail", "cka_map(layers=[])", "error:`layers`", lambda: cka_map(relu_model(), X, layers=[]), None),
    ("tail", "representation_ranks NaN activations", "error:NaN|finite",
     lambda: representation_ranks(relu_model(), np.where(X > 0.99, nan, X)), None),
    ("tail", "representation_ranks one sample", "error:sample", lambda: representation_ranks(relu_model(), X[:1]), None),
    ("tail", "class_selectivity labels 3.7", "error:label",
     lambda: class_selectivity(relu_model(), (X, Y + 0.7), layers=["h"]), None),
    ("tail", "class_selectivity one class", "error:class",
     lambda: class_selectivity(relu_model(), (X, np.zeros_like(Y)), layers=["h"]), None),
    ("tail", "linear_cka with NaN", "error:`x`.*NaN", lambda: linear_cka(X_NAN, X), None),
    ("tail", "rbf_cka threshold=0", "error:`threshold`", lambda: rbf_cka(X, X, threshold=0.0), None),
    ("tail", "class_selectivity_index labels 0.5", "error:`labels`",
     lambda: class_selectivity_index(X, (Y % 2) + 0.5, 2), None),
    ("tail", "class_selectivity_index negative activations", "error:`activations`.*non-negative",
     lambda: class_selectivity_index(X - 0.5, Y % 2, 2), None),
    ("direct", "PGD(model, x with NaN)", "error:`x`.*NaN", lambda: PGD(0.05, steps=2)(classifier(), X_NAN, Y), None),
    ("direct", "FGSM(clip=None) on x with ±inf", "error:`x`.*infinite",
     lambda: FGSM(0.05, clip=None)(classifier(), np.where(X > 0.99, inf, X), Y), None),
    ("direct", "APGD(model, x with NaN)", "error:`x`.*NaN", lambda: APGD(0.05, steps=2)(classifier(), X_NAN, Y), None),
    ("direct", "AutoAttack.run on x with NaN", "error:`x`.*NaN",
     lambda: AutoAttack(0.05, steps=2, square_steps=2).run(classifier(5), X_NAN, Y), None),
    ("direct", "AutoAttack on a 3-class model", "error:at least 4 classes.*APGD",
     lambda: AutoAttack(0.05).run(classifier(), X, Y), None),
    ("direct", "one example without its batch axis", "error:`x`.*batch axis",
     lambda: PGD(0.05, steps=2)(classifier(), X[0], Y[:1]), None),
    ("report", "attacks=FGSM(...) alone", "ok", lambda: report_alone(), lambda r: len(r.rows) == 3),
    ("report", "(x, y, weights) triple", "error:`data`.*\\(x, y\\) pair",
     lambda: report(classifier(), (X, Y, np.ones(len(X)))), None),
    ("report", "seed=np.int64(3)", "ok", lambda: evaluate_robustness(classifier(), (X, Y), noise_sigmas=[0.1], seed=np.int64(3), large_eps=None),
     lambda r: len(r.rows) == 2),
    ("report", "large_eps=nan", "error:`large_eps`", lambda: evaluate_robustness(classifier(), (X, Y), large_eps=nan), None),
    ("report", "clip=(1, 0)", "error:`clip`", lambda: report(classifier(), (X, Y), clip=(1.0, 0.0)), None),
    ("report", "all_corruptions(image=False) on (n, features) data", "ok",
     lambda: evaluate_robustness(classifier(), (X, Y), corruptions=all_corruptions((3,), image=False), large_eps=None),
     lambda r: len(r.rows) == 6),
]


# -- issue 40's classes: never destroy what we did not write, never drop what was asked,
#    never trust a flag blindly, say when nothing happens, fail early, no obscure errors
class _SoftmaxByOps(keras.layers.Layer):
    def call(self, x):
        return ops.softmax(x)


def softmax_model(hidden=False):
    keras.utils.set_random_seed(0)
    head = [keras.layers.Dense(4), _SoftmaxByOps()] if hidden else [keras.layers.Dense(4, activation="softmax")]
    return keras.Sequential([keras.Input((8,))] + head)


def export_twice():
    folder = os.path.join(tempfile.mkdtemp(), "out")
    model = compression.to_low_rank(keras.Sequential([
        keras.Input((16,)), keras.layers.Dense(32), keras.layers.Dense(3)]), rank=4)
    compression.export_compressed(model, folder, formats="keras")
    compression.export_compressed(model, folder, formats="keras", overwrite=True)
    return sorted(os.listdir(folder))


def export_into_link():
    parent = tempfile.mkdtemp()
    os.mkdir(os.path.join(parent, "target"))
    os.symlink(os.path.join(parent, "target"), os.path.join(parent, "link"))
    model = compression.to_low_rank(keras.Sequential([
        keras.Input((16,)), keras.layers.Dense(32), keras.layers.Dense(3)]), rank=4)
    return compression.export_compressed(model, os.path.join(parent, "link"), formats="keras", overwrite=True)


def two_outputs():
    inputs = keras.Input((8,))
    return keras.Model(inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(3)(inputs)])


def warned(thunk, pattern):
    """Runs ``thunk``; raises SystemExit (a clear outcome) with the warning that
    matches ``pattern``, or returns the value when none does (silent)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = thunk()
    for warning in caught:
        if re.search(pattern, str(warning.message)):
            raise SystemExit(str(warning.message))
    return value


def dlrt_without_low_rank_layers():
    model = classifier()
    model.compile(DLRT(keras.optimizers.SGD(0.1)), LOSS)
    return model.fit(X, Y, verbose=0)


def callback_without_low_rank_layers():
    model = classifier()
    model.compile("sgd", LOSS)
    return model.fit(X, Y, verbose=0, callbacks=[callbacks.RankTruncation()])


def endless_report():
    class Endless(keras.utils.PyDataset):
        def __getitem__(self, index):
            return X[:16], Y[:16]

        @property
        def num_batches(self):
            return None

    return report(classifier(), Endless())


def report_then_predict():
    model = classifier()
    try:
        report(model, (X, Y), datasets={"bad": (X[:, :5], Y)})
    except ValueError as error:
        model.predict(X, verbose=0)  # the model must still work after the refusal
        raise error


def cli_output_under_a_file():
    folder = tempfile.mkdtemp()
    open(os.path.join(folder, "file"), "w").close()
    return cli("--output", os.path.join(folder, "file", "out"), "--epochs", "1")


def unbuilt_lr(method):
    layer = LowRankProjection(2)
    if method == "encode_before_build":
        return layer.encode(X)
    layer.build((None, 8))
    return layer.encode(X[:, :5]) if method == "encode" else layer.decode(X[:, :5])


def nan_kernel():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(3)])
    model.layers[0].kernel.assign(np.full((8, 16), np.nan, "float32"))
    return compression.to_low_rank(model, rank=2)


def nan_cka():
    model = relu_model()
    model.get_layer("h").kernel.assign(np.full((8, 6), np.nan, "float32"))
    return cka_map(model, X)


def damaged_keras_file():
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "model.keras")
    with open(path, "wb") as handle:
        handle.write(b"not a zip")
    done = subprocess.run([sys.executable, "-m", "keras_lowrank", "evaluate", path, "--data", "digits",
                           "--output", os.path.join(folder, "out")], capture_output=True, text=True, timeout=120)
    if done.returncode == 2:
        raise SystemExit(done.stderr.strip().splitlines()[-1])
    raise RuntimeError(f"exit {done.returncode}: {done.stderr[-200:]}")


CASES += [
    ("files", "export overwrite=True replaces an earlier export whole", "ok", export_twice,
     lambda names: names == [".keras-lowrank-manifest.json", "model.keras"]),
    ("files", "export into a symbolic link", "error:symbolic link", export_into_link, None),
    ("files", "CLI --output under a file", "error:is a file, not a folder", cli_output_under_a_file, None),
    ("flag", "FAB(from_logits=True) on a softmax model", "error:from_logits=True.*softmax",
     lambda: FAB(0.05, steps=3, from_logits=True)(softmax_model(), X, Y), None),
    ("flag", "PGD(from_logits=True) on a softmax by ops", "error:from_logits=True.*probabilities",
     lambda: PGD(0.05, steps=2, from_logits=True)(softmax_model(hidden=True), X, Y), None),
    ("flag", "APGD(from_logits=False) on logits", "error:from_logits=False",
     lambda: APGD(0.05, steps=3, from_logits=False)(classifier(), X, Y), None),
    ("flag", "report(from_logits=True) on a softmax model", "error:from_logits=True",
     lambda: report(softmax_model(), (X, Y), from_logits=True), None),
    ("asked", "Square(targeted=True)", "error:targeted=True", lambda: Square(0.05, targeted=True), None),
    ("asked", "FAB(targeted=True)", "error:targeted=True", lambda: FAB(0.05, targeted=True), None),
    ("asked", "AutoAttack(targeted=True)", "error:targeted=True", lambda: AutoAttack(0.05, targeted=True), None),
    ("gradient", "PGD on a PerturbedModel", "error:PerturbedModel.*Square",
     lambda: PGD(0.05, steps=2)(PerturbedModel(classifier(), GaussianNoise(0.1)), X, Y), None),
    ("gradient", "report of a PerturbedModel", "error:PerturbedModel",
     lambda: report(PerturbedModel(classifier(), GaussianNoise(0.1)), (X, Y)), None),
    ("nothing", "to_low_rank converting nothing", "error:converted no layer",
     lambda: warned(lambda: compression.to_low_rank(classifier(), rank=2), "converted no layer"), None),
    ("nothing", "DLRT on a model without low-rank layers", "error:DLRT was given a model without",
     lambda: warned(dlrt_without_low_rank_layers, "DLRT was given"), None),
    ("nothing", "RankTruncation on a model without low-rank layers", "error:RankTruncation acts on",
     lambda: warned(callback_without_low_rank_layers, "acts on dynamic low-rank"), None),
    ("nothing", "report of an endless dataset", "error:endless", endless_report, None),
    ("late", "report with a dataset of another shape, then predict", "error:datasets\\['bad'\\]",
     report_then_predict, None),
    ("obscure", "two-output model attacked", "error:2 outputs", lambda: FGSM(0.05)(two_outputs(), X, Y), None),
    ("obscure", "two-output model reported", "error:2 outputs", lambda: report(two_outputs(), (X, Y)), None),
    ("obscure", "string labels", "error:dtype <U", lambda: report(classifier(), (X, Y.astype(str))), None),
    ("obscure", "one-hot labels of the wrong width", "error:one-hot labels of width 5",
     lambda: report(classifier(), (X, np.eye(5)[Y])), None),
    ("obscure", "Python lists in (x, y)", "ok", lambda: report(classifier(), (X.tolist(), Y.tolist())),
     lambda r: abs(r.clean_accuracy - clean_accuracy) < 1e-6),
    ("obscure", "(x, None)", "error:\\(x, None\\)", lambda: report(classifier(), (X, None)), None),
    ("obscure", "seed=-1", "error:`seed`", lambda: PGD(0.05, seed=-1), None),
    ("obscure", "LowRankProjection.encode before build", "error:not built", lambda: unbuilt_lr("encode_before_build"),
     None),
    ("obscure", "LowRankProjection.encode at the wrong width", "error:built for 8 features", lambda: unbuilt_lr("encode"),
     None),
    ("obscure", "LowRankProjection.decode at the wrong width", "error:coefficients of shape",
     lambda: unbuilt_lr("decode"), None),
    ("obscure", "to_low_rank of an unbuilt model", "error:not built",
     lambda: compression.to_low_rank(keras.Sequential([keras.layers.Dense(8), keras.layers.Dense(3)]), rank=2), None),
    ("obscure", "to_low_rank of a NaN kernel", "error:NaN or ±inf in its kernel", nan_kernel, None),
    ("obscure", "cka_map of a NaN layer", "error:NaN or ±inf", nan_cka, None),
    ("obscure", "CLI on a damaged .keras file", "error:not a readable .keras file", damaged_keras_file, None),
]

if keras.backend.backend() == "tensorflow":
    from keras_lowrank import data

    CASES += [
        ("tail", "data.load(batch_size=True)", "error:`batch_size`", lambda: data.load("digits", batch_size=True), None),
        ("tail", "data.load(shuffle='no')", "error:`shuffle`", lambda: data.load("digits", "test", shuffle="no"), None),
        ("files", "export formats=('tflite',) writes only the .tflite", "ok", lambda: tflite_export()[0],
         lambda names: names == [".keras-lowrank-manifest.json", "model.tflite"]),
        ("gradient", "PGD on a TFLite file", "error:TFLite.*Square", lambda: PGD(0.05, steps=2)(tflite_export()[1], XT, Y), None),
        ("gradient", "AutoAttack on a TFLite file", "error:TFLite",
         lambda: AutoAttack(0.05, steps=2, square_steps=2).run(tflite_export()[1], XT, Y), None),
    ]


XT = RNG.uniform(size=(48, 16)).astype("float32")


def tflite_export():
    from keras_lowrank.robustness.exported import load_exported

    folder = os.path.join(tempfile.mkdtemp(), "out")
    model = compression.to_low_rank(keras.Sequential([
        keras.Input((16,)), keras.layers.Dense(32), keras.layers.Dense(4)]), rank=4)
    written = compression.export_compressed(model, folder, formats="tflite")
    return sorted(os.listdir(folder)), load_exported(written["tflite"])


class Hang(Exception):
    pass


def _hang(signum, frame):
    raise Hang


def run_case(expectation, thunk, check):
    """``expectation``: "ok", or "error:<regex>" that a clear message matches. A case
    still running after 120 s is a hang (counted silent: the user waits forever)."""
    wanted = expectation.partition(":")[2]
    signal.signal(signal.SIGALRM, _hang)
    signal.alarm(120)
    try:
        value = thunk()
    except Hang:
        return "silent", "hang: still running after 120 s"
    except CLEAR as error:
        if wanted and re.search(wanted, str(error), re.S):
            return "clear", str(error)
        return "obscure", f"{type(error).__name__}: {error}"  # wrong message, or valid input refused
    except subprocess.TimeoutExpired:
        if wanted:  # the demo started training with the bad argument
            return "silent", "accepted: still running after 30 s"
        return "obscure", "timed out"
    except Exception as error:  # noqa: BLE001
        return "obscure", f"{type(error).__name__}: {str(error)[:160]}"
    finally:
        signal.alarm(0)
    if wanted:
        return "silent", f"returned {str(value)[:80]}"
    if check is not None and not check(value):
        return "silent", f"wrong result {str(value)[:80]}"
    return "correct", ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    counts = collections.Counter()
    for group, name, expectation, thunk, check in CASES:
        outcome, detail = run_case(expectation, thunk, check)
        counts[outcome] += 1
        if args.verbose or outcome in ("obscure", "silent"):
            print(f"{outcome:8s} [{group}] {name}: {detail.splitlines()[0][:140] if detail else ''}")
    print(f"backend {keras.backend.backend()}: {len(CASES)} cases: "
          + ", ".join(f"{k} {counts[k]}" for k in ("clear", "correct", "obscure", "silent")))


if __name__ == "__main__":
    main()
