"""The contract every perturbation keeps, run over a registry of all of them (as optax
runs its optimizers through shared tests): a config that round-trips, a report row it
describes, adversarial examples of the input's shape inside the input range and the
threat model's ε-ball, an attack that lowers a model's accuracy on its own predictions
at a large ε, and the same through Keras' ``evaluate`` in ``PerturbedModel``. A public
perturbation class missing from the registry fails the first test."""

import inspect

import keras
import numpy as np
import pytest
from models import linear_classifier, unit_data

from keras_lowrank import robustness
from keras_lowrank.robustness import (
    APGD,
    APGDT,
    FAB,
    FGSM,
    PGD,
    SPSA,
    AutoAttack,
    Corruption,
    GaussianNoise,
    PerturbedModel,
    Square,
    evaluate_robustness,
)

pytestmark = pytest.mark.torch  # also in the torch half

EPS = {"inf": 0.3, "2": 2.0}

REGISTRY = {
    "FGSM L∞": FGSM(EPS["inf"]),
    "FGSM L2": FGSM(EPS["2"], norm=2),
    "PGD L∞": PGD(EPS["inf"], steps=5, seed=0),
    "PGD L2": PGD(EPS["2"], steps=5, norm=2, seed=0),
    "SPSA": SPSA(EPS["inf"], steps=3, samples=8, seed=0),
    "APGD-CE L∞": APGD(EPS["inf"], steps=5, seed=0),
    "APGD-DLR L2": APGD(EPS["2"], norm=2, loss="dlr", steps=5, seed=0),
    "APGDT": APGDT(EPS["inf"], steps=5, n_target_classes=2, seed=0),
    "FAB L∞": FAB(EPS["inf"], steps=5, n_target_classes=2),
    "FAB L2": FAB(EPS["2"], norm=2, steps=5, n_target_classes=2),
    "Square L∞": Square(EPS["inf"], steps=30, seed=0),
    "Square L2": Square(EPS["2"], norm=2, steps=30, seed=0),
    "AutoAttack fast": AutoAttack(EPS["inf"], version="fast", steps=5, seed=0),
    "GaussianNoise": GaussianNoise(0.1, seed=0),
    "Corruption": Corruption("contrast", 3, seed=0),
}
# Tested in their own files: CleverhansAttack (TensorFlow and cleverhans only,
# tests/test_attacks_cleverhans.py).
ELSEWHERE = {"CleverhansAttack"}


@pytest.fixture(scope="module")
def setting():
    """A small image classifier of 5 classes (random weights) and inputs in [0, 1],
    labelled with its own predictions: clean accuracy 1."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, activation="tanh"),
                              keras.layers.Flatten(), keras.layers.Dense(5)])
    x = np.random.default_rng(0).uniform(0, 1, (16, 6, 6, 1)).astype("float32")
    y = np.argmax(model.predict(x, verbose=0), axis=1)
    return model, x, y


def test_every_public_perturbation_is_in_the_registry():
    public = {name for name in robustness.__all__
              if inspect.isclass(getattr(robustness, name))
              and issubclass(getattr(robustness, name), robustness.Perturbation)
              and getattr(robustness, name) not in (robustness.Perturbation, robustness.Attack)}
    registered = {type(p).__name__ for p in REGISTRY.values()} | ELSEWHERE
    assert public <= registered, public - registered


@pytest.mark.parametrize("name", REGISTRY)
def test_config_round_trips(name):
    perturbation = REGISTRY[name]
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(perturbation))
    assert type(clone) is type(perturbation) and clone.get_config() == perturbation.get_config()
    assert clone.describe() == perturbation.describe()


@pytest.mark.parametrize("name", REGISTRY)
def test_describes_its_report_row(name):
    perturbation = REGISTRY[name]
    family, norm, size = perturbation.describe()
    assert isinstance(family, str) and family
    is_attack = isinstance(perturbation, robustness.Attack)
    assert (norm in ("inf", "2")) if is_attack else norm is None
    if is_attack:
        assert size == perturbation.eps == EPS[norm]


def _distance(delta, norm):
    flat = delta.reshape(len(delta), -1).astype("float64")
    return np.abs(flat).max(axis=1) if norm == "inf" else np.sqrt((flat ** 2).sum(axis=1))


@pytest.mark.parametrize("name", REGISTRY)
def test_perturbed_inputs_keep_shape_range_and_threat_model(setting, name):
    model, x, y = setting
    perturbation = REGISTRY[name]
    found = np.asarray(keras.ops.convert_to_numpy(perturbation(model, x, y)))
    assert found.shape == x.shape and np.all(np.isfinite(found))
    low, high = perturbation.input_range()
    assert found.min() >= low - 1e-6 and found.max() <= high + 1e-6
    _, norm, eps = perturbation.describe()
    if norm is not None:  # an attack stays inside its ε-ball (float32 rounding of x + δ)
        assert _distance(found - x, norm).max() <= eps * (1 + 1e-5) + 1e-6
        accuracy = np.mean(np.argmax(model.predict(found, verbose=0), axis=1) == y)
        assert accuracy < 1.0, "a large ε breaks some of a random model's own predictions"


@pytest.mark.parametrize("name", REGISTRY)
def test_inside_keras_evaluate(setting, name):
    """``PerturbedModel.evaluate`` perturbs each batch in Keras' own test step: an
    attack leaves the accuracy below 1 on the model's own predictions, as called
    directly; noise and corruptions leave a valid accuracy."""
    model, x, y = setting
    perturbation = REGISTRY[name]
    wrapper = PerturbedModel(model, type(perturbation).from_config(perturbation.get_config()))
    wrapper.compile(optimizer=None, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    accuracy = wrapper.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)["accuracy"]
    assert 0.0 <= accuracy <= 1.0
    if perturbation.describe()[1] is not None:
        assert accuracy < 1.0


def test_every_perturbation_shares_the_base_class_and_a_user_subclass_evaluates():
    from keras_lowrank.robustness import SPSA, Corruption, Perturbation

    for perturbation in (FGSM(0.1), PGD(0.1), SPSA(0.1), GaussianNoise(0.1),
                         Corruption("contrast", 3)):
        assert isinstance(perturbation, Perturbation)

    class Darken(Perturbation):
        clip = (0.0, 1.0)

        def perturb_in_graph(self, model, x, y=None):
            return x * 0.25

        def get_config(self):
            return {}

    x, y = unit_data()
    model = linear_classifier()
    report = evaluate_robustness(model, (x, y), corruptions=[Darken()], large_eps=None)
    expected = np.mean(keras.ops.convert_to_numpy(model(x * 0.25)).argmax(1) == y)
    assert report.rows[-1]["accuracy"] == pytest.approx(expected, abs=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(Darken()(model, x)), x * 0.25)
    with pytest.raises(ValueError, match="Perturbation"):
        PerturbedModel(model, object())

