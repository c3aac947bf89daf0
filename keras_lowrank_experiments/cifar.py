"""The papers' CIFAR-10 settings: VGG16 and ResNet-18 for 32×32 images, and the data
(tfds ``cifar10`` where present, or a synthetic stand-in for runs without it).

Used by ``examples/dlrt_vgg16_cifar10.py`` and ``examples/lr_resnet18_cifar10.py``.
The models take [0, 1] images (the range attacks and noise are defined in) and
standardise them with CIFAR-10's channel statistics in their first layer.
"""

import keras
import numpy as np

from keras_lowrank import data
from keras_lowrank.layers import LowRankProjection

# CIFAR-10 training-set channel means and standard deviations (the usual constants).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
VGG16_BLOCKS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
SYNTHETIC_NOTE = ("SYNTHETIC DATA (--synthetic): random class patterns stand in for CIFAR-10; "
                  "these numbers test the pipeline and say nothing about the papers' results.")


def _standardize():
    return keras.layers.Normalization(mean=CIFAR10_MEAN, variance=tuple(s * s for s in CIFAR10_STD),
                                      name="standardize")


def _channels(n, width):
    return max(4, int(round(n * width)))


def vgg16_cifar(num_classes=10, width=1.0, dense_units=512, seed=0, image_size=32):
    """VGG16 with batch normalisation for 32×32×3 inputs (the DLRT papers' network):
    13 3×3 convolutions in five blocks (64–128–256–512–512 channels, ×``width``), each
    block ending in 2×2 max-pooling, then Dense(512)–Dense(512)–Dense(classes). Logits.
    ``image_size`` (a multiple of 32, e.g. 224): the same network on larger images, its
    first dense layer as wide as the last feature map is large (a compute-bound benchmark)."""
    if image_size % 32 or image_size < 32:
        raise ValueError(f"image_size must be a positive multiple of 32 (five 2×2 poolings), got {image_size}.")
    init = iter(range(seed, seed + 100))
    layers = [keras.Input((image_size, image_size, 3)), _standardize()]
    conv = 0
    for item in VGG16_BLOCKS:
        if item == "M":
            layers.append(keras.layers.MaxPooling2D())
            continue
        conv += 1
        layers += [keras.layers.Conv2D(_channels(item, width), 3, padding="same", use_bias=False,
                                       kernel_initializer=keras.initializers.HeNormal(next(init)),
                                       name=f"conv_{conv}"),
                   keras.layers.BatchNormalization(name=f"bn_{conv}"), keras.layers.ReLU()]
    units = _channels(dense_units, width)
    layers += [keras.layers.Flatten(),
               keras.layers.Dense(units, activation="relu", name="fc_1",
                                  kernel_initializer=keras.initializers.HeNormal(next(init))),
               keras.layers.Dense(units, activation="relu", name="fc_2",
                                  kernel_initializer=keras.initializers.HeNormal(next(init))),
               keras.layers.Dense(num_classes, name="logits",
                                  kernel_initializer=keras.initializers.GlorotUniform(next(init)))]
    return keras.Sequential(layers, name="vgg16_cifar")


def _basic_block(x, filters, stride, name, seeds):
    shortcut = x
    y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                            kernel_initializer=keras.initializers.HeNormal(next(seeds)), name=f"{name}_conv1")(x)
    y = keras.layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                            kernel_initializer=keras.initializers.HeNormal(next(seeds)), name=f"{name}_conv2")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False,
                                       kernel_initializer=keras.initializers.HeNormal(next(seeds)),
                                       name=f"{name}_shortcut")(x)
        shortcut = keras.layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))


def resnet18_cifar(num_classes=10, width=1.0, lr_rank=None, lr_kwargs=None, seed=0):
    """ResNet-18 for 32×32×3 inputs (He et al. 2016, the CIFAR variant: a 3×3 stem, no
    max-pooling): four stages of two basic blocks (64–128–256–512 channels, ×``width``),
    global average pooling to the "features" representation, then Dense(classes). With
    ``lr_rank`` a ``LowRankProjection`` of that rank sits on "features" (Sanyal et al.'s
    LR layer on the penultimate representation). Logits."""
    seeds = iter(range(seed, seed + 100))
    inputs = keras.Input((32, 32, 3))
    x = _standardize()(inputs)
    x = keras.layers.Conv2D(_channels(64, width), 3, padding="same", use_bias=False,
                            kernel_initializer=keras.initializers.HeNormal(next(seeds)), name="stem")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="stem_bn")(x))
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, _channels(filters, width), stride, f"stage{stage + 1}_block{block + 1}", seeds)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    if lr_rank is not None:
        x = LowRankProjection(lr_rank, name="low_rank", **(lr_kwargs or {}))(x)
    outputs = keras.layers.Dense(num_classes, name="logits",
                                 kernel_initializer=keras.initializers.GlorotUniform(next(seeds)))(x)
    return keras.Model(inputs, outputs, name="resnet18_cifar" + ("_lr" if lr_rank else ""))


def synthetic_cifar10(split, num_examples, seed=0, image_size=32):
    """Learnable stand-in data shaped like CIFAR-10: each class a fixed smooth random
    pattern (the same in both splits), each image that pattern plus per-image noise, in
    [0, 1]. Arrays ``(x float32 (n, s, s, 3), y int32 (n,))``, s = ``image_size`` (a
    multiple of 4; 32 by default)."""
    if image_size % 4 or image_size < 4:
        raise ValueError(f"image_size must be a positive multiple of 4, got {image_size}.")
    block = image_size // 4
    patterns = np.random.default_rng(12345).normal(size=(10, 4, 4, 3))
    patterns = np.repeat(np.repeat(patterns, block, axis=1), block, axis=2)  # s×s blocks
    rng = np.random.default_rng(seed + (0 if split == "train" else 1))
    y = rng.integers(0, 10, num_examples).astype("int32")
    x = 0.5 + 0.15 * patterns[y] + 0.1 * rng.normal(size=(num_examples, image_size, image_size, 3))
    return np.clip(x, 0.0, 1.0).astype("float32"), y


def example_arguments(description, out, width_help):
    """The two examples' common options: data (``--data-dir``, ``--synthetic``,
    ``--limit``), training (``--epochs``, ``--batch-size``, ``--learning-rate``), attacks
    (``--autoattack``, ``--attack-examples``), ``--width``, ``--seed``, ``--out`` (default
    ``out``) and ``--overwrite``. Returns the parser, for each example's own options."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", help="tfds data directory holding cifar10 (default: tfds' own, "
                                           "downloading it if needed)")
    parser.add_argument("--synthetic", action="store_true",
                        help="run end to end on synthetic CIFAR-shaped data (no download; numbers are "
                             "not CIFAR-10 results)")
    parser.add_argument("--limit", type=int, help="use only the first N training and N test examples")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--autoattack", action="store_true", help="also standard AutoAttack at each ε (slow)")
    parser.add_argument("--attack-examples", type=int, default=1000, help="test examples attacked")
    parser.add_argument("--width", type=float, default=1.0, help=width_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=out, help="results as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return parser


def start_example(args):
    """Refuses to replace an existing ``args.out`` without ``--overwrite``, says so when
    the data is synthetic, loads it. Returns (train, test, x_attack, y_attack, results):
    the first ``--attack-examples`` test arrays, and the results dict to fill."""
    import os

    if os.path.exists(args.out) and not args.overwrite:
        raise SystemExit(f"{args.out} exists: pass --overwrite to replace it, or --out another path.")
    if args.synthetic:
        print(SYNTHETIC_NOTE)
    train, test, x_test, y_test = load_cifar10(args, args.batch_size, args.seed)
    results = {"synthetic": args.synthetic, "arguments": vars(args), "variants": {}}
    return train, test, x_test[:args.attack_examples], y_test[:args.attack_examples], results


def finish_example(args, results):
    """Says again that synthetic numbers are not CIFAR-10's, writes ``results`` to ``args.out``."""
    import json

    if args.synthetic:
        print(SYNTHETIC_NOTE)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


def load_cifar10(args, batch_size, seed=0):
    """(train, test, x_test, y_test) from tfds ``cifar10`` (``args.data_dir``) or, with
    ``args.synthetic``, from ``synthetic_cifar10`` (5000 / 1000 examples). ``train`` and
    ``test`` are batched datasets; the test arrays feed the attacks. ``args.limit``
    keeps the first N examples of each split."""
    if args.synthetic:
        sizes = {"train": 5000, "test": 1000}
        if args.limit:
            sizes = {k: min(v, args.limit) for k, v in sizes.items()}
        x_train, y_train = synthetic_cifar10("train", sizes["train"], seed)
        x_test, y_test = synthetic_cifar10("test", sizes["test"], seed)
    else:
        arrays = []
        for split in ("train", "test"):
            split_name = f"{split}[:{args.limit}]" if args.limit else split
            dataset, _ = data.load("cifar10", split_name, batch_size=1024, shuffle=False,
                                   data_dir=args.data_dir)
            batches = list(dataset.as_numpy_iterator())
            x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
            arrays.append((x[:args.limit], y[:args.limit]))  # (the slice above reads no more than that)
        (x_train, y_train), (x_test, y_test) = arrays
    train = data.ArrayBatches(x_train, y_train, batch_size=batch_size, shuffle=True, seed=seed)
    test = data.ArrayBatches(x_test, y_test, batch_size=max(batch_size, 256), shuffle=False)
    return train, test, x_test, y_test
