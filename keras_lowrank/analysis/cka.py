"""Centred kernel alignment (CKA) between representations (keras_lowrank/methods.md §3).

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
import warnings
import weakref

import keras
import numpy as np
from keras import ops

from keras_lowrank._optional import require
from keras_lowrank._validation import check_number
from keras_lowrank._warning import LowRankWarning
from keras_lowrank.analysis._batches import batch_length, iterate_inputs
from keras_lowrank.analysis.representation import feature_extractor, resolve_layers
from keras_lowrank.layers.dynamic_low_rank import DynamicLowRankBase
from keras_lowrank.precision import float32_matmuls

_DTYPE = "float64"  # float32 where the backend has no float64 (JAX by default)


def _matrix(x, name, dtype=_DTYPE):
    x = ops.convert_to_tensor(x)
    if len(x.shape) < 2:
        raise ValueError(f"`{name}` must be (samples, features...), got shape {tuple(x.shape)}.")
    features = int(np.prod(x.shape[1:]))  # static, so this also traces in a graph
    return ops.reshape(ops.cast(x, dtype), (-1, features))


def gram_rbf(x, threshold=1.0, dtype=_DTYPE):
    """K_ij = exp(−‖x_i − x_j‖² / (2 · threshold² · median_ij ‖x_i − x_j‖²))."""
    x = _matrix(x, "x", dtype)
    dots = ops.matmul(x, ops.transpose(x))
    norms = ops.diagonal(dots)
    squared = ops.maximum(norms[:, None] + norms[None, :] - 2 * dots, 0.0)
    median = ops.median(squared)
    return ops.exp(-squared / (2 * threshold**2 * ops.maximum(median, 1e-30)))


def _ratio(hsic, i, j, names):
    denominator = hsic[i, i] * hsic[j, j]
    if not denominator > 1e-300:
        empty = names[i] if not hsic[i, i] > 0 else names[j]
        raise ValueError(f"CKA is undefined: `{empty}` has no variance across samples "
                         "(constant features).")
    return float(hsic[i, j] / np.sqrt(denominator))


def _pair_cka(x, y, kernel, threshold, unbiased):
    x, y = _matrix(x, "x"), _matrix(y, "y")
    for name, value in (("x", x), ("y", y)):  # else "no variance": NaN fails every comparison
        if not np.all(np.isfinite(ops.convert_to_numpy(value))):
            raise ValueError(f"`{name}` holds NaN or infinite values; CKA needs finite representations.")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"`x` and `y` need the same samples, got {x.shape[0]} and {y.shape[0]}.")
    hsic = _batch_hsic(*_hsic_terms([x, y], kernel, threshold, _DTYPE), unbiased)
    return _ratio(hsic, 0, 1, ("x", "y"))


@float32_matmuls()
def linear_cka(x, y, unbiased=False):
    """Linear CKA of x (n × p...) and y (n × q...); conv maps are flattened.

    Args:
        x: one representation of n samples (an array or tensor).
        y: another representation of the same n samples.
        unbiased: the unbiased HSIC estimator (needs n ≥ 4) instead of the biased one.

    Returns:
        a float in [0, 1] (the unbiased estimate may dip slightly below 0).

    Examples:

        >>> x = np.random.default_rng(0).normal(size=(50, 8))
        >>> q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(8, 8)))
        >>> round(linear_cka(x, 3.0 * x @ q), 4)  # invariant to rotation and scale
        1.0

    References:
        - Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural Network Representations
          Revisited", ICML 2019: https://arxiv.org/abs/1905.00414
    """
    return _pair_cka(x, y, "linear", 1.0, unbiased)


@float32_matmuls()
def rbf_cka(x, y, threshold=1.0, unbiased=False):
    """RBF-kernel CKA, bandwidth σ = threshold · median distance.

    Args:
        x: one representation of n samples (an array or tensor).
        y: another representation of the same n samples.
        threshold: the bandwidth as a multiple of the median pairwise distance.
        unbiased: the unbiased HSIC estimator (needs n ≥ 4) instead of the biased one.

    Returns:
        a float in [0, 1] (the unbiased estimate may dip slightly below 0).

    Examples:

        >>> x = np.random.default_rng(0).normal(size=(40, 5))
        >>> round(rbf_cka(x, x + 10.0), 4)  # invariant to translation
        1.0
    """
    return _pair_cka(x, y, "rbf", check_number(threshold, "threshold", minimum=0.0, strict=True), unbiased)


@dataclasses.dataclass
class CKAMap:
    """CKA between the layers in ``rows`` and those in ``columns`` (``cka_map``'s result).

    Attributes:
        matrix: (len(rows), len(columns)) numpy array of CKA values.
        rows: layer names of the first model.
        columns: layer names of the second model (or the first again).

    Examples:

        >>> m = CKAMap(np.array([[1.0, 0.5], [0.5, 1.0]]), ["a", "b"], ["a", "b"])
        >>> m.block_structure_score()
        0.5
    """

    matrix: np.ndarray
    rows: list
    columns: list

    def block_structure_score(self):
        """Mean CKA between distinct layers of a map of one model with itself:
        near 1 when the layers form one block of similar representations, near
        0 when every layer differs (robust training is reported to lower it,
        Cianfarani et al. 2022). Only for square maps of a model with itself;
        pairs left NaN (constant layers) are not counted."""
        if self.rows != self.columns:
            raise ValueError("block_structure_score needs a map of one model with itself "
                             "(the same layers as rows and columns).")
        n = len(self.rows)
        if n < 2:
            raise ValueError("block_structure_score needs at least 2 layers.")
        off_diagonal = self.matrix[~np.eye(n, dtype=bool)]
        defined = off_diagonal[np.isfinite(off_diagonal)]  # NaN: a constant layer (cka_map)
        if not defined.size:
            raise ValueError("block_structure_score: no pair of distinct layers has a defined CKA.")
        return float(defined.mean())

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
        require("matplotlib", "Plotting")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(1.2 + 0.5 * len(self.columns), 1 + 0.5 * len(self.rows)))
        self.draw(ax, title)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


_BLOCK_WEIGHTS = {"linear": (1.0, 1.0, 2.0), "rbf": (1.0,)}


def _centred_gram(x, kernel, threshold, dtype="float32"):
    """Terms of a batch's HSIC for one representation x: the doubly
    centred Gram K_c = HKH with a zero diagonal as flattened blocks (weighted by
    ``_BLOCK_WEIGHTS`` in inner products), its diagonal d and row sums r.

    Unbiased HSIC only sees K through its U-centring, which is blind to adding
    b1ᵀ + 1bᵀ + c11ᵀ and to the diagonal (Székely & Rizzo 2014), so
    HSIC₁(K, L) = HSIC₁(K_c, L_c): Song's formula on K_c, where row sums are
    small, no longer subtracts nearly equal large terms, and float32 stays
    accurate. The biased HSIC is ⟨K_c, L_c⟩ = ⟨K̃_c, L̃_c⟩ + dᵀd.

    Linear kernel: K_c = X_c X_cᵀ for features centred over the batch (O(n·p)),
    and, K being symmetric, formed as three blocks K₁₁, K₂₂ and K₁₂, weighted
    1, 1, 2 (K₂₁ = K₁₂ᵀ adds the same again): 3/4 of the n²·p multiply-adds that
    dominate the map's cost (no backend exposes BLAS syrk). RBF: the full Gram
    (its bandwidth is a median), centred explicitly."""
    if kernel == "linear":
        x = _matrix(x, "x", dtype)
        x = x - ops.mean(x, axis=0, keepdims=True)
        diagonal = ops.sum(x * x, axis=1)
        rows = ops.matmul(x, ops.sum(x, axis=0))
        n = ops.shape(x)[0]
        half = n // 2
        parts = [x[:half], x[half:]]
        blocks = []
        for i, j in ((0, 0), (1, 1), (0, 1)):
            block = ops.matmul(parts[i], ops.transpose(parts[j]))
            if i == j:
                block = block - ops.diag(ops.diagonal(block))
            blocks.append(ops.reshape(block, (-1,)))
        return blocks, diagonal, rows
    gram = gram_rbf(x, threshold, dtype)
    n = ops.cast(ops.shape(gram)[0], dtype)
    rows = ops.sum(gram, axis=1)
    gram = gram - rows[:, None] / n - rows[None, :] / n + ops.sum(rows) / n**2
    diagonal = ops.diagonal(gram)
    rows = ops.sum(gram, axis=1)
    return [ops.reshape(gram - ops.diag(diagonal), (-1,))], diagonal, rows


def _hsic_terms(representations, kernel, threshold, dtype="float32"):
    """m representations of one batch → (P, D, R): P the (m, m) inner products
    ⟨K̃_c, L̃_c⟩ (one BLAS product), D and R the (m, n) diagonals and row sums
    of the centred Grams (see ``_centred_gram``)."""
    blocks, diagonals, rows = zip(*(_centred_gram(x, kernel, threshold, dtype) for x in representations))
    inner = 0
    for index, weight in enumerate(_BLOCK_WEIGHTS[kernel]):
        flat = ops.stack([b[index] for b in blocks])
        inner = inner + weight * ops.matmul(flat, ops.transpose(flat))
    return inner, ops.stack(diagonals), ops.stack(rows)


class _HSICTerms(keras.layers.Layer):
    """``_hsic_terms`` in float32, as a layer of the compiled extractor."""

    def __init__(self, kernel, threshold, **kwargs):
        super().__init__(**kwargs)
        self.kernel, self.threshold = kernel, threshold

    def call(self, representations):
        return _hsic_terms(representations, self.kernel, self.threshold)

    def compute_output_shape(self, input_shapes):
        m = len(input_shapes)
        return (m, m), (m, None), (m, None)


def _batch_hsic(inner, diagonals, rows, unbiased):
    """(m, m) HSIC of one batch from ``_HSICTerms``' outputs, in float64:
    unbiased, Song et al.'s formula with tr(K̃L̃) = ⟨K̃_c, L̃_c⟩ and the row
    sums of K̃_c, r − d; biased, ⟨K_c, L_c⟩ / (n − 1)²."""
    inner, diagonals, rows = (np.asarray(ops.convert_to_numpy(t), dtype=np.float64)
                              for t in (inner, diagonals, rows))
    n = diagonals.shape[1]
    if unbiased and n < 4:
        raise ValueError(f"Unbiased CKA needs at least 4 samples per batch, got {n}.")
    if not unbiased:
        return (inner + diagonals @ diagonals.T) / (n - 1) ** 2
    rows = rows - diagonals
    sums = rows.sum(axis=1)
    return (inner + np.outer(sums, sums) / ((n - 1) * (n - 2))
            - 2 * rows @ rows.T / (n - 2)) / (n * (n - 3))


_HSIC_EXTRACTORS = weakref.WeakKeyDictionary()  # model_a → {key: compiled extractor}


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _hsic_extractor(model_a, layers_a, model_b, layers_b, kernel, threshold):
    """A model from the inputs to the HSIC terms (``_HSICTerms``) of the chosen
    layers of ``model_a`` (and ``model_b``, fed the same batch). Keras compiles
    forward passes, Grams, centring and the products into one predict step, so
    only m² + 2mn numbers leave it per batch. Cached per model, so repeated
    maps (e.g. every epoch) compile once; of the pair extractors of a model,
    only the one with the latest ``model_b`` is kept (it holds model_b's layers,
    so keeping all would keep every model ever compared alive)."""
    key = (tuple(layer.name for layer in layers_a),
           None if model_b is None else weakref.ref(model_b),
           tuple(layer.name for layer in layers_b or ()), kernel, float(threshold))
    cache = _HSIC_EXTRACTORS.setdefault(model_a, {})
    if key not in cache:
        for other in [k for k in cache if k[1] is not None and k[1] != key[1]]:
            del cache[other]
        features_a = feature_extractor(model_a, layers_a)
        if model_b is None:
            inputs, outputs = features_a.inputs, features_a.outputs
        else:
            inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype) for t in features_a.inputs]
            fed = inputs[0] if len(inputs) == 1 else inputs
            outputs = (_as_list(features_a(fed))
                       + _as_list(feature_extractor(model_b, layers_b)(fed)))
        cache[key] = keras.Model(inputs, _HSICTerms(kernel, threshold)(outputs))
    return cache[key]


# the low-rank layers stand where a converted model's Dense/Conv2D stood, so that a
# model and its compressed twin are compared layer for layer
DEFAULT_LAYER_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Dense, DynamicLowRankBase)


def _layers(model, layers):
    if layers is not None and not isinstance(layers, str) and len(layers) == 0:
        raise ValueError("`layers` is empty: name at least one layer, or pass None for the "
                         "default (every Conv1D/Conv2D/Dense and dynamic low-rank layer).")
    if layers is None or (isinstance(layers, tuple) and layers and isinstance(layers[0], type)):
        types = layers or DEFAULT_LAYER_TYPES
        chosen = [layer for layer in model.layers if isinstance(layer, types)]
        if not chosen:
            raise ValueError(f"`layers`: model {model.name!r} has no layer of types {types}.")
        return chosen
    return resolve_layers(model, layers)


@float32_matmuls()
def cka_map(model_a, data, model_b=None, layers=None, layers_b=None, unbiased=True,
            kernel="linear", threshold=1.0, max_batches=None):
    """Minibatch CKA between every pair of chosen layers, in one pass over ``data``.

    Args:
        model_a: a built Keras model.
        data: tf.data.Dataset of (x, y) or x, iterable of batches, or an array.
        model_b: a second model (same inputs): the map is then layers of
            ``model_a`` × layers of ``model_b``; else ``model_a`` × ``model_a``.
        layers: layer names of ``model_a``, or a tuple of layer classes; default:
            every Conv1D/Conv2D/Dense layer and every dynamic low-rank layer (a
            converted model's). Conv maps are flattened.
        layers_b: the same for ``model_b`` (default: as ``layers``).
        unbiased: unbiased HSIC (default; needs batches of ≥ 4 — a smaller last
            batch is skipped) or the biased estimator.
        kernel: "linear" or "rbf" (bandwidth ``threshold`` · median distance).
        threshold: the RBF bandwidth as a multiple of the median distance.
        max_batches: stop after this many batches.

    Returns:
        ``CKAMap`` (matrix, row names, column names; ``plot`` draws a heatmap).

    Examples:

        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="a"),
        ...                           keras.layers.Dense(3, name="b")])
        >>> x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
        >>> result = cka_map(model, x)
        >>> result.rows, np.round(np.diag(result.matrix), 4).tolist()
        (['a', 'b'], [1.0, 1.0])

    References:
        - Kornblith et al., "Similarity of Neural Network Representations Revisited", ICML 2019:
          https://arxiv.org/abs/1905.00414
        - Cianfarani et al., "Understanding Robust Learning through the Lens of Representation
          Similarities", NeurIPS 2022: https://arxiv.org/abs/2206.09868
    """
    if kernel not in ("linear", "rbf"):
        raise ValueError(f'`kernel` must be "linear" or "rbf", got kernel={kernel!r}.')
    chosen_a = _layers(model_a, layers)
    names = [layer.name for layer in chosen_a]
    chosen_b = _layers(model_b, layers_b) if model_b is not None else None
    names_b = [layer.name for layer in chosen_b] if model_b is not None else None
    threshold = check_number(threshold, "threshold", minimum=0.0, strict=True)
    for model, chosen in ((model_a, chosen_a), (model_b, chosen_b or [])):
        broken = [l.name for l in chosen if any(not np.all(np.isfinite(ops.convert_to_numpy(w)))
                                                for w in l.weights)]
        if broken:  # a ReLU can turn their NaN into zeros: the map would blame "constant outputs"
            raise ValueError(f"cka_map: the layers {broken} of {model.name!r} hold NaN or ±inf weights "
                             "(a diverged training?): CKA of their outputs means nothing.")
    extractor = _hsic_extractor(model_a, chosen_a, model_b, chosen_b, kernel, threshold)
    total, batches = None, 0
    for x in iterate_inputs(data, max_batches=max_batches):
        n = batch_length(x)
        if unbiased and n < 4:
            continue
        # Grams, centring and their inner products in float32 inside the
        # compiled predict step; the O(m²) rest and the sum over batches in float64.
        hsic = _batch_hsic(*extractor.predict_on_batch(x), unbiased)
        total = hsic if total is None else total + hsic
        batches += 1
    if not batches:
        raise ValueError("`data` yielded no batch of at least 4 samples.")
    mean = total / batches
    everyone = names + (names_b if model_b is not None else [])
    rows = range(len(names))
    columns = range(len(names), len(everyone)) if model_b is not None else rows
    # A layer constant across the samples (e.g. saturated activations of an untrained
    # network) has no CKA with anything: NaN in its row/column, named in a warning.
    broken = [everyone[k] for k in range(len(everyone)) if not np.isfinite(mean[k, k])]
    if broken:
        raise ValueError(
            f"cka_map: the layers {broken} output NaN or ±inf on `data` (non-finite weights, or an "
            "overflow): CKA is undefined there. Check the model's weights (np.isfinite) and the data.")
    constant = [k for k in range(len(everyone)) if not mean[k, k] > 1e-300]
    if constant:
        warnings.warn("cka_map: CKA is undefined for layers with no variance across the samples "
                      f"(constant outputs), left NaN in the map: {[everyone[k] for k in constant]}.",
                      stacklevel=2, category=LowRankWarning)
    matrix = np.array([[np.nan if i in constant or j in constant else _ratio(mean, i, j, everyone)
                        for j in columns] for i in rows])
    return CKAMap(matrix, names, names_b if model_b is not None else names)
