"""End to end on real digits: PGD adversarial training buys real robustness."""

import keras
import pytest
from models import digits_cnn as small_cnn

from keras_lowrank import data
from keras_lowrank.robustness import FGSM, PGD, PerturbedModel, evaluate_robustness

pytestmark = pytest.mark.slow
EPS = (0.05, 0.1, 0.2)


def test_pgd_training_is_far_more_robust_and_passes_all_checks():
    pytest.importorskip("tensorflow")  # data.load gives tf.data pipelines
    train, _ = data.load("digits", "train", batch_size=32, seed=0)
    test, _ = data.load("digits", "test", batch_size=256)
    reports = {}
    for label in ("standard", "adversarial"):
        keras.utils.set_random_seed(0)
        model = small_cnn()
        trainer = model if label == "standard" else PerturbedModel(model, PGD(0.1, steps=5))
        trainer.compile(keras.optimizers.Adam(1e-3),
                        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        trainer.fit(train, epochs=30, verbose=0)
        reports[label] = evaluate_robustness(
            model, test, attacks=[FGSM(e) for e in EPS] + [PGD(e, steps=10, seed=0) for e in EPS])
        print(label, reports[label], sep="\n")
    standard, robust = reports["standard"], reports["adversarial"]
    assert standard.all_checks_passed and robust.all_checks_passed
    assert robust.accuracy("PGD", 0.1) >= standard.accuracy("PGD", 0.1) + 0.25
    assert robust.clean_accuracy >= standard.clean_accuracy - 0.03
