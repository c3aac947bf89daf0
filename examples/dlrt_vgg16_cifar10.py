"""VGG16 on CIFAR-10 trained low-rank with DLRT, with and without the spectral
regularizer β (Schotthöfer, Wang, Schnake 2025), against the dense network; then
their robustness (FGSM, PGD-10, optionally AutoAttack) and compression.

Variants (``--variants``): ``dense`` (Adam), ``dlrt`` (every Conv2D/Dense but the
first and the classifier low rank from the start — ``to_low_rank`` of the freshly
initialised network — trained by ``DLRT(Adam)``, ranks adapting with ``--tol``), and
``dlrt_beta`` (the same with the spectral regularizer, β = ``--beta``, 0.15 as in the
authors' VGG16 script).

    python examples/dlrt_vgg16_cifar10.py --data-dir ~/tensorflow_datasets   # real CIFAR-10
    python examples/dlrt_vgg16_cifar10.py --synthetic --epochs 1 --limit 256 --width 0.125  # smoke run

Real data: tfds ``cifar10`` (downloaded by tfds unless ``--data-dir`` holds it). The
authors' published numbers (VGG16, one seed, their normalised-image FGSM at 0.006):
dense 91.09 % clean / 53.58 % FGSM; low rank 89.18 / 46.69 at ~94.6 % compression;
low rank + β = 0.15 89.21 / 49.42 at ~94.2 %. docs/guides/cifar10.md says what a
run costs and how to compare (our attacks are L∞ in pixel units).
"""

import time

import keras

from keras_lowrank import DLRT, compression
from keras_lowrank.robustness import FGSM, PGD, AutoAttack, evaluate_robustness
from keras_lowrank_experiments.cifar import example_arguments, finish_example, start_example, vgg16_cifar

parser = example_arguments(__doc__.splitlines()[0], "dlrt_vgg16_cifar10.json",
                           "channel multiplier (1 = the paper's VGG16)")
parser.add_argument("--variants", nargs="+", default=["dense", "dlrt", "dlrt_beta"],
                    choices=["dense", "dlrt", "dlrt_beta"])
parser.add_argument("--rank", type=int, default=64, help="initial rank of the low-rank layers")
parser.add_argument("--max-rank", type=int, default=128, help="the most each low-rank layer may grow to")
parser.add_argument("--tol", type=float, default=0.1, help="DLRT's truncation tolerance")
parser.add_argument("--beta", type=float, default=0.15, help="the spectral regularizer's weight in dlrt_beta")
parser.add_argument("--eps", type=float, nargs="+", default=[1 / 255, 2 / 255, 4 / 255],
                    help="L∞ budgets of FGSM and PGD-10, in [0, 1] pixel units")
args = parser.parse_args()
train, test, x_attack, y_attack, results = start_example(args)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

for variant in args.variants:
    keras.utils.set_random_seed(args.seed)
    model = vgg16_cifar(width=args.width, seed=args.seed)
    optimizer = keras.optimizers.Adam(args.learning_rate)
    if variant != "dense":
        # low rank from the start: the random initial kernels' SVD at --rank (the first
        # convolution and the classifier stay dense, as in the paper)
        model = compression.to_low_rank(model, rank=args.rank, max_rank=args.max_rank, tol=args.tol,
                                        spectral_weight=args.beta if variant == "dlrt_beta" else 0.0,
                                        skip_first=True)
        optimizer = DLRT(optimizer)
    model.compile(optimizer, loss, metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, verbose=2)
    seconds = time.perf_counter() - start
    attacks = [FGSM(e) for e in args.eps] + [PGD(e, steps=10, seed=args.seed) for e in args.eps]
    if args.autoattack:
        attacks += [AutoAttack(e, seed=args.seed) for e in args.eps]
    report = evaluate_robustness(model, (x_attack, y_attack), attacks=attacks, seed=args.seed)
    clean = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
    row = {"clean_accuracy": clean, "train_seconds": seconds, "parameters": model.count_params(),
           "robustness": report.as_dict()}
    if variant != "dense":
        summary = compression.compression_summary(model)
        row["compression_rate"] = summary.total["model_compression_rate"]
        row["exported_parameters"] = summary.total["model_exported_params"]
        print(summary)
    results["variants"][variant] = row
    print(f"\n== {variant} == clean accuracy {clean:.4f} (whole test split), trained in {seconds:.0f} s")
    print(report.to_markdown())

print(f"\nOn the {len(x_attack)} attacked test examples:")
print("\n| variant | clean | " + " | ".join(f"FGSM {e:.4f}" for e in args.eps)
      + " | " + " | ".join(f"PGD-10 {e:.4f}" for e in args.eps) + " | compression |")
print("| --- " * (3 + 2 * len(args.eps)) + "|")
for variant, row in results["variants"].items():
    accuracy = {r["name"]: r["accuracy"] for r in row["robustness"]["rows"]}
    cells = [f"{accuracy[FGSM(e).name]:.4f}" for e in args.eps] + [f"{accuracy[PGD(e, steps=10).name]:.4f}"
                                                                  for e in args.eps]
    rate = f"{row['compression_rate']:.1%}" if "compression_rate" in row else "—"
    print(f"| {variant} | {accuracy['clean']:.4f} | " + " | ".join(cells) + f" | {rate} |")
finish_example(args, results)
