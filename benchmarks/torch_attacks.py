"""Our attacks against torchattacks on Keras' torch backend: the same Keras model (a
``torch.nn.Module`` there), the same digits, the same budgets, timed in one run.

A digits CNN (Conv 16–Conv 32 stride 2–Dense 64–Dense 10) trained 15 epochs here, then on
``--examples`` test digits at L∞ ε = 0.1: APGD-CE (100 iterations, 1 restart) and the
standard AutoAttack (APGD-CE 100, APGD-T 100 × 9 targets, FAB-T 100 × 9, Square 5000).
torchattacks' ensemble is built from its parts at those budgets (its own ``AutoAttack``
runs 10 steps), each stage on what the earlier left robust, as AutoAttack does. Each is
run twice; the second call's seconds are the figure (the first includes warm-up). Robust
accuracies and how many examples the two robust sets differ on are printed too.

    KERAS_BACKEND=torch python benchmarks/torch_attacks.py [--examples 200] [--out runs/torch_attacks.json]
"""

import argparse
import json
import os
import time

import keras
import numpy as np

from keras_lowrank import data
from keras_lowrank.robustness import APGD, AutoAttack


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--out", default="runs/torch_attacks.json")
    args = parser.parse_args()
    if keras.backend.backend() != "torch":
        raise SystemExit("run with KERAS_BACKEND=torch")
    import torch
    import torchattacks

    keras.utils.set_random_seed(0)
    x_train, y_train = data.load_digits_arrays("train")
    x_test, y_test = data.load_digits_arrays("test")
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"), keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=15, batch_size=64, verbose=0)
    x, y = x_test[:args.examples], y_test[:args.examples]

    class NCHW(torch.nn.Module):  # torchattacks' Square and FAB read images as NCHW
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            return self.inner(images.permute(0, 2, 3, 1))

    network = NCHW(model).eval()
    images, labels = torch.tensor(x).permute(0, 3, 1, 2).contiguous(), torch.tensor(y).long()

    def robust_theirs(adversarial):
        with torch.no_grad():
            return (network(adversarial).argmax(1) == labels).numpy()

    def apgd_theirs():
        return robust_theirs(torchattacks.APGD(network, norm="Linf", eps=0.1, steps=100, n_restarts=1, seed=0,
                                               loss="ce")(images, labels))

    def apgd_ours():
        adversarial = keras.ops.convert_to_numpy(APGD(0.1, n_iter=100, seed=0)(model, x, y))
        return np.argmax(keras.ops.convert_to_numpy(model(adversarial)), -1) == y

    def autoattack_theirs():
        stages = [torchattacks.APGD(network, norm="Linf", eps=0.1, steps=100, n_restarts=1, seed=0, loss="ce"),
                  torchattacks.APGDT(network, norm="Linf", eps=0.1, steps=100, n_restarts=1, seed=0, n_classes=10),
                  torchattacks.FAB(network, norm="Linf", eps=0.1, steps=100, n_restarts=1, seed=0,
                                   multi_targeted=True, n_classes=10),
                  torchattacks.Square(network, norm="Linf", eps=0.1, n_queries=5000, n_restarts=1, seed=0)]
        robust = robust_theirs(images)
        for stage in stages:
            rows = np.flatnonzero(robust)
            if not len(rows):
                break
            adversarial = stage(images[rows], labels[rows])
            with torch.no_grad():
                robust[rows] = (network(adversarial).argmax(1) == labels[rows]).numpy()
        return robust

    def autoattack_ours():
        return AutoAttack(0.1, seed=0).run(model, x, y).robust

    results = {"examples": len(y), "torch": torch.__version__, "keras": keras.__version__,
               "torchattacks": torchattacks.__version__, "threads": torch.get_num_threads()}
    for name, ours, theirs in (("APGD-CE-100", apgd_ours, apgd_theirs),
                               ("AutoAttack standard", autoattack_ours, autoattack_theirs)):
        row = {}
        for side, run in (("ours", ours), ("torchattacks", theirs)):
            seconds = []
            for _ in range(2):
                start = time.perf_counter()
                robust = run()
                seconds.append(time.perf_counter() - start)
            row[side] = {"first_s": round(seconds[0], 2), "second_s": round(seconds[1], 2),
                         "robust_accuracy": float(np.mean(robust))}
            row[side + "_robust"] = robust
        row["differing_examples"] = int(np.sum(row.pop("ours_robust") != row.pop("torchattacks_robust")))
        row["ratio_ours_to_theirs"] = round(row["ours"]["second_s"] / row["torchattacks"]["second_s"], 2)
        results[name] = row
        print(name, json.dumps(row))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
