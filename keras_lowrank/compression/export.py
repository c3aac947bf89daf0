"""``compressed_model`` / ``export_compressed``: the model rebuilt at the exact ranks
from Keras' own layers (Dense(r) → Dense(units); ConvND(r) → 1×1 ConvND; two
EinsumDense; a LowRankProjection as an Identity or a Dense), so the ``.keras`` file and
the SavedModel really are small and load without keras_lowrank."""

import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import keras
from keras import ops

from keras_lowrank._files import check_output_folder, staged_folder
from keras_lowrank._keras_compat import all_sublayers, build_input_shape, layer_paths
from keras_lowrank._warning import LowRankWarning
from keras_lowrank.compression._common import _check_model, _unfinished_cycle
from keras_lowrank.compression._surgery import copy_model, save_model, swap
from keras_lowrank.compression.forms import export_forms, keras_form
from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankBase
from keras_lowrank.layers.low_rank_projection import LowRankProjection

FORMATS = ("keras", "saved_model", "tflite", "onnx")
# What Keras' ONNX export needs on the backend that writes the file (on JAX, TensorFlow
# writes it in a child process: Keras' JAX route needs jax2onnx, not on the package index
# for our pins)
_ONNX_NEEDS = {"tensorflow": ("tf2onnx", "onnx"), "torch": ("onnx", "onnxscript")}

__all__ = ["compressed_model", "export_compressed"]


def compressed_model(model, prefer="size", data=None):
    """The model rebuilt at exact ranks from Keras' built-in layers: each dynamic
    low-rank layer, wherever it sits (nested models, custom layers, keras-hub's
    blocks), becomes a two-layer Sequential (x U_r, then (S_r V_rᵀ) + b with the
    activation) or, where that is larger (a rank at or above the break-even
    n_in·n_out / (n_in + n_out)) or, with ``prefer="speed"``, measured slower, the
    layer's Keras class with the kernel multiplied back (``forms``); so nothing of
    keras_lowrank is needed to run it. The model's class stays (a keras-hub
    ``CausalLM`` still generates).

    Args:
        model: a Keras model with dynamic low-rank layers (a copy is rebuilt; ``model``
            is unchanged).
        prefer: ``"size"`` (each layer in the form with fewer weights), ``"speed"`` (in
            the form measured faster on this backend and device, ``forms.export_forms``;
            run it where the model will run) or a mapping {layer path: "factors" or
            "dense"} for every low-rank layer.
        data: for ``prefer="speed"``, inputs of the model whose first batch the layers
            are timed on (needed for inputs of unknown length, e.g. token sequences;
            its batch size is the one timed); else random inputs, batch 32.

    Returns:
        a new Keras model of built-in layers, computing what ``model`` computes.

    Examples:

        >>> from keras_lowrank.compression import compression_summary, to_low_rank
        >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(32, activation="relu"),
        ...                           keras.layers.Dense(32), keras.layers.Dense(3)])
        >>> small = to_low_rank(model, rank=4)
        >>> plain = compressed_model(small)
        >>> plain.count_params() == compression_summary(small).total["model_exported_params"]
        True
    """
    _check_model(model)
    _warn_unfinished(model)
    forms, _ = export_forms(model, prefer, data)
    return _rebuilt(model, forms)


def _warn_unfinished(model):
    unfinished = _unfinished_cycle(model)
    if unfinished is not None:
        warnings.warn(
            f"The DLRT optimizer stopped at step {unfinished[0] % unfinished[1]} of a "
            f"{unfinished[1]}-step cycle: the layers hold augmented bases (up to twice "
            "their rank). Call keras_lowrank.compression.truncate_ranks(model) first to "
            "export at the truncated ranks.", stacklevel=3, category=LowRankWarning)


def _rebuilt(model, forms):
    """``model`` rebuilt with each low-rank layer in ``forms[path]``."""
    targets = [(path, layer) for path, layer in layer_paths(model)
               if isinstance(layer, (DynamicLowRankBase, LowRankProjection))]
    compact, twins = copy_model(model, "compressed_model", targets)
    for path, layer in targets:
        twin = twins[id(layer)]
        swap(compact, path, twin, _as_keras_layers(twin, path, forms.get(path)))
    if model.compiled:
        # Keep the compile settings (a fresh optimizer) but not the DLRT wrapper,
        # which only training needs and which would make the file unloadable
        # without keras_lowrank. compile() rather than compile_from_config(),
        # which would build the optimizer: its zero slots would triple the saved file.
        config = model.get_compile_config()
        inner = getattr(model.optimizer, "inner_optimizer", None)
        if inner is not None:
            config["optimizer"] = keras.optimizers.serialize(inner.__class__.from_config(inner.get_config()))
        compact.compile(**keras.saving.deserialize_keras_object(config))
    return compact


def _as_keras_layers(layer, path, form):
    """Keras' own layers computing what low-rank ``layer`` (at ``path`` in the model)
    computes at inference, built and set: in ``form`` (``forms.keras_form``), or for a
    LowRankProjection an Identity / a Dense. Built under the name scope of ``path``'s
    parent, so that each sub-layer's Keras path is unique in the model (keras-hub's
    quantisation map is keyed by it)."""
    shape = tuple(build_input_shape(layer))
    if isinstance(layer, LowRankProjection):
        new = _projection_as_keras(layer)
        with _under_parent_of(path):
            new.build(shape)
        plan = _projection_plan(layer)
        if plan is not None:
            next(l for l in new.layers if isinstance(l, keras.layers.Dense)).set_weights(list(plan))
        return new
    with _under_parent_of(path):
        return keras_form(layer, form, shape)


@contextlib.contextmanager
def _under_parent_of(path):
    """Keras name scopes for each parent in ``path`` ("a/b/layer": a, then b), opened
    here and closed on leaving, so that a layer built inside gets the path below them."""
    with contextlib.ExitStack() as scopes:
        for name in path.split("/")[:-1]:
            scopes.enter_context(keras.name_scope(name))
        yield


def _projection_plan(layer):
    """A LowRankProjection at inference as the weights of one Dense layer:
    Wᵀ(a + b) − b = a W + (b W − b) ("projection" mode); None for the default
    "input" mode, whose output is its input."""
    if layer.output_mode == "input":
        return None
    w = ops.convert_to_numpy(layer.projection_matrix).astype("float64")
    b = ops.convert_to_numpy(layer.bias).astype("float64")
    return w.astype("float32"), (b @ w - b).astype("float32")


def _projection_as_keras(layer):
    """Keras' own layers computing what ``layer`` computes at inference: an
    Identity in "input" mode (its losses act in training only), else a Dense on
    the features (flattened and reshaped back when ``flatten`` spans several axes)."""
    if layer.output_mode == "input":
        return keras.layers.Identity(name=layer.name)
    dense = keras.layers.Dense(layer.features, name=f"{layer.name}_w")
    shape = tuple(build_input_shape(layer))[1:]
    if not layer.flatten or len(shape) == 1:
        return keras.Sequential([dense], name=layer.name)
    return keras.Sequential([keras.layers.Flatten(), dense, keras.layers.Reshape(shape)], name=layer.name)


def export_compressed(model, path, formats=("keras", "saved_model"), overwrite=False, quantize=None,
                      prefer="size", data=None):
    """Writes the exact-rank model (``compressed_model``) under directory ``path``:
    ``model.keras`` and/or ``saved_model/`` (``Model.export``, loadable with plain
    ``tf.saved_model.load``) and/or ``model.tflite``. The SavedModel and TFLite
    formats need TensorFlow installed (on JAX, Keras' SavedModel export cannot trace
    some models, keras-hub's text models among them: refused before anything is written;
    on torch they are written by TensorFlow from the ``.keras`` file in a child process).
    ``model.keras`` loads with Keras alone (and keras_hub for its models) where the
    low-rank layers are the model's own layers; where they sit inside custom layers
    (keras-hub's attention and feed-forward blocks), which Keras rebuilds from their own
    code, it loads with keras_lowrank imported, which puts the factor layers back.

    The files are written to a temporary folder that replaces ``path`` only when
    all are written: an interrupted export leaves ``path`` as it was. An
    existing non-empty ``path`` raises FileExistsError unless ``overwrite=True``,
    which replaces the folder whole (no stale files of an earlier export stay) —
    only a folder that an earlier export or command wrote (its manifest lists
    everything in it): a folder holding other files, e.g. your project's, is
    refused with their names, and a symbolic link is never followed or replaced.

    Args:
        model: a Keras model with dynamic low-rank layers (at any depth).
        path: the output folder (new or empty unless ``overwrite``).
        formats: any of ``"keras"``, ``"saved_model"``, ``"tflite"``, ``"onnx"`` (Keras'
            ``Model.export(format="onnx")``, dynamic batch: on TensorFlow through tf2onnx, on
            torch through ``torch.onnx``, on JAX by TensorFlow in a child process; the
            ``onnx`` extra installs what each needs).
        overwrite: replace a non-empty ``path`` that an earlier export wrote.
        quantize: None, ``"int8"`` or ``"int4"``: the exported factor layers (and every
            other Dense / EinsumDense) quantised by Keras' own ``Model.quantize`` — weights
            stored as integers with per-channel scales, files that load with plain Keras.
            Keras quantises Dense and EinsumDense only: convolutions stay float32, named
            in a warning.
        prefer: the form of each low-rank layer, as in ``compressed_model``: ``"size"``,
            ``"speed"`` (timed here: export on the device and backend the model will run
            on) or a mapping {layer path: "factors" or "dense"}.
        data: the inputs ``prefer="speed"`` times the layers on, as in ``compressed_model``.

    Returns:
        {"model": the compressed model, "forms": {layer path: the form written},
        "timings": ``forms.time_export_forms``'s measurements behind ``prefer="speed"``
        (else None), format: path of the file written,
        "keras_needs_keras_lowrank": whether loading model.keras needs keras_lowrank
        imported — True where low-rank layers sit inside custom layers or a model class
        with its own config (keras-hub's), which Keras rebuilds from their code}.

    Examples:

        >>> import tempfile
        >>> from keras_lowrank.compression import compression_summary, to_low_rank
        >>> model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(32, activation="relu"),
        ...                           keras.layers.Dense(32), keras.layers.Dense(3)])
        >>> small = to_low_rank(model, rank=4)
        >>> folder = tempfile.mkdtemp()
        >>> written = export_compressed(small, folder + "/out", formats="keras")
        >>> os.path.basename(written["keras"])
        'model.keras'
    """
    if isinstance(formats, str):
        formats = (formats,)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"`formats` must be a non-empty subset of {FORMATS}, got {formats!r}.")
    check_output_folder(path, overwrite, "path")
    if quantize not in (None, "int8", "int4"):
        raise ValueError(f'`quantize` must be None, "int8" or "int4", got {quantize!r}.')
    through_tensorflow = keras.backend.backend() == "torch" and ("saved_model" in formats or "tflite" in formats)
    if through_tensorflow and importlib.util.find_spec("tensorflow") is None:
        raise ValueError(
            "export_compressed(formats=...): on the torch backend the SavedModel and TFLite files are "
            "written by TensorFlow, from the .keras file in a child process, and TensorFlow is not "
            "installed. Install it (pip install tensorflow-cpu) or export formats=('keras',) alone.")
    if "onnx" in formats:
        check_onnx_export(model)
    _check_model(model)
    _warn_unfinished(model)
    forms, timings = export_forms(model, prefer, data)
    compact = _rebuilt(model, forms)
    if quantize is not None:
        _quantize(compact, quantize)
    written = {"model": compact, "forms": forms, "timings": timings}
    names = {"keras": "model.keras", "saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}
    with staged_folder(path, overwrite, "path") as staging:
        if "keras" in formats:
            written["keras_needs_keras_lowrank"] = save_model(compact, os.path.join(staging, names["keras"]))
        # TFLite converts from a SavedModel: one asked for is written in place, else in a
        # scratch folder removed after (formats=("tflite",) writes model.tflite alone)
        # (a .keras file not asked for is written there too where a child process reads it:
        # TensorFlow's SavedModel on torch, the ONNX file on JAX — see write_onnx)
        onnx_from_file = "onnx" in formats and keras.backend.backend() == "jax"
        needs_scratch = "saved_model" not in formats or (
            "keras" not in formats and (through_tensorflow or onnx_from_file))
        scratch = tempfile.mkdtemp(prefix="klr-saved-model-") if needs_scratch else None
        saved = os.path.join(staging if "saved_model" in formats else scratch, names["saved_model"])
        tflite = os.path.join(staging, names["tflite"]) if "tflite" in formats else None
        try:
            keras_file = os.path.join(staging, names["keras"])
            if "keras" not in formats and (through_tensorflow or onnx_from_file):
                keras_file = os.path.join(scratch, names["keras"])
                save_model(compact, keras_file)
            if "saved_model" in formats or "tflite" in formats:
                write_tensorflow_files(compact, keras_file, saved, tflite)
            if "onnx" in formats:
                write_onnx(compact, keras_file, os.path.join(staging, names["onnx"]))
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
    for kind in FORMATS:
        if os.path.exists(os.path.join(path, names[kind])):
            written[kind] = os.path.join(path, names[kind])
    return written


def write_tensorflow_files(model, keras_file, saved, tflite=None):
    """The SavedModel at ``saved`` (and the TFLite file at ``tflite``) of ``model``, whose
    ``.keras`` file is ``keras_file``: by Keras in this process, or on torch by Keras on
    TensorFlow in a child process that reads ``keras_file``."""
    if keras.backend.backend() == "torch":
        export_in_tensorflow(keras_file, saved, tflite)
        return
    _saved_model(model, saved)
    if tflite is not None:
        _tflite(saved, tflite)


def check_onnx_export(model):
    """Refuses, before any work, an ONNX export this installation cannot write: the
    packages Keras' export needs on the backend that writes the file, and a model with
    declared inputs (Keras exports the signature of ``model.input``)."""
    backend = keras.backend.backend()
    writer = "tensorflow" if backend == "jax" else backend
    if writer not in _ONNX_NEEDS:
        raise ValueError(f"ONNX export supports the tensorflow, jax and torch backends, not {backend!r}.")
    needed = (("tensorflow",) if writer != backend else ()) + _ONNX_NEEDS[writer]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        where = "" if writer == backend else " (on JAX the file is written by TensorFlow, in a child process)"
        raise ValueError(
            f"formats=('onnx',) needs {', '.join(missing)} installed on the {backend} backend{where}: "
            "pip install 'keras-lowrank[onnx]'. Nothing was written.")
    if _input_structure(model) is None:
        raise ValueError("ONNX export needs a model with declared inputs (a functional or Sequential "
                         "model built on keras.Input): Keras exports the signature of model.input. "
                         "Nothing was written.")


def _input_structure(model):
    """``model.input`` (a KerasTensor, or their list or dict), or None where the model
    declares none; a loaded Sequential has ``inputs`` but no ``input``."""
    try:
        return keras.tree.map_structure(lambda t: t, model.input)  # plain lists and dicts
    except (AttributeError, ValueError):
        inputs = getattr(model, "inputs", None)
        return (inputs[0] if len(inputs) == 1 else list(inputs)) if inputs else None


def write_onnx(model, keras_file, path):
    """``model`` as ONNX at ``path`` by Keras' own export (a dynamic batch axis), on this
    backend, or on JAX by Keras on TensorFlow in a child process reading ``keras_file``."""
    if keras.backend.backend() == "jax":
        _in_child_process("tensorflow", _ONNX_SCRIPT, [keras_file, path], "the ONNX file")
        return
    _onnx(model, path)


def _onnx(model, path):
    signature = [_input_structure(model)]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # torch.onnx and tf2onnx report their progress on stdout and in warnings
        warnings.simplefilter("ignore")
        try:
            model.export(path, format="onnx", input_signature=signature, verbose=False)
        except Exception as error:  # what tf2onnx or torch.onnx raise
            raise ValueError(
                f"Keras' ONNX export of this model failed on the {keras.backend.backend()} backend "
                f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}); "
                "nothing was written. Export the other formats without 'onnx'.") from error


_ONNX_SCRIPT = """
import sys
import keras
import keras_lowrank  # noqa: F401  (puts factor layers inside custom layers back)
from keras_lowrank.compression.export import _onnx
_onnx(keras.saving.load_model(sys.argv[1], compile=False), sys.argv[2])
"""


def _in_child_process(backend, script, args, what):
    """Runs ``script`` with ``args`` in a fresh Python on Keras' ``backend``; its last
    error line in a ValueError (raised inside the staging folder: nothing is written)."""
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise ValueError(
            f"Writing {what} on {backend} (a child process, from the .keras file) failed: "
            f"{last[:300]}; nothing was written. Export formats=('keras',) alone.")


def _tflite(saved, path):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    with open(path, "wb") as handle:
        handle.write(converter.convert())


_EXPORT_SCRIPT = """
import sys
import keras
import keras_lowrank  # noqa: F401  (puts factor layers inside custom layers back)
from keras_lowrank.compression.export import _tflite
model = keras.saving.load_model(sys.argv[1], compile=False)
model.export(sys.argv[2], format="tf_saved_model", verbose=False)
if sys.argv[3]:
    _tflite(sys.argv[2], sys.argv[3])
"""


def export_in_tensorflow(keras_file, saved, tflite=None):
    """The SavedModel (and TFLite) of the model in ``keras_file``, written by Keras on
    TensorFlow in a child process: Keras' SavedModel export runs on TensorFlow, and its
    torch path (``torch.export``) fails on plain models in Keras 3.15. The child loads
    the same weights, so the files compute what the model computes (to float32 rounding)."""
    _in_child_process("tensorflow", _EXPORT_SCRIPT, [keras_file, saved, tflite or ""], "the SavedModel")


def _saved_model(model, path):
    """Keras' ``Model.export`` to a SavedModel; where it fails on another backend than
    TensorFlow (on JAX, jax2tf cannot trace e.g. keras-hub's PositionEmbedding over a
    sequence of any length), an error that names the backend and the ways round it
    (raised inside the staging folder: ``path``'s folder is left as it was)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        model.export(path, format="tf_saved_model", verbose=False)
        return
    try:
        model.export(path, format="tf_saved_model", verbose=False)
    except Exception as error:  # Keras raises what jax2tf or TensorFlow raise
        raise ValueError(
            f"Keras' SavedModel export of this model fails on the {backend} backend "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); nothing was written. "
            "Export the .keras file alone (formats=('keras',)) and write the SavedModel/TFLite "
            "from it on TensorFlow (KERAS_BACKEND=tensorflow: keras.saving.load_model, then "
            "export_compressed or model.export).") from error


def _quantize(model, mode):
    """Keras' own weight quantisation of ``model`` in place; the layers with kernels it
    leaves in float32 named once: convolutions (Keras quantises Dense and EinsumDense), and
    in a keras-hub task (a model with a ``backbone``) the layers outside the backbone —
    keras-hub records quantisation in its backbone's config only, so a quantised task head
    (BertTextClassifier's ``logits``) would not load back."""
    backbone = getattr(model, "backbone", None)
    inside = ({id(layer) for layer in all_sublayers(backbone)} if isinstance(backbone, keras.Model) else None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
        model.quantize(mode, filters=None if inside is None else (lambda layer: id(layer) in inside))
    kernels = [layer for layer in all_sublayers(model) if hasattr(layer, "kernel")]
    skipped = [layer.name for layer in kernels if not isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))]
    if skipped:
        warnings.warn(f"export_compressed(quantize={mode!r}): Keras quantises Dense and EinsumDense layers "
                      f"only; these stay float32: {', '.join(skipped)}.", stacklevel=3, category=LowRankWarning)
    outside = [layer.name for layer in kernels if inside is not None and id(layer) not in inside
               and layer.name not in skipped]
    if outside:
        warnings.warn(f"export_compressed(quantize={mode!r}): keras-hub records quantisation in the backbone's "
                      "config only, so the task's own layers stay float32 (quantised, the file would not load "
                      f"back): {', '.join(outside)}.", stacklevel=3, category=LowRankWarning)
