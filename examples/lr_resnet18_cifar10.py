"""ResNet-18 on CIFAR-10 with the LR layer on its penultimate representation (Sanyal et
al., "Robustness via Deep Low-Rank Representations"), against the same network without
it: clean accuracy, the representation's rank, Gaussian noise, FGSM and PGD-7 at 8/255
(the authors' attack), optionally AutoAttack, with the gradient-masking checks.

    python examples/lr_resnet18_cifar10.py --data-dir ~/tensorflow_datasets   # real CIFAR-10
    python examples/lr_resnet18_cifar10.py --synthetic --epochs 1 --limit 256 --width 0.125  # smoke run

Real data: tfds ``cifar10`` (downloaded by tfds unless ``--data-dir`` holds it). The
authors report (ResNet-50, PGD 7 steps at ε = 8/255, no adversarial training) LR 79.1 %
against 43.1 % — figures far above what attacks to today's standard find on models
without adversarial training: compare under ``--autoattack`` and read the checks.
docs/guides/cifar10.md says what a run costs.
"""

import time

import keras

from keras_lowrank import analysis
from keras_lowrank.robustness import FGSM, PGD, AutoAttack, evaluate_robustness
from keras_lowrank_experiments.cifar import example_arguments, finish_example, resnet18_cifar, start_example

parser = example_arguments(__doc__.splitlines()[0], "lr_resnet18_cifar10.json", "channel multiplier (1 = ResNet-18)")
parser.add_argument("--rank", type=int, default=10, help="the LR layer's rank")
parser.add_argument("--variants", nargs="+", default=["baseline", "lr"], choices=["baseline", "lr"])
parser.add_argument("--eps", type=float, nargs="+", default=[2 / 255, 8 / 255],
                    help="L∞ budgets of FGSM and PGD-7, in [0, 1] pixel units")
parser.add_argument("--sigmas", type=float, nargs="+", default=[0.02, 0.05, 0.1], help="Gaussian noise σ")
args = parser.parse_args()
train, test, x_attack, y_attack, results = start_example(args)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

for variant in args.variants:
    keras.utils.set_random_seed(args.seed)
    model = resnet18_cifar(width=args.width, lr_rank=args.rank if variant == "lr" else None, seed=args.seed)
    model.compile(keras.optimizers.Adam(args.learning_rate), loss, metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, verbose=2)
    seconds = time.perf_counter() - start
    clean = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
    ranks = analysis.representation_ranks(model, x_attack, layers=["features"])["features"]
    attacks = [FGSM(e) for e in args.eps] + [PGD(e, steps=7, seed=args.seed) for e in args.eps]
    if args.autoattack:
        attacks += [AutoAttack(e, seed=args.seed) for e in args.eps]
    report = evaluate_robustness(model, (x_attack, y_attack), attacks=attacks, noise_sigmas=args.sigmas,
                                 seed=args.seed)
    results["variants"][variant] = {"clean_accuracy": clean, "train_seconds": seconds,
                                    "features": ranks.num_features, "variance_rank_99": ranks.variance_rank,
                                    "effective_rank": ranks.effective_rank, "robustness": report.as_dict()}
    print(f"\n== {variant} == clean accuracy {clean:.4f} (whole test split), trained in {seconds:.0f} s; "
          f"features: {ranks.num_features} dims, 99% of the variance in {ranks.variance_rank}")
    print(report.to_markdown())

print(f"\nOn the {len(x_attack)} attacked test examples:")
print("\n| variant | clean | 99 % variance rank | " + " | ".join(f"σ {s:g}" for s in args.sigmas) + " | "
      + " | ".join(f"PGD-7 {e:.4f}" for e in args.eps) + " |")
print("| --- " * (3 + len(args.sigmas) + len(args.eps)) + "|")
for variant, row in results["variants"].items():
    accuracy = {r["name"]: r["accuracy"] for r in row["robustness"]["rows"]}
    cells = ([f"{accuracy[f'Gaussian σ={s:g}']:.4f}" for s in args.sigmas]
             + [f"{accuracy[PGD(e, steps=7).name]:.4f}" for e in args.eps])
    print(f"| {variant} | {accuracy['clean']:.4f} | {row['variance_rank_99']} | " + " | ".join(cells) + " |")
finish_example(args, results)
