"""Training wrappers (PerturbedModel, SelectivityRegularizedModel) under Keras'
own fault-tolerance callbacks: ModelCheckpoint saves them, load_model brings back
the same model and attack, BackupAndRestore resumes an interrupted fit."""

import keras
import numpy as np
import pytest
from models import digits_cnn as small_cnn

from keras_lowrank import SelectivityRegularizedModel, data
from keras_lowrank.robustness import FGSM, PGD, SPSA, Corruption, GaussianNoise, PerturbedModel

CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def digits():
    x, y = data.load_digits_arrays("train")
    return x[:192], y[:192]


def adversarial(model):
    return PerturbedModel(model, PGD(0.1, steps=2, random_start=False))


def selectivity(model):
    return SelectivityRegularizedModel(model, alpha=-1.0)


@pytest.mark.parametrize("perturbation", [
    FGSM(0.3, norm=2, targeted=True, clip=(-1.0, 2.0)),
    PGD(0.1, step_size=0.02, steps=3, norm=2, restarts=2, seed=5, from_logits=True),
    SPSA(0.1, steps=2, samples=4, seed=1), GaussianNoise(0.2, clip=None, seed=3),
    Corruption("contrast", 4, seed=2)], ids=repr)
def test_perturbations_round_trip_through_keras_serialization(perturbation):
    config = keras.saving.serialize_keras_object(perturbation)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(perturbation)
    assert restored.get_config() == perturbation.get_config()
    assert repr(restored) == repr(perturbation)


@pytest.mark.parametrize("wrap", [adversarial, selectivity])
def test_model_checkpoint_saves_a_wrapper_that_loads_back_equal(wrap, digits, tmp_path):
    x, y = digits
    wrapper = wrap(small_cnn())
    wrapper.compile("adam", CE, metrics=["accuracy"])
    path = str(tmp_path / "wrapper.keras")
    wrapper.fit(x, y, epochs=2, batch_size=64, verbose=0,
                callbacks=[keras.callbacks.ModelCheckpoint(path)])
    restored = keras.saving.load_model(path)
    assert type(restored) is type(wrapper)
    if isinstance(wrapper, PerturbedModel):
        assert repr(restored.perturbation) == repr(wrapper.perturbation)
    np.testing.assert_allclose(restored.model.predict(x, verbose=0),
                               wrapper.model.predict(x, verbose=0), atol=1e-6)
    # Same attack (or regularizer), same weights: the same metrics, and training goes on.
    expected = wrapper.evaluate(x, y, verbose=0, return_dict=True)
    got = restored.evaluate(x, y, verbose=0, return_dict=True)
    assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert np.isfinite(restored.fit(x, y, epochs=1, verbose=0).history["loss"][0])


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            self.weights = [w.copy() for w in self.model.get_weights()]
            raise RuntimeError("interrupted")


class _WeightsAtStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = [w.copy() for w in self.model.get_weights()]


@pytest.mark.parametrize("wrap", [adversarial, selectivity])
def test_backup_and_restore_resumes_an_interrupted_wrapper_fit(wrap, digits, tmp_path):
    x, y = digits
    backup = str(tmp_path / "backup")

    def trainer():
        wrapper = wrap(small_cnn())
        wrapper.compile("adam", CE)
        return wrapper

    interrupt = _Interrupt()
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer().fit(x, y, epochs=4, batch_size=64, verbose=0,
                      callbacks=[keras.callbacks.BackupAndRestore(backup), interrupt])
    start = _WeightsAtStart()
    history = trainer().fit(x, y, epochs=4, batch_size=64, verbose=0,
                            callbacks=[keras.callbacks.BackupAndRestore(backup), start])
    assert history.epoch == [2, 3]  # epochs 0 and 1 were done before the interruption
    for restored, saved in zip(start.weights, interrupt.weights):
        np.testing.assert_array_equal(restored, saved)
