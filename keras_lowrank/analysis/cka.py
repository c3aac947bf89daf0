"""Centred kernel alignment (CKA) between representations (METHODS.md §3).

Kornblith et al., "Similarity of Neural Network Representations Revisited"
(ICML 2019); minibatch CKA of Nguyen et al. (2021), as used by Cianfarani et al.

For Gram matrices K = X Xᵀ, L = Y Yᵀ (linear) or RBF Grams with
σ² = threshold² · median squared distance (the reference code's convention):

    CKA(K, L) = HSIC(K, L) / √(HSIC(K, K) · HSIC(L, L))

biased HSIC: ⟨HKH, HLH⟩ (H the centring matrix) — equal to
‖YᵀX‖_F² / (‖XᵀX‖_F ‖YᵀY‖_F) for centred X, Y in the linear case;
unbiased HSIC (Song et al. 2012), K̃, L̃ with zero diagonals, n ≥ 4:

    HSIC₁ = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2)) − 2·1ᵀK̃L̃1/(n−2)] / (n(n−3))

Minibatch CKA averages HSIC₁ over batches before the ratio, so a whole dataset
is measured with memory independent of its size.
"""

import dataclasses
import weakref

import keras
import numpy as np
from keras import ops

from keras_lowrank.analysis._batches import iterate_inputs
from keras_lowrank.analysis.representation import feature_extractor, resolve_layers

_DTYPE = "float64"  # float32 where the backend has no float64 (JAX by default)


def _matrix(x, name, dtype=_DTYPE):
    x = ops.convert_to_tensor(x)
    if len(x.shape) < 2:
        raise ValueError(f"`{name}` must be (samples, features...), got shape {tuple(x.shape)}.")
    features = int(np.prod(x.shape[1:]))  # static, so this also traces in a graph
    return ops.reshape(ops.cast(x, dtype), (-1, features))


def gram_linear(x, dtype=_DTYPE):
    """K = X Xᵀ of x (samples × features...)."""
    x = _matrix(x, "x", dtype)
    return ops.matmul(x, ops.transpose(x))


def gram_rbf(x, threshold=1.0, dtype=_DTYPE):
    """K_ij = exp(−‖x_i − x_j‖² / (2 · threshold² · median_ij ‖x_i − x_j‖²))."""
    x = _matrix(x, "x", dtype)
    dots = ops.matmul(x, ops.transpose(x))
    norms = ops.diagonal(dots)
    squared = ops.maximum(norms[:, None] + norms[None, :] - 2 * dots, 0.0)
    median = ops.median(squared)
    return ops.exp(-squared / (2 * threshold**2 * ops.maximum(median, 1e-30)))


def _hsic_terms(grams, unbiased):
    """HSIC of every pair of a stack of Gram matrices (m, n, n) → (m, m).

    In float64 numpy on every backend: the unbiased estimator subtracts nearly
    equal terms, which float32 (JAX's default) cancels to noise (errors ~1e-2
    seen). The costly part, the Gram products, stays in keras.ops.
    """
    grams = np.array(ops.convert_to_numpy(grams), dtype=np.float64)  # a copy
    n = grams.shape[-1]
    if unbiased:
        if n < 4:
            raise ValueError(f"Unbiased CKA needs at least 4 samples per batch, got {n}.")
        diagonal = np.arange(n)
        grams[:, diagonal, diagonal] = 0.0  # in place: a float64 copy already
        flat = grams.reshape(len(grams), -1)
        trace = flat @ flat.T  # tr(K̃_i K̃_j) of symmetric Grams, one BLAS product
        rows = grams.sum(axis=2)
        sums = rows.sum(axis=1)
        return (trace + np.outer(sums, sums) / ((n - 1) * (n - 2))
                - 2 * rows @ rows.T / (n - 2)) / (n * (n - 3))
    centred = grams - grams.mean(axis=1, keepdims=True)
    centred = (centred - centred.mean(axis=2, keepdims=True)).reshape(len(grams), -1)
    return centred @ centred.T


def _ratio(hsic, i, j, names):
    denominator = hsic[i, i] * hsic[j, j]
    if not denominator > 1e-300:
        empty = names[i] if not hsic[i, i] > 0 else names[j]
        raise ValueError(f"CKA is undefined: `{empty}` has no variance across samples "
                         "(constant features).")
    return float(hsic[i, j] / np.sqrt(denominator))


def _cka(k, l, unbiased, names):
    return _ratio(_hsic_terms(ops.stack([k, l]), unbiased), 0, 1, names)


def linear_cka(x, y, unbiased=False):
    """Linear CKA of x (n × p...) and y (n × q...); conv maps are flattened."""
    x, y = _matrix(x, "x"), _matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"`x` and `y` need the same samples, got {x.shape[0]} and {y.shape[0]}.")
    return _cka(gram_linear(x), gram_linear(y), unbiased, ("x", "y"))


def rbf_cka(x, y, threshold=1.0, unbiased=False):
    """RBF-kernel CKA, bandwidth σ = threshold · median distance."""
    x, y = _matrix(x, "x"), _matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"`x` and `y` need the same samples, got {x.shape[0]} and {y.shape[0]}.")
    return _cka(gram_rbf(x, threshold), gram_rbf(y, threshold), unbiased, ("x", "y"))


@dataclasses.dataclass
class CKAMap:
    """CKA between the layers in ``rows`` and those in ``columns``."""

    matrix: np.ndarray
    rows: list
    columns: list

    def block_structure_score(self):
        """Mean CKA between distinct layers of a map of one model with itself:
        near 1 when the layers form one block of similar representations, near
        0 when every layer differs (robust training is reported to lower it,
        Cianfarani et al. 2022). Only for square maps of a model with itself."""
        if self.rows != self.columns:
            raise ValueError("block_structure_score needs a map of one model with itself "
                             "(the same layers as rows and columns).")
        n = len(self.rows)
        if n < 2:
            raise ValueError("block_structure_score needs at least 2 layers.")
        return float((self.matrix.sum() - np.trace(self.matrix)) / (n * (n - 1)))

    def draw(self, ax, title=None, colorbar=True):
        """Draws the heatmap into matplotlib axes ``ax``."""
        image = ax.imshow(self.matrix, vmin=0, vmax=1, cmap="magma", origin="lower")
        ax.set_xticks(range(len(self.columns)), self.columns, rotation=60, ha="right")
        ax.set_yticks(range(len(self.rows)), self.rows)
        if colorbar:
            ax.figure.colorbar(image, ax=ax, label="CKA")
        if title:
            ax.set_title(title)
        return image

    def plot(self, path, title=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(1.2 + 0.5 * len(self.columns), 1 + 0.5 * len(self.rows)))
        self.draw(ax, title)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


class _Gram(keras.layers.Layer):
    """The float32 Gram matrix of its input's samples: appended to a feature
    extractor, Keras compiles forward pass and Grams into one predict step."""

    def __init__(self, kernel, threshold, **kwargs):
        super().__init__(**kwargs)
        self.kernel, self.threshold = kernel, threshold

    def call(self, x):
        if self.kernel == "linear":
            return gram_linear(x, "float32")
        return gram_rbf(x, self.threshold, "float32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[0])


_GRAM_EXTRACTORS = weakref.WeakKeyDictionary()  # model → {(layers, kernel, threshold): model}


def _gram_extractor(model, layers, kernel, threshold):
    """A model from ``model``'s inputs to the Grams of ``layers``' outputs,
    cached per model so that repeated maps (e.g. every epoch) compile once."""
    key = (tuple(layer.name for layer in layers), kernel, float(threshold))
    cache = _GRAM_EXTRACTORS.setdefault(model, {})
    if key not in cache:
        extractor = feature_extractor(model, layers)
        cache[key] = keras.Model(extractor.inputs,
                                 [_Gram(kernel, threshold)(out) for out in extractor.outputs])
    return cache[key]


DEFAULT_LAYER_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Dense)


def _layers(model, layers):
    if layers is None or (isinstance(layers, tuple) and layers and isinstance(layers[0], type)):
        types = layers or DEFAULT_LAYER_TYPES
        chosen = [layer for layer in model.layers if isinstance(layer, types)]
        if not chosen:
            raise ValueError(f"`layers`: model {model.name!r} has no layer of types {types}.")
        return chosen
    return resolve_layers(model, layers)


def cka_map(model_a, data, model_b=None, layers=None, layers_b=None, unbiased=True,
            kernel="linear", threshold=1.0, max_batches=None):
    """Minibatch CKA between every pair of chosen layers, in one pass over ``data``.

    Args:
        model_a: a built Keras model.
        data: tf.data.Dataset of (x, y) or x, iterable of batches, or an array.
        model_b: a second model (same inputs): the map is then layers of
            ``model_a`` × layers of ``model_b``; else ``model_a`` × ``model_a``.
        layers, layers_b: layer names, or a tuple of layer classes; default:
            every Conv1D/Conv2D/Dense layer. Conv maps are flattened.
        unbiased: unbiased HSIC (default; needs batches of ≥ 4 — a smaller last
            batch is skipped) or the biased estimator.
        kernel: "linear" or "rbf" (bandwidth ``threshold`` · median distance).

    Returns:
        ``CKAMap`` (matrix, row names, column names; ``plot`` draws a heatmap).
    """
    if kernel not in ("linear", "rbf"):
        raise ValueError(f'`kernel` must be "linear" or "rbf", got kernel={kernel!r}.')
    chosen_a = _layers(model_a, layers)
    extractors = [_gram_extractor(model_a, chosen_a, kernel, threshold)]
    names = [layer.name for layer in chosen_a]
    if model_b is not None:
        chosen_b = _layers(model_b, layers_b)
        extractors.append(_gram_extractor(model_b, chosen_b, kernel, threshold))
        names_b = [layer.name for layer in chosen_b]
    total, batches = None, 0
    for x in iterate_inputs(data, max_batches=max_batches):
        if unbiased and len(x) < 4:
            continue
        # Grams in the activations' float32 (the costly n²·p products), in the
        # compiled predict step; the pairwise HSIC terms and their sums over
        # batches in float64.
        grams = []
        for extractor in extractors:
            out = extractor.predict_on_batch(x)
            grams += out if isinstance(out, (list, tuple)) else [out]
        hsic = _hsic_terms(np.stack(grams), unbiased)
        total = hsic if total is None else total + hsic
        batches += 1
    if not batches:
        raise ValueError("`data` yielded no batch of at least 4 samples.")
    mean = total / batches
    everyone = names + (names_b if model_b is not None else [])
    rows = range(len(names))
    columns = range(len(names), len(everyone)) if model_b is not None else rows
    matrix = np.array([[_ratio(mean, i, j, everyone) for j in columns] for i in rows])
    return CKAMap(matrix, names, names_b if model_b is not None else names)
