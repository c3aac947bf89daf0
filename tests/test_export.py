"""``export_compressed``'s folders (keras_lowrank/compression/export.py and _files.py):
never mixing, losing or following a user's files; damaged files named. (What the
exported models compute: test_compression.py and test_export_forms.py.)"""

import os

import keras
import numpy as np
import pytest
from keras import ops
from models import dense_mlp

from keras_lowrank import _files, compression


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_export_never_mixes_or_loses_files(rng, tmp_path):
    model = compression.to_low_rank(dense_mlp(), rank=4)
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        compression.export_compressed(model, str(out), formats="keras")
    assert os.listdir(out) == ["notes.txt"]
    # interrupted half way: the folder is as it was, no partial folder is left
    original = keras.Model.save

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    # overwrite replaces only what an export wrote: a folder with the user's files is refused
    with pytest.raises(FileExistsError, match="did not write \\(notes.txt\\)"):
        compression.export_compressed(model, str(out), formats="keras", overwrite=True)
    assert os.listdir(out) == ["notes.txt"]
    out = tmp_path / "export2"
    compression.export_compressed(model, str(out), formats=("keras", "saved_model") if _has_tf() else "keras")
    keras.Model.save = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            compression.export_compressed(model, str(out), formats="keras", overwrite=True)
    finally:
        keras.Model.save = original
    assert sorted(os.listdir(tmp_path)) == ["export", "export2"]
    written = compression.export_compressed(model, str(out), formats="keras", overwrite=True)
    assert sorted(os.listdir(out)) == [_files.MANIFEST, "model.keras"]  # replaced whole: no stale files
    # a file added to an exported folder makes it the user's again
    (out / "train.py").write_text("mine")
    with pytest.raises(FileExistsError, match="train.py"):
        compression.export_compressed(model, str(out), formats="keras", overwrite=True)
    assert (out / "train.py").read_text() == "mine"
    x = rng.normal(size=(3, 16)).astype("float32")
    np.testing.assert_allclose(_np(keras.models.load_model(written["keras"])(x)), _np(model(x)),
                               atol=1e-5)


def test_a_symbolic_link_is_never_followed_or_replaced(tmp_path):
    model = compression.to_low_rank(dense_mlp(), rank=4)
    target = tmp_path / "target"
    compression.export_compressed(model, str(target), formats="keras")
    (tmp_path / "link").symlink_to(target, target_is_directory=True)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="symbolic link"):
            compression.export_compressed(model, str(tmp_path / "link"), formats="keras", overwrite=overwrite)
    assert os.path.islink(tmp_path / "link") and sorted(os.listdir(tmp_path)) == ["link", "target"]


def _has_tf():
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def test_damaged_exported_files_are_named(tmp_path):
    from keras_lowrank.cli.common import JobError, load_model

    (tmp_path / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(JobError, match="not a readable .keras file"):
        load_model(str(tmp_path / "model.keras"))
    if keras.backend.backend() == "tensorflow":
        from keras_lowrank.robustness.exported import load_exported

        (tmp_path / "model.tflite").write_bytes(b"x" * 64)
        with pytest.raises(ValueError, match="not a TFLite model"):
            load_exported(str(tmp_path / "model.tflite"))

