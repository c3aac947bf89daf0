"""APGD, Square and AutoAttack against ART's implementations (an independent code
base) on the same Keras model and the same points, through ART's
``TensorFlowV2Classifier``: robust accuracy within 1 point (the random draws
differ, so the examples broken may differ at the margin)."""

import keras
import numpy as np
import pytest

from keras_lowrank import data
from keras_lowrank.robustness import APGD, AutoAttack, Square

pytestmark = pytest.mark.tf_only("ART's TensorFlowV2Classifier runs on TensorFlow tensors")
art = pytest.importorskip("art")

from art.attacks.evasion import AutoAttack as ArtAutoAttack  # noqa: E402
from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack  # noqa: E402
from art.estimators.classification import TensorFlowV2Classifier  # noqa: E402

POINT = 0.01 + 1e-9  # one point (1e-9: 4/400 in floats)


@pytest.fixture(scope="module")
def setting():
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    x, y = data.load_digits_arrays("train")
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    xt, yt = data.load_digits_arrays("test")
    classifier = TensorFlowV2Classifier(
        model=model, nb_classes=10, input_shape=(8, 8, 1), clip_values=(0.0, 1.0), channels_first=False,
        loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, classifier, xt[:400], yt[:400]


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


# ART's DLR loss runs eagerly and slowly (110 s for 100 iterations here): 30 iterations
@pytest.mark.parametrize("loss,art_loss,n_iter", [("ce", "cross_entropy", 100), ("dlr", "difference_logits_ratio", 30)])
def test_apgd_matches_art(setting, loss, art_loss, n_iter):
    model, classifier, x, y = setting
    eps = 0.1
    ours = accuracy(model, APGD(eps, loss=loss, steps=n_iter, seed=0)(model, x, y), y)
    theirs = accuracy(model, AutoProjectedGradientDescent(
        classifier, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=n_iter, nb_random_init=1, batch_size=400,
        loss_type=art_loss, verbose=False).generate(x, np.eye(10)[y]), y)
    assert ours < accuracy(model, x, y) - 0.1  # the setting is not trivial
    assert abs(ours - theirs) <= POINT, (ours, theirs)


def test_square_matches_art(setting):
    """L∞ only: ART's L2 Square departs from the authors' (it divides the new
    window by the target norm instead of scaling to it, and builds another
    pattern), so ours (the authors') breaks ~10 points more there; our L2 is
    checked against a port of the authors' loop in test_autoattack.py."""
    model, classifier, x, y = setting
    norm, eps = np.inf, 0.1
    ours = accuracy(model, Square(eps, norm=norm, steps=1000, seed=0)(model, x, y), y)
    theirs = accuracy(model, SquareAttack(classifier, norm=norm, eps=eps, max_iter=1000, p_init=0.8, nb_restarts=1,
                                          batch_size=400, verbose=False).generate(x, np.eye(10)[y]), y)
    assert ours < accuracy(model, x, y) - 0.1
    assert abs(ours - theirs) <= POINT, (ours, theirs)


def test_autoattack_at_least_as_strong_as_arts_ensemble(setting):
    """ART's AutoAttack with APGD-CE, APGD-DLR and Square; ours (standard) runs
    APGD-T (100 iterations per target) instead of APGD-DLR (20 here), a stronger
    stage, so it may be lower, but not by much on an undefended model."""
    model, classifier, x, y = setting
    x, y = x[:200], y[:200]  # ART's ensemble takes ~2.5 min on 400 points here
    eps = 0.08
    stages = [AutoProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=n_iter,
                                           batch_size=400, loss_type=loss, verbose=False)
              for loss, n_iter in (("cross_entropy", 100), ("difference_logits_ratio", 20))]
    stages.append(SquareAttack(classifier, norm=np.inf, eps=eps, max_iter=500, p_init=0.8, batch_size=400,
                               verbose=False))
    theirs = accuracy(model, ArtAutoAttack(classifier, norm=np.inf, eps=eps, eps_step=2 * eps, attacks=stages,
                                           batch_size=400).generate(x, np.eye(10)[y]), y)
    result = AutoAttack(eps, square_steps=500, seed=0).run(model, x, y)
    assert result.robust_accuracy <= theirs + POINT, (result.robust_accuracy, theirs)
    assert result.robust_accuracy >= theirs - 3 * POINT, (result.robust_accuracy, theirs)
    assert result.robust_accuracy < accuracy(model, x, y) - 0.1
