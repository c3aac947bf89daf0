"""What the command line's subcommands share: the user's model and data, checked
against each other; the report (Markdown + JSON) and its metadata.

Every check raises ``JobError`` with one line saying what is wrong and how to fix
it; the command line prints it and exits with status 2.
"""

import datetime
import json
import os
import platform
import shlex
import sys
import warnings

import numpy as np

OFFLINE = ("digits", "mnist1d")


class JobError(Exception):
    """Bad input to a subcommand (missing file, wrong shapes, unknown dataset)."""


# -- the model -----------------------------------------------------------------
def load_model(path, argument="MODEL"):
    """The user's ``.keras`` model, uncompiled; our layers are registered on import."""
    if not os.path.isfile(path):
        raise JobError(f"{argument}: {path} is not a file (expected a model saved with "
                       "model.save('model.keras')).")
    if not str(path).endswith(".keras"):
        raise JobError(f"{argument}: {path} is not a .keras file; save the model with "
                       "model.save('model.keras') (Keras 3's format).")
    import zipfile

    if not zipfile.is_zipfile(path):  # Keras would say "File not found" of a damaged file
        raise JobError(f"{argument}: {path} is not a readable .keras file (not a zip archive: damaged, "
                       "cut short, or another format); save the model again with model.save('model.keras').")
    import keras

    import keras_lowrank  # noqa: F401  (registers the library's layers for loading)

    try:
        with warnings.catch_warnings():  # compile=False: a model that compiles itself (keras-hub's
            # tasks) is not given the saved optimizer's state, which the jobs do not use
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # a damaged file, unknown custom objects, …
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise JobError(f"{argument}: Keras cannot load {path} ({type(error).__name__}: "
                       f"{first[:300]}).") from None
    if not model.inputs or len(model.outputs or ()) != 1:
        raise JobError(f"{argument}: {path} must have inputs and one output (a classifier); "
                       f"it has {len(model.inputs or ())} and {len(model.outputs or ())}.")
    shape = tuple(model.outputs[0].shape)
    if len(shape) == 3:
        raise JobError(f"{argument}: {path} outputs a score per position {shape} (a language model?); "
                       "the command line scores classifiers (batch, classes): compress a language model "
                       "with the Python API (docs/compression.md, \"Transformers and keras-hub\").")
    if len(shape) != 2 or not shape[-1] or shape[-1] < 2:
        raise JobError(f"{argument}: {path} must output class scores (batch, classes ≥ 2); "
                       f"its output has shape {shape}.")
    return model


def named_inputs(model):
    """The model's input names where it takes several (keras-hub: token_ids,
    padding_mask…) or one of integer dtype (token ids), else None: its data is then a
    dict of arrays by those names, and noise or attacks on it mean nothing."""
    import keras

    integer = np.dtype(keras.backend.standardize_dtype(model.inputs[0].dtype)).kind in "biu"
    return [t.name for t in model.inputs] if len(model.inputs) > 1 or integer else None


# -- batches: arrays, or dicts of arrays by input name --------------------------
def length(x):
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def rows(x, start=None, stop=None):
    """Examples ``start:stop`` of ``x`` (an array or a dict of arrays)."""
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    return x[start:stop]


def num_classes(model):
    return int(model.outputs[0].shape[-1])


# -- the data ------------------------------------------------------------------
def describe_data_spec():
    from keras_lowrank.data import available_datasets

    return ", ".join(available_datasets()) + ", or an .npz file holding x and y"


def load_arrays(spec, data_dir=None, limit=None, splits=("train", "test")):
    """{"train": (x, y), "test": (x, y), "description": str} from a dataset name or an
    ``.npz`` file (``x``, ``y``; ``x_test``, ``y_test`` optional: without them the last
    20 % of ``x`` is the test split, a fixed split stated in the report). A tfds
    dataset reads only ``splits`` (evaluate and analyze need only the test split)."""
    from keras_lowrank import data

    if spec.endswith(".npz"):
        return _npz(spec, limit)
    if spec in OFFLINE:
        loader = data.load_digits_arrays if spec == "digits" else data.load_mnist1d_arrays
        try:
            train, test = loader("train"), loader("test")
        except ImportError as error:
            raise JobError(f"--data {spec}: {error}") from None
        return _limited({"train": train, "test": test,
                         "description": f"{spec} (the library's offline dataset)"}, limit)
    if os.path.sep in spec or os.path.exists(spec):
        raise JobError(f"--data: {spec} is not an .npz file; pass an .npz holding x and y, or "
                       f"a dataset name ({describe_data_spec()}).")
    try:
        data._check_tfds_name(spec)
    except ValueError:
        raise JobError(f"--data: unknown dataset {spec!r}; valid: {describe_data_spec()}.") from None
    wanted, splits = splits, {}
    for split in ("train", "test"):
        if split not in wanted or (spec.startswith(data.CORRUPTED_PREFIX) and split == "train"):
            continue
        try:
            dataset, _ = data.load(spec, split, batch_size=512, data_dir=data_dir)
        except data.DataUnavailableError as error:
            raise JobError(f"--data {spec}: {error}") from None
        except ImportError as error:
            raise JobError(f"--data {spec}: {error}") from None
        if limit:
            dataset = dataset.take(-(-limit // 512))
        xs, ys = zip(*dataset.as_numpy_iterator())
        splits[split] = (np.concatenate(xs), np.concatenate(ys))
    if "train" in wanted and "train" not in splits:
        raise JobError(f"--data {spec}: has no training split; pass a dataset with one.")
    return _limited({**splits, "description": f"{spec} (TensorFlow Datasets, data dir "
                                             f"{data_dir or 'default'})"}, limit)


def _limited(arrays, limit):
    if limit:
        for split in ("train", "test"):
            if split not in arrays:
                continue
            x, y = arrays[split]
            arrays[split] = (rows(x, None, limit), y[:limit])
        arrays["description"] += f", first {limit} examples of each split"
    return arrays


def _npz(path, limit):
    if not os.path.isfile(path):
        raise JobError(f"--data: {path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as file:
            arrays = {key: file[key] for key in file.files}
    except Exception as error:
        raise JobError(f"--data: {path} is not a readable .npz file ({type(error).__name__}: "
                       f"{str(error)[:200]}); write one with np.savez(path, x=x, y=y).") from None
    if "x" not in arrays:  # named inputs (token_ids, padding_mask, …), each with its <name>_test
        named = {k: v for k, v in arrays.items() if k not in ("y", "y_test") and not k.endswith("_test")}
        if named:
            arrays = {"y": arrays.get("y"), "x": named, **({"y_test": arrays["y_test"]} if "y_test" in arrays
                                                           else {}),
                      **({"x_test": {k: arrays[f"{k}_test"] for k in named}}
                         if any(f"{k}_test" in arrays for k in named) else {})}
            missing_tests = [f"{k}_test" for k in named if "x_test" in arrays and f"{k}_test" not in
                             {f"{n}_test" for n in arrays["x_test"]}]
            if missing_tests:
                raise JobError(f"--data: {path} lacks {', '.join(missing_tests)}; give every input's _test or none.")
            arrays = {k: v for k, v in arrays.items() if v is not None}
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise JobError(f"--data: {path} lacks {' and '.join(missing)} (it holds "
                       f"{', '.join(sorted(arrays)) or 'nothing'}); write it with "
                       "np.savez(path, x=inputs, y=labels[, x_test=…, y_test=…]), or for a model of "
                       "named inputs np.savez(path, token_ids=…, padding_mask=…, y=…[, token_ids_test=…, …]).")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise JobError(f"--data: {path} holds only one of x_test and y_test; give both or neither.")
    x, y = arrays["x"], arrays["y"]
    _check_pair(x, y, f"{path}: x, y")
    if "x_test" in arrays:
        _check_pair(arrays["x_test"], arrays["y_test"], f"{path}: x_test, y_test")
        result = {"train": (x, y), "test": (arrays["x_test"], arrays["y_test"]),
                  "description": f"{path} (x, y for training; x_test, y_test for testing)"}
    else:
        n = length(x)
        if n < 2:
            raise JobError(f"--data: {path} holds {n} example(s); at least 2 are needed.")
        cut = n - max(1, n // 5)
        result = {"train": (rows(x, None, cut), y[:cut]), "test": (rows(x, cut), y[cut:]),
                  "description": f"{path} (no x_test: examples {cut}..{n - 1}, the last "
                                 "20 %, are the test split)"}
    return _limited(result, limit)


def _check_pair(x, y, where):
    if isinstance(x, dict):
        for name, part in x.items():
            if part.dtype.kind not in "fiub" or part.ndim < 1:
                raise JobError(f"--data {where}: input {name!r} must be numbers (examples, …), got dtype "
                               f"{part.dtype}, shape {part.shape}.")
            if len(part) != len(y):
                raise JobError(f"--data {where}: input {name!r} has {len(part)} examples but y has {len(y)}.")
        x = next(iter(x.values()))
        if x.ndim < 2:
            x = x[:, None]
    if x.dtype.kind not in "fiub":
        raise JobError(f"--data {where}: x must be numbers, got dtype {x.dtype}.")
    if y.dtype.kind not in "fiub":
        raise JobError(f"--data {where}: y must be class indices or one-hot rows, got dtype {y.dtype}.")
    if x.ndim < 2:
        raise JobError(f"--data {where}: x must be (examples, …), got shape {x.shape}.")
    if len(x) != len(y):
        raise JobError(f"--data {where}: x has {len(x)} examples but y has {len(y)}.")
    if len(x) == 0:
        raise JobError(f"--data {where}: no examples.")


def check_against_model(arrays, model, clip):
    """Shapes, dtype, value range and labels of every split checked against
    ``model``; returns float32 inputs (a dict of the model's named inputs as given: token
    ids stay integers) and integer labels per split."""
    expected = tuple(model.inputs[0].shape[1:])
    classes = num_classes(model)
    checked = dict(arrays)
    names = named_inputs(model)
    for split in ("train", "test"):
        if split not in arrays:
            continue
        x, y = arrays[split]
        if names is not None:
            x = _checked_named(x, model, names, split)
            checked[split] = (x, _checked_labels(y, classes, split))
            continue
        if isinstance(x, dict):
            raise JobError(f"--data: the model takes one input ({model.inputs[0].name}); the file holds "
                           f"several ({', '.join(x)}): save it as x=… .")
        shape = tuple(x.shape[1:])
        if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
            hint = (" (add the channel axis: x[..., None])"
                    if shape + (1,) == tuple(e or s for e, s in zip(expected, shape + (1,))) else "")
            raise JobError(f"--data: the {split} examples have shape {shape} but the model takes "
                           f"{tuple(expected)}{hint}.")
        x = np.asarray(x, dtype="float32")
        if not np.all(np.isfinite(x)):
            raise JobError(f"--data: the {split} inputs hold NaN or infinite values.")
        low, high = float(x.min()), float(x.max())
        if clip is not None and (low < clip[0] or high > clip[1]):
            raise JobError(f"--data: the {split} inputs range over [{low:g}, {high:g}], outside the "
                           f"input range [{clip[0]:g}, {clip[1]:g}] that noise and attacks clip to; "
                           "pass --clip LOW HIGH with the model's input range (e.g. --clip 0 255).")
        checked[split] = (x, _checked_labels(y, classes, split))
    return checked


def _checked_named(x, model, names, split):
    """The ``split``'s inputs as {input name: array} for a model of named (or integer)
    inputs: every name present, shapes and integer-ness as declared."""
    import keras

    if not isinstance(x, dict):
        if len(names) > 1:
            raise JobError(f"--data: the model takes named inputs {names}; save them by name: "
                           f"np.savez(path, {'=…, '.join(names)}=…, y=…).")
        x = {names[0]: x}
    missing, extra = [n for n in names if n not in x], [n for n in x if n not in names]
    if missing or extra:
        raise JobError(f"--data: the model takes the inputs {names}; the file's {split} split "
                       + (f"lacks {missing}" if missing else "") + (" and " if missing and extra else "")
                       + (f"has {extra}, which the model does not take" if extra else "") + ".")
    out = {}
    for tensor in model.inputs:
        value = np.asarray(x[tensor.name])
        declared = tuple(tensor.shape[1:])
        shape = tuple(value.shape[1:])
        if len(shape) != len(declared) or any(e is not None and e != s for e, s in zip(declared, shape)):
            raise JobError(f"--data: the {split} input {tensor.name!r} has shape {shape} but the model "
                           f"takes {declared}.")
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if np.dtype(dtype).kind in "biu":
            if value.dtype.kind == "f" and not np.all(value == np.round(value)):
                raise JobError(f"--data: the {split} input {tensor.name!r} must hold whole numbers (token "
                               "ids, masks).")
            value = value.astype(dtype)
        else:
            value = value.astype("float32")
            if not np.all(np.isfinite(value)):
                raise JobError(f"--data: the {split} input {tensor.name!r} holds NaN or infinite values.")
        out[tensor.name] = value
    return out


def _checked_labels(y, classes, split):
    """Integer class labels from class indices or one-hot rows, in 0..classes−1."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == classes:
        if not np.all((y == 0) | (y == 1)) or not np.all(y.sum(1) == 1):
            raise JobError(f"--data: the {split} labels are 2-D but not one-hot rows.")
        y = y.argmax(1)
    elif y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise JobError(f"--data: the {split} labels have shape {y.shape}; expected (examples,) "
                       f"class indices or (examples, {classes}) one-hot rows.")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise JobError(f"--data: the {split} labels are not whole numbers (class indices).")
    y = y.astype("int64")
    if y.min() < 0 or y.max() >= classes:
        raise JobError(f"--data: the {split} labels range over {int(y.min())}..{int(y.max())} "
                       f"but the model has {classes} outputs (classes 0..{classes - 1}).")
    return y.astype("int32")


def accuracy(model, x, y, batch_size=256):
    scores = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(scores, axis=-1) == y))


# -- reports -------------------------------------------------------------------
def metadata(command_line, seed):
    import keras

    import keras_lowrank

    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "keras": keras.__version__, "keras_lowrank": keras_lowrank.__version__}
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module and module in sys.modules:
        versions[module] = getattr(sys.modules[module], "__version__", "?")
    return {"command": command_line, "backend": backend, "seed": seed, "versions": versions,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"}


def command_line(argv):
    return "keras-lowrank " + shlex.join(argv)


def write_report(folder, title, meta, sections, record):
    """``report.md`` (title, sections, then how it was run) and ``report.json``."""
    lines = [f"# {title}", ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.rstrip(), ""]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    lines += ["## How this was run", "", f"    {meta['command']}", "",
              f"Backend {meta['backend']}, seed {meta['seed']}, {meta['date']}; {versions}; "
              f"{meta['machine']}.", ""]
    with open(os.path.join(folder, "report.md"), "w") as handle:
        handle.write("\n".join(lines))
    with open(os.path.join(folder, "report.json"), "w") as handle:
        json.dump({"meta": meta, **record}, handle, indent=2, default=_json_default)


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def markdown_cell(value):
    """``value`` as one Markdown table cell: newlines folded to spaces, ``|`` escaped
    (an error message quoted in a report must not break its table)."""
    return " ".join(str(value).split()).replace("|", "\\|")


def markdown_table(head, rows):
    lines = ["| " + " | ".join(markdown_cell(c) for c in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def human_size(num_bytes):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024


def size_on_disk(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def staged(args):
    """The output folder, written whole when the block succeeds (``_files.staged_folder``)."""
    from keras_lowrank._files import staged_folder

    return staged_folder(args.output, args.overwrite, "--output")
