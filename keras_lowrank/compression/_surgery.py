"""Layers swapped inside a built model, wherever they sit, and saved so that they come
back: the copy ``to_low_rank`` and ``compressed_model`` work on, the record of what was
swapped, and the ``.keras`` file that rebuilds it.

Keras rebuilds a graph model (Sequential, functional) from its config layer by layer, so
a layer swapped in it is saved by its config. A custom layer (keras-hub's
``TransformerEncoder``, ``CachedMultiHeadAttention``…) or a model class with its own
``get_config`` (every keras-hub ``Backbone`` and task) rebuilds its sublayers in its own
code: a swapped sublayer would come back as the original class and its saved weights
would not fit. For those, the file's config wraps the model's own in a
``SubstitutedModel`` that rebuilds the model, puts each recorded layer back at its path,
and hands Keras the model, whose weights then load as saved.
"""

import json
import os
import tempfile
import warnings
import zipfile

import keras

from keras_lowrank._keras_compat import build_input_shape, layer_paths, replace_layer, set_untracked

#: the attribute (set without Keras' tracking) listing a model's swapped layers' paths
RECORD = "_keras_lowrank_swapped"


def copy_model(model, caller, layers=()):
    """A new model equal to ``model`` (its config and weights), through Keras' own
    saving (which rebuilds nested, custom and keras-hub models and keeps tied
    weights tied); not compiled. Returns (copy, {id(layer): its twin in the copy}) for
    ``layers``, [(path, layer)] of ``model``."""
    classes = {}
    for _, layer in [("", model)] + layer_paths(model):
        cls = type(layer)
        classes[cls.__name__] = cls
        classes[keras.saving.get_registered_name(cls)] = cls
    with tempfile.TemporaryDirectory(prefix="klr-copy-") as folder:
        path = os.path.join(folder, "model.keras")
        try:
            save_model(model, path)
            with warnings.catch_warnings():
                # a model class that compiles itself (keras-hub's tasks) would get the saved
                # optimizer's state: the copy is uncompiled on purpose, its state not carried
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                copy = keras.saving.load_model(path, custom_objects=classes, compile=False, safe_mode=False)
        except Exception as error:  # Keras raises many kinds for an unserializable model
            raise ValueError(
                f"{caller} works on a copy of the model made by Keras' own saving (save, then "
                f"load_model), which failed for this model: {type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''} — give each custom layer and "
                "model a get_config() and register it (@keras.saving.register_keras_serializable()), "
                "as Keras' saving guide shows.") from error
    new = dict(layer_paths(copy))
    pairs = {}
    for path, layer in layers:
        twin = new.get(path)
        if twin is None or type(twin) is not type(layer):
            raise ValueError(
                f"{caller}: the copy of the model made by Keras' saving does not hold layer {path!r} "
                f"({type(layer).__name__}) where the model does: the model's get_config() does not "
                "rebuild it. Make the custom layers holding it build it in __init__/build from their "
                "config.")
        pairs[id(layer)] = twin
    set_untracked(copy, RECORD, list(getattr(model, RECORD, [])))
    return copy, pairs


def swap(model, path, old, new):
    """``new`` (built, weights set) in place of ``old`` at ``path`` of ``model``; recorded
    so that ``save_model`` brings it back."""
    replace_layer(model, old, new)
    record = getattr(model, RECORD, None)
    if record is None:
        record = []
        set_untracked(model, RECORD, record)
    if path not in record:
        record.append(path)


def _kept_by_config(model, path):
    """Whether Keras' own config of ``model`` records the layer at ``path``: every layer
    above it is a plain Sequential or functional model (which store their layers'
    configs), not a custom layer or a model class with its own get_config."""
    plain = (keras.Sequential, keras.Model)
    paths = dict(layer_paths(model))
    parents = [model] + [paths["/".join(path.split("/")[:i])] for i in range(1, path.count("/") + 1)]
    return all(type(parent) in plain or type(parent).__name__ == "Functional" and
               type(parent).__module__.startswith("keras.") for parent in parents)


def save_model(model, path):
    """``model.save(path)`` for a model ``to_low_rank`` converted: where low-rank layers
    sit below a custom layer (or in a model class with its own config, as keras-hub's),
    which Keras rebuilds from its own code, the file's config also records them, so that
    ``keras.saving.load_model`` (with keras_lowrank imported) puts them back. Use it
    instead of ``model.save``, which would write a file whose weights no longer fit the
    model Keras rebuilds.

    Args:
        model: a Keras model.
        path: the ``.keras`` file to write (replaced if it exists, as ``model.save`` does).

    Returns:
        whether loading the file needs keras_lowrank imported.

    Examples:

        >>> import tempfile
        >>> from keras_lowrank.compression import compression_summary, to_low_rank
        >>> tokens = keras.Input((6, 16))
        >>> attended = keras.layers.MultiHeadAttention(2, 8)(tokens, tokens)
        >>> model = keras.Model(tokens, keras.layers.Dense(3)(attended))
        >>> path = tempfile.mkdtemp() + "/low.keras"
        >>> save_model(to_low_rank(model, rank=2), path)
        True
        >>> sorted(row["layer"] for row in compression_summary(keras.saving.load_model(path)).rows
        ...        if row["rank"] is not None)
        ['attention_output', 'key', 'query', 'value']
    """
    model.save(path)
    paths = dict(layer_paths(model))
    missing = [p for p in getattr(model, RECORD, []) if p in paths and not _kept_by_config(model, p)]
    if not missing:
        return False
    swapped = []
    for p in missing:
        layer = paths[p]
        shape = build_input_shape(layer)
        swapped.append({"path": p, "layer": keras.saving.serialize_keras_object(layer),
                        "input_shape": None if shape is None else list(shape)})
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    inner = json.loads(members["config.json"])
    outer = {
        "module": SubstitutedModel.__module__,
        "class_name": "SubstitutedModel",
        "config": {"model": {k: v for k, v in inner.items() if k != "compile_config"},
                   "swapped": swapped},
        "registered_name": keras.saving.get_registered_name(SubstitutedModel),
    }
    if inner.get("compile_config") is not None:
        outer["compile_config"] = inner["compile_config"]
    members["config.json"] = json.dumps(outer).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return True


@keras.saving.register_keras_serializable(package="keras_lowrank")
class SubstitutedModel(keras.layers.Layer):
    """The config of a ``.keras`` file whose model holds low-rank layers below custom
    layers: ``from_config`` rebuilds the model from its own config, puts each recorded
    layer back at its path, and returns the model (not an instance of this class), whose
    weights Keras then loads. Written by ``compression.save_model`` and
    ``export_compressed``; never built by hand."""

    @classmethod
    def from_config(cls, config, custom_objects=None):
        model = keras.saving.deserialize_keras_object(config["model"], custom_objects=custom_objects)
        paths = dict(layer_paths(model))
        for entry in config["swapped"]:
            old = paths.get(entry["path"])
            if old is None:
                raise ValueError(
                    f"This .keras file's model has no layer at {entry['path']!r} to put its low-rank "
                    "layer back: it was written by another version of the model's code.")
            new = keras.saving.deserialize_keras_object(entry["layer"], custom_objects=custom_objects)
            if entry["input_shape"] is not None and not new.built:
                new.build(tuple(entry["input_shape"]))
            swap(model, entry["path"], old, new)
        return model
