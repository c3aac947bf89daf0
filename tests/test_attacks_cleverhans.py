"""Cross-check against cleverhans 4 (TensorFlow only) on a trained digits CNN."""

import keras
import numpy as np
import pytest
from models import digits_cnn as small_cnn

from keras_lowrank import data
from keras_lowrank.robustness import FGSM, PGD

pytestmark = pytest.mark.tf_only("cleverhans' tf2 attacks run on TensorFlow tensors")
ch_fgm = pytest.importorskip("cleverhans.tf2.attacks.fast_gradient_method")
ch_pgd = pytest.importorskip("cleverhans.tf2.attacks.projected_gradient_descent")


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    x, y = data.load_digits_arrays("train")
    model = small_cnn()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=8, batch_size=64, verbose=0)
    x_test, y_test = data.load_digits_arrays("test")
    return model, x_test[:200], y_test[:200]


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


@pytest.mark.parametrize("norm,eps", [(np.inf, 0.1), (2, 1.0)])
@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_equals_cleverhans(trained, norm, eps, targeted):
    model, x, y = trained
    labels = (y + 1) % 10 if targeted else y
    ours = FGSM(eps, norm=norm, targeted=targeted)(model, x, labels)
    theirs = ch_fgm.fast_gradient_method(model, x, eps, norm, clip_min=0.0, clip_max=1.0,
                                         y=labels, targeted=targeted)
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-6)


@pytest.mark.parametrize("norm,eps,step", [(np.inf, 0.1, 0.02), (2, 1.0, 0.25)])
def test_pgd_without_random_start_equals_cleverhans(trained, norm, eps, step):
    model, x, y = trained
    ours = PGD(eps, step_size=step, steps=10, norm=norm, random_start=False)(model, x, y)
    theirs = ch_pgd.projected_gradient_descent(
        model, x, eps, step, 10, norm, clip_min=0.0, clip_max=1.0, y=y, rand_init=False,
        sanity_checks=False)
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-5)


def test_pgd_random_start_robust_accuracy_matches_cleverhans(trained):
    model, x, y = trained
    ours = accuracy(model, np.asarray(PGD(0.08, step_size=0.02, steps=10, seed=0)(model, x, y)), y)
    theirs = accuracy(model, ch_pgd.projected_gradient_descent(
        model, x, 0.08, 0.02, 10, np.inf, clip_min=0.0, clip_max=1.0, y=y, rand_init=True,
        sanity_checks=False).numpy(), y)
    assert abs(ours - theirs) <= 0.01 + 1e-9


def cleverhans_pgd_wrapper(model, nb_iter):
    """cleverhans' PGD (L∞, ε = 0.1, no random start) in a compiled PerturbedModel."""
    from keras_lowrank.robustness import CleverhansAttack, PerturbedModel

    adapter = CleverhansAttack(ch_pgd.projected_gradient_descent, eps=0.1, eps_iter=0.02,
                               nb_iter=nb_iter, norm=np.inf, clip_min=0.0, clip_max=1.0,
                               rand_init=False)
    wrapper = PerturbedModel(model, adapter)
    wrapper.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    return adapter, wrapper


def test_adapter_runs_cleverhans_inside_keras_evaluate(trained):
    from keras_lowrank.robustness import evaluate_robustness

    model, x, y = trained
    adapter, wrapper = cleverhans_pgd_wrapper(model, nb_iter=5)
    got = wrapper.evaluate(x, y, batch_size=50, verbose=0, return_dict=True)["accuracy"]
    ours = PGD(0.1, step_size=0.02, steps=5, random_start=False)
    assert got == pytest.approx(accuracy(model, np.asarray(ours(model, x, y)), y), abs=1e-6)
    import tensorflow as tf

    report = evaluate_robustness(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(50),
                                 attacks=[adapter], large_eps=None)
    assert report.rows[1]["name"] == "projected_gradient_descent"
    assert report.rows[1]["accuracy"] == pytest.approx(got, abs=1e-6)


def test_adapter_saves_with_the_model_and_loads_only_cleverhans_functions(trained, tmp_path):
    model, x, y = trained
    adapter, wrapper = cleverhans_pgd_wrapper(model, nb_iter=3)
    wrapper.save(tmp_path / "adapter.keras")
    restored = keras.saving.load_model(tmp_path / "adapter.keras")
    assert restored.perturbation.attack_fn is ch_pgd.projected_gradient_descent
    assert restored.perturbation.kwargs == adapter.kwargs
    assert (restored.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
            == pytest.approx(wrapper.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]))
    config = keras.saving.serialize_keras_object(adapter)
    config["config"]["attack_fn"] = "os.system"
    with pytest.raises(ValueError, match="only functions of the cleverhans package"):
        keras.saving.deserialize_keras_object(config)


def test_adapter_gives_cleverhans_the_logits_of_a_softmax_model(trained):
    # cleverhans' model_fn must return logits; a model ending in Softmax() is
    # attacked as cleverhans attacks the same model without it.
    from keras_lowrank.robustness import CleverhansAttack

    model, x, y = trained
    probs = keras.Sequential([model, keras.layers.Softmax()])
    adapter = CleverhansAttack(ch_fgm.fast_gradient_method, eps=0.1, norm=np.inf,
                               clip_min=0.0, clip_max=1.0)
    theirs = ch_fgm.fast_gradient_method(model, x, 0.1, np.inf, clip_min=0.0, clip_max=1.0, y=y)
    np.testing.assert_allclose(np.asarray(adapter(probs, x, y)), theirs.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(FGSM(0.1)(probs, x, y)), theirs.numpy(), atol=1e-6)
