"""What a model outputs (keras_lowrank/robustness/_classifier.py): a ``from_logits``
flag the model contradicts is refused by every attack and the report."""

import keras
import pytest
from keras import ops

from keras_lowrank.robustness import FGSM, PGD, evaluate_robustness


class _SoftmaxByOps(keras.layers.Layer):
    """A softmax no structural check recognises."""

    def call(self, x):
        return ops.softmax(x)


def test_from_logits_that_the_model_contradicts_is_refused_everywhere(rng):
    from keras_lowrank.robustness import APGD, FAB, AutoAttack, Square

    x = rng.uniform(size=(24, 6)).astype("float32")
    y = rng.integers(0, 4, size=24)
    body = [keras.Input((6,)), keras.layers.Dense(16, activation="relu")]
    softmax = keras.Sequential(body + [keras.layers.Dense(4, activation="softmax")])
    hidden = keras.Sequential(body + [keras.layers.Dense(4), _SoftmaxByOps()])
    logits = keras.Sequential(body + [keras.layers.Dense(4)])
    wrong = [(FAB(0.1, steps=5, from_logits=True), softmax), (PGD(0.1, from_logits=True), hidden),
             (Square(0.1, steps=5, from_logits=True), hidden), (APGD(0.1, steps=5, from_logits=False), logits),
             (FGSM(0.1, from_logits=False), logits)]
    for attack, model in wrong:
        with pytest.raises(ValueError, match="from_logits"):
            attack(model, x, y)
        with pytest.raises(ValueError, match="from_logits"):
            evaluate_robustness(model, (x, y), attacks=[attack], large_eps=None)
    with pytest.raises(ValueError, match="from_logits=True"):
        AutoAttack(0.1, version="fast", steps=5, from_logits=True).run(hidden, x, y)
    with pytest.raises(ValueError, match="from_logits"):
        evaluate_robustness(softmax, (x, y), attacks=[PGD(0.1)], from_logits=True, large_eps=None)
    # the flags that agree with the model run
    PGD(0.1, from_logits=False)(hidden, x, y)
    FAB(0.1, steps=5)(softmax, x, y)
    evaluate_robustness(logits, (x, y), attacks=[PGD(0.1, from_logits=True)], large_eps=None)

