"""End to end on real data: the LR layer makes the representation low rank."""

import keras
import pytest
from models import digits_cnn

from keras_lowrank import analysis, data

pytestmark = pytest.mark.slow

RANK = 10


def test_lr_layer_lowers_rank_on_digits_without_costing_accuracy():
    pytest.importorskip("tensorflow")  # data.load gives tf.data pipelines
    train, info = data.load("digits", "train", batch_size=32, seed=0)
    test, _ = data.load("digits", "test", batch_size=256)
    measured = {}
    for label, rank in (("baseline", None), ("lr", RANK)):
        keras.utils.set_random_seed(0)
        model = digits_cnn(lr_rank=rank)  # the LR layer's defaults
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(train, epochs=40, verbose=0)
        accuracy = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
        ranks = analysis.representation_ranks(model, test, layers=["features"])["features"]
        measured[label] = (accuracy, ranks.variance_rank)
    print(measured)
    (base_acc, base_rank), (lr_acc, lr_rank) = measured["baseline"], measured["lr"]
    assert lr_rank <= RANK + 2
    assert base_rank >= RANK + 6
    assert lr_acc >= base_acc - 0.02
    assert base_acc > 0.93
