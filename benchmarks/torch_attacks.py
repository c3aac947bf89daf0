"""Our attacks against torchattacks on Keras' torch backend: the same Keras model (a
``torch.nn.Module`` there), the same digits, the same budgets, timed in one run.

A digits CNN (Conv 16–Conv 32 stride 2–Dense 64–Dense 10) trained 15 epochs here, then on
``--examples`` test digits at L∞ ε = 0.1: APGD-CE (100 iterations, 1 restart), the
standard AutoAttack (APGD-CE 100, APGD-T 100 × 9 targets, FAB-T 100 × 9, Square 5000),
and AutoAttack "rand" (APGD-CE 100 and APGD-DLR 100, 20 passes per gradient) on the CNN
behind a random-phase layer (x + 0.05 sin(100 x + 2π u): a randomised defence).
torchattacks' ensembles are built from its parts at those budgets (its own ``AutoAttack``
runs 10 steps), each stage on what the earlier left robust, as AutoAttack does.
APGD-CE runs ``--repeats`` times, ours and theirs in turn (the median of each side and of
the per-pair ratios are the figures: single half-second runs vary by ±20 % on a shared
machine); the standard AutoAttack twice (the second call's seconds), then once more on
each side with seed 1 (how many examples each side's robust set changes by with other
random starts: the spread the two sides' difference is judged against); "rand" once after a
short warm-up. Robust accuracies ("rand": averaged over 20 fresh passes) and how many
examples the two robust sets differ on are printed too.

    KERAS_BACKEND=torch python benchmarks/torch_attacks.py [--examples 200] [--repeats 9] \
        [--out runs/torch_attacks.json]
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
    parser.add_argument("--repeats", type=int, default=9)
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
        adversarial = keras.ops.convert_to_numpy(APGD(0.1, steps=100, seed=0)(model, x, y))
        return np.argmax(keras.ops.convert_to_numpy(model(adversarial)), -1) == y

    def autoattack_theirs(seed=0):
        stages = [torchattacks.APGD(network, norm="Linf", eps=0.1, steps=100, n_restarts=1, seed=seed, loss="ce"),
                  torchattacks.APGDT(network, norm="Linf", eps=0.1, steps=100, n_restarts=1, seed=seed, n_classes=10),
                  torchattacks.FAB(network, norm="Linf", eps=0.1, steps=100, n_restarts=1, seed=seed,
                                   multi_targeted=True, n_classes=10),
                  torchattacks.Square(network, norm="Linf", eps=0.1, n_queries=5000, n_restarts=1, seed=seed)]
        robust = robust_theirs(images)
        for stage in stages:
            rows = np.flatnonzero(robust)
            if not len(rows):
                break
            adversarial = stage(images[rows], labels[rows])
            with torch.no_grad():
                robust[rows] = (network(adversarial).argmax(1) == labels[rows]).numpy()
        return robust

    def autoattack_ours(seed=0):
        return AutoAttack(0.1, seed=seed).run(model, x, y).robust

    results = {"examples": len(y), "torch": torch.__version__, "keras": keras.__version__,
               "torchattacks": torchattacks.__version__, "threads": torch.get_num_threads()}
    apgd_ours(), apgd_theirs()  # warm-up
    pairs = []
    for _ in range(args.repeats):
        pair = []
        for run in (apgd_ours, apgd_theirs):
            start = time.perf_counter()
            robust = run()
            pair.append(time.perf_counter() - start)
        pairs.append(pair)
    pairs = np.array(pairs)
    row = {"ours_median_s": round(float(np.median(pairs[:, 0])), 3),
           "torchattacks_median_s": round(float(np.median(pairs[:, 1])), 3),
           "ratio_median": round(float(np.median(pairs[:, 0] / pairs[:, 1])), 2),
           "ratio_range": [round(float(r), 2) for r in (np.min(pairs[:, 0] / pairs[:, 1]),
                                                         np.max(pairs[:, 0] / pairs[:, 1]))],
           "robust_accuracy_ours": float(np.mean(apgd_ours())), "robust_accuracy_theirs": float(np.mean(robust))}
    results["APGD-CE-100"] = row
    print("APGD-CE-100", json.dumps(row))
    rand = _rand_row(model, x, y, network, images, labels, torch, torchattacks)
    results["AutoAttack rand (randomised model)"] = rand
    print("AutoAttack rand", json.dumps(rand))
    for name, ours, theirs in (("AutoAttack standard", autoattack_ours, autoattack_theirs),):
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
        ours_robust, theirs_robust = row.pop("ours_robust"), row.pop("torchattacks_robust")
        row["differing_examples"] = int(np.sum(ours_robust != theirs_robust))
        # The seeds' spread: each side against itself with other random starts.
        ours_1, theirs_1 = ours(seed=1), theirs(seed=1)
        row["differing_examples_seed_1_vs_0"] = {"ours": int(np.sum(ours_1 != ours_robust)),
                                                 "torchattacks": int(np.sum(theirs_1 != theirs_robust))}
        row["differing_examples_ours_vs_torchattacks_seed_1"] = int(np.sum(ours_1 != theirs_1))
        row["ratio_ours_to_theirs"] = round(row["ours"]["second_s"] / row["torchattacks"]["second_s"], 2)
        results[name] = row
        print(name, json.dumps(row))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)


class RandomPhase(keras.layers.Layer):
    """x + 0.05 sin(100 x + 2π u), u uniform per pixel and pass."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed = keras.random.SeedGenerator(0)

    def call(self, x):
        u = keras.random.uniform(keras.ops.shape(x), seed=self.seed)
        return x + 0.05 * keras.ops.sin(100.0 * x + 2 * np.pi * u)


def _rand_row(base, x, y, network_of, images, labels, torch, torchattacks):
    """AutoAttack "rand" against torchattacks' APGD-CE then APGD-DLR with eot_iter=20,
    on the CNN behind ``RandomPhase``."""
    model = keras.Sequential([keras.Input(x.shape[1:]), RandomPhase()] + base.layers)
    network = type(network_of)(model).eval()

    def robust(adversarial):
        return float(np.mean([np.mean(np.argmax(keras.ops.convert_to_numpy(model(adversarial)), -1) == y)
                              for _ in range(20)]))

    def ours():
        return AutoAttack(0.1, version="rand", seed=0).run(model, x, y).x_adv

    def theirs():
        adversarial = images.clone()
        with torch.no_grad():
            alive = np.flatnonzero((network(images).argmax(1) == labels).numpy())
        for loss in ("ce", "dlr"):
            found = torchattacks.APGD(network, norm="Linf", eps=0.1, steps=100, n_restarts=1, seed=0, loss=loss,
                                      eot_iter=20)(images[alive], labels[alive])
            with torch.no_grad():
                fooled = (network(found).argmax(1) != labels[alive]).numpy()
            adversarial[alive[fooled]] = found[fooled]
            alive = alive[~fooled]
        return adversarial.detach().permute(0, 2, 3, 1).numpy()

    AutoAttack(0.1, version="rand", steps=2, seed=0).run(model, x[:8], y[:8])  # warm-up
    row = {}
    for side, run in (("ours", ours), ("torchattacks", theirs)):
        start = time.perf_counter()
        adversarial = run()
        row[side] = {"seconds": round(time.perf_counter() - start, 2), "robust_accuracy": robust(adversarial)}
    row["ratio_ours_to_theirs"] = round(row["ours"]["seconds"] / row["torchattacks"]["seconds"], 2)
    row["one_pass_apgd_ce_robust_accuracy"] = robust(keras.ops.convert_to_numpy(APGD(0.1, seed=0)(model, x, y)))
    return row


if __name__ == "__main__":
    main()
