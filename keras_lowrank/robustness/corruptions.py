"""Common corruptions as tensor ops, usable wherever an attack is.

After Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (ICLR 2019), with the severity parameters of their
CIFAR-10-C script (`make_cifar_c.py`), on images in [0, 1] of shape (h, w, c):

    gaussian_noise  x + N(0, c²)                     c = .04 .06 .08 .09 .10
    shot_noise      Poisson(x·c) / c                  c = 500 250 100 75 50
    impulse_noise   salt and pepper, fraction c       c = .01 .02 .03 .05 .07
    brightness      V + c in HSV (x + c if gray)      c = .05 .10 .15 .20 .30
    contrast        (x − mean) · c + mean             c = .75 .50 .40 .30 .15
    gaussian_blur   blur with σ = c pixels            c = .40 .60 .70 .80 1.0
    pixelate        down to c·size, up nearest        c = .95 .90 .85 .75 .65
    jpeg            JPEG quality c (Pillow)           c = 80 65 58 50 40

Written in ``keras.ops``, so they run inside the compiled test step on a batch, like the
attacks; jpeg is Pillow's codec, as in the CIFAR-10-C script, called from the step
(``_host.on_host``). For the real CIFAR-10-C, load
``keras_lowrank.data.load("cifar10_corrupted/<name>_<severity>", "test")``.
"""

import io
import math

import keras
import numpy as np
from keras import ops

from keras_lowrank._host import on_host
from keras_lowrank.robustness._gradients import is_symbolic
from keras_lowrank.robustness.perturbations import Perturbation

SEVERITIES = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg": (80, 65, 58, 50, 40),
}
CORRUPTIONS = tuple(SEVERITIES)
# These need image batches (n, h, w, c); the others act per value on any shape.
IMAGE_CORRUPTIONS = ("gaussian_blur", "pixelate", "jpeg")


@keras.saving.register_keras_serializable(package="keras_lowrank")
class Corruption(Perturbation):
    """One corruption at one severity (1..5), applied per batch in-graph.

    Args:
        name: one of ``CORRUPTIONS``.
        severity: 1 (mild) … 5 (strong).
        seed: seed of the random corruptions.

    Examples:
        contrast scales the deviations from each image's mean.

        >>> import numpy as np
        >>> x = np.array([[[[0.2]], [[0.8]]]], "float32")  # one 2×1 image
        >>> corrupted = ops.convert_to_numpy(Corruption("contrast", 5)(None, x))
        >>> bool(abs(corrupted.mean() - 0.5) < 1e-6), bool(np.ptp(corrupted) < np.ptp(x))
        (True, True)

    References:
        - Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions
          and Perturbations", ICLR 2019: https://arxiv.org/abs/1903.12261
    """

    clip = (0.0, 1.0)  # the CIFAR-10-C corruptions act on images in [0, 1]

    def __init__(self, name, severity, seed=None):
        if name not in SEVERITIES:
            raise ValueError(
                f"Unknown corruption name={name!r}; choose one of {', '.join(CORRUPTIONS)}."
            )
        if severity not in (1, 2, 3, 4, 5):
            raise ValueError(f"`severity` must be 1, 2, 3, 4 or 5, got severity={severity!r}.")
        self.corruption = name
        self.severity = severity
        self.parameter = SEVERITIES[name][severity - 1]
        self._set_seed(seed)

    def get_config(self):
        return {"name": self.corruption, "severity": self.severity, "seed": self.seed}

    def describe(self):
        return f"corruption:{self.corruption}", None, self.severity

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @property
    def name(self):
        return f"{self.corruption} {self.severity}"

    @property
    def host_call(self):
        return self.corruption == "jpeg"  # Pillow's codec

    def __repr__(self):
        return f"Corruption({self.corruption!r}, severity={self.severity})"

    def perturb_in_graph(self, model, x, y=None):
        x = ops.convert_to_tensor(x)
        if self.corruption in IMAGE_CORRUPTIONS and len(x.shape) != 4:
            raise ValueError(
                f"The {self.corruption!r} corruption needs image batches (n, h, w, c), got "
                f"inputs of shape {tuple(x.shape)}; on other data use "
                f"all_corruptions(image=False).")
        if self.corruption == "jpeg" and x.shape[-1] not in (1, 3):
            raise ValueError(
                f"The 'jpeg' corruption needs gray or RGB images (1 or 3 channels), got inputs of "
                f"shape {tuple(x.shape)}.")
        return ops.clip(getattr(self, "_" + self.corruption)(x, self.parameter), 0.0, 1.0)

    __call__ = perturb_in_graph

    def _gaussian_noise(self, x, c):
        return x + c * keras.random.normal(ops.shape(x), seed=self._seed)

    def _shot_noise(self, x, c):
        # keras.random has no Poisson: Binomial(10c, x/10) has its mean x·c and
        # variance x·c·(1 − x/10), within 10% of Poisson's.
        counts = ops.full(ops.shape(x), 10.0 * c)
        draws = keras.random.binomial(ops.shape(x), counts, ops.clip(x, 0, 1) / 10.0,
                                      seed=self._seed)
        return draws / c

    def _impulse_noise(self, x, c):
        u = keras.random.uniform(ops.shape(x), seed=self._seed)
        return ops.where(u < c / 2, 0.0, ops.where(u < c, 1.0, x))

    def _brightness(self, x, c):
        if len(x.shape) != 4 or x.shape[-1] != 3:  # not RGB images: per value
            return x + c
        hsv = ops.image.rgb_to_hsv(x)
        value = ops.clip(hsv[..., 2:] + c, 0.0, 1.0)
        return ops.image.hsv_to_rgb(ops.concatenate([hsv[..., :2], value], axis=-1))

    def _contrast(self, x, c):
        # each example's mean per channel over its spatial axes (an image's (h, w), a
        # signal's length), or over all its features for (n, features) data
        axes = tuple(range(1, max(2, len(x.shape) - 1)))
        means = ops.mean(x, axis=axes, keepdims=True)
        return (x - means) * c + means

    def _gaussian_blur(self, x, sigma):
        # keras.ops.image.gaussian_blur pads with zeros and, in Keras 3.15, gives
        # other values on JAX than on TensorFlow; a separable normalised kernel
        # after symmetric padding (scipy's "reflect") is the same on both.
        radius = int(3 * sigma + 0.5)
        taps = [math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(-radius, radius + 1)]
        taps = ops.convert_to_tensor([t / sum(taps) for t in taps], x.dtype)
        channels = x.shape[-1]
        padded = _symmetric_pad(x, radius)
        size = 2 * radius + 1
        rows = ops.tile(ops.reshape(taps, (size, 1, 1, 1)), (1, 1, channels, 1))
        cols = ops.tile(ops.reshape(taps, (1, size, 1, 1)), (1, 1, channels, 1))
        return ops.depthwise_conv(ops.depthwise_conv(padded, rows), cols)

    def _pixelate(self, x, c):
        height, width = x.shape[1], x.shape[2]
        small = (max(1, int(height * c)), max(1, int(width * c)))
        down = ops.image.resize(x, small, interpolation="bilinear", antialias=True)
        return ops.image.resize(down, (height, width), interpolation="nearest")

    def _jpeg(self, x, quality):
        if is_symbolic(x):  # torch's shape inference on "meta" tensors: x's shape and dtype
            return x
        dtype = keras.backend.standardize_dtype(x.dtype)
        return on_host(lambda images: (_pillow_jpeg(images, quality),), [x], [(tuple(x.shape), dtype)])[0]


def _pillow_jpeg(images, quality):
    """Each image of ``images`` (n, h, w, 1 or 3; values in [0, 1]) saved as a JPEG of
    ``quality`` and read back by Pillow, as the CIFAR-10-C script does
    (``PIL.Image.save(output, "JPEG", quality=c)``, then ``PIL.Image.open``): its 8 bits
    per value rounded to nearest, a gray image as a gray JPEG.

    Pillow, not ``tf.image.adjust_jpeg_quality`` (the TensorFlow-only form used before):
    the same libjpeg encoder, but TensorFlow decodes with libjpeg's fast integer inverse
    DCT, which moves values by up to 4/255 from the script's (Pillow's accurate one)."""
    from PIL import Image

    levels = np.floor(np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    out = np.empty(images.shape, np.float32)
    for i, image in enumerate(levels):
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            buffer, format="JPEG", quality=int(quality))
        out[i] = np.asarray(Image.open(buffer)).reshape(image.shape) / 255.0
    return out


def _symmetric_pad(x, radius):
    """numpy's ``pad(mode="symmetric")`` of an image batch's two spatial axes (the edge
    value repeated, then the inside mirrored). Written with slices: Keras' torch backend
    pads "symmetric" as "replicate" (Keras 3.15)."""
    if radius == 0:
        return x
    for axis in (1, 2):
        head = ops.flip(ops.take(x, list(range(radius)), axis=axis), axis=axis)
        size = x.shape[axis]
        tail = ops.flip(ops.take(x, list(range(size - radius, size)), axis=axis), axis=axis)
        x = ops.concatenate([head, x, tail], axis=axis)
    return x


def all_corruptions(severities=(1, 2, 3, 4, 5), names=None, seed=0, image=True):
    """Every corruption (available on this backend) at every severity.

    Args:
        severities: the severities (1..5) to include.
        names: corruption names (default: all of ``CORRUPTIONS``).
        seed: seed of the random corruptions.
        image: False keeps those that act per value (signals, tabular data).

    Returns:
        a list of ``Corruption`` objects, for ``evaluate_robustness(corruptions=…)``.

    Examples:

        >>> [c.name for c in all_corruptions(severities=(3,), image=False)][:3]
        ['gaussian_noise 3', 'shot_noise 3', 'impulse_noise 3']
    """
    names = names or [n for n in CORRUPTIONS if image or n not in IMAGE_CORRUPTIONS]
    return [Corruption(name, s, seed=seed) for name in names for s in severities]
