"""Accuracy under additive Gaussian noise, x̃ = clip(x + σ ε, lo, hi), ε ~ N(0, I)."""

import keras
import numpy as np
from keras import ops

from keras_lowrank._validation import check_number
from keras_lowrank.analysis._batches import iterate_labelled


def gaussian_noise_accuracy(model, data, sigmas, clip=(0.0, 1.0), seed=0):
    """Top-1 accuracy of ``model`` on ``data`` for each noise level in ``sigmas``.

    Args:
        model: a Keras classifier (logits or probabilities; argmax is used).
        data: batches of (x, y) with integer labels.
        sigmas: noise standard deviations (≥ 0), in input units.
        clip: (low, high) input range the noisy input is clipped to, or None.
        seed: noise seed; the same noise is drawn for every model.

    Returns:
        dict σ → accuracy in [0, 1].
    """
    sigmas = [check_number(s, "sigmas", minimum=0.0) for s in sigmas]
    correct = {s: 0 for s in sigmas}
    total = 0
    generator = keras.random.SeedGenerator(seed)
    for x, y in iterate_labelled(data):
        x = ops.convert_to_tensor(x, "float32")
        noise = keras.random.normal(ops.shape(x), seed=generator)
        y = np.asarray(y).reshape(-1)
        total += len(y)
        for s in sigmas:
            noisy = x + s * noise
            if clip is not None:
                noisy = ops.clip(noisy, clip[0], clip[1])
            predicted = np.argmax(model.predict_on_batch(noisy), axis=-1)
            correct[s] += int(np.sum(predicted == y))
    return {s: correct[s] / total for s in sigmas}
