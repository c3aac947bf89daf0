"""What robust training does to a digits CNN's representations.

A standard CNN and a PGD-trained one (adversarial training is ``fit`` on a
PerturbedModel), then: CKA maps within each model and across the two, with a
block-structure score; class selectivity of every layer; the dimensionality of
the changes an attack and Gaussian noise cause in each layer; and the class
selectivity regularizer (α < 0 lowers selectivity). Writes cka_maps.png.

    python examples/representations_digits.py [--epochs 20]   (about a minute on a laptop CPU)
"""

import argparse

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from keras_lowrank import analysis, data  # noqa: E402
from keras_lowrank.regularizers import SelectivityRegularizedModel  # noqa: E402
from keras_lowrank.robustness import FGSM, PGD, GaussianNoise, PerturbedModel  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=20)
epochs = parser.parse_args().epochs


def small_cnn(input_shape, num_classes):
    """Conv(16)–Conv(32, stride 2)–Dense(64, "features")–Dense(classes): logits."""
    init = lambda k: keras.initializers.GlorotUniform(seed=k)  # noqa: E731
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init(0), name="conv_1"),
        keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", kernel_initializer=init(1),
                            name="conv_2"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", kernel_initializer=init(2), name="features"),
        keras.layers.Dense(num_classes, kernel_initializer=init(3), name="logits"),
    ])


train, info = data.load("digits", "train", batch_size=32)
test, _ = data.load("digits", "test", batch_size=128)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def trained(label, wrap=lambda m: m):
    keras.utils.set_random_seed(0)
    model = small_cnn(info.input_shape, info.num_classes)
    trainer = wrap(model)  # a wrapper trains `model` (shared weights)
    trainer.compile("adam", loss, metrics=["accuracy"])
    trainer.fit(train, epochs=epochs, verbose=0)
    model.compile(loss=loss, metrics=["accuracy"])
    print(f"{label}: clean accuracy {model.evaluate(test, verbose=0, return_dict=True)['accuracy']:.3f}")
    return model


standard = trained("standard")
robust = trained("PGD-trained", lambda m: PerturbedModel(m, PGD(0.1, steps=5)))

# CKA (minibatch, unbiased HSIC) between every pair of Conv/Dense layers, one pass each.
maps = {"standard": analysis.cka_map(standard, test),
        "PGD-trained": analysis.cka_map(robust, test),
        "standard × PGD-trained": analysis.cka_map(standard, test, model_b=robust)}
fig, axes = plt.subplots(1, 3, figsize=(13, 4))
for ax, (title, cka) in zip(axes, maps.items()):
    cka.draw(ax, title, colorbar=ax is axes[-1])
fig.tight_layout()
fig.savefig("cka_maps.png", dpi=120)
for title in ("standard", "PGD-trained"):
    print(f"{title}: block-structure score {maps[title].block_structure_score():.3f}")
cross = maps["standard × PGD-trained"]
print("same layer across the two models:",
      {name: round(float(cross.matrix[i, i]), 3) for i, name in enumerate(cross.rows)})

for title, model in (("standard", standard), ("PGD-trained", robust)):
    print(f"\n== {title}: class selectivity (mean SI per layer) ==")
    print(analysis.class_selectivity(model, test).to_markdown())
    print("dimensionality of f(x + δ) − f(x) (PCs for 95 % of its variance):")
    for name, perturbation in (("FGSM ε=0.1", FGSM(0.1)), ("noise σ=0.1", GaussianNoise(0.1, seed=0))):
        dims = analysis.perturbation_dimensionality(model, test, perturbation)
        print(f"  {name}: " + ", ".join(f"{layer} {r.variance_rank}/{r.num_features}"
                                         for layer, r in dims.items()))

# The class-selectivity regularizer (Leavitt & Morcos): α < 0 lowers selectivity.
low_si = trained("α = −2", lambda m: SelectivityRegularizedModel(m, alpha=-2.0))
print(f"\nmean selectivity: standard {analysis.class_selectivity(standard, test).mean:.3f}, "
      f"α = −2 {analysis.class_selectivity(low_si, test).mean:.3f}")
