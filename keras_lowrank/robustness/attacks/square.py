"""Square (Andriushchenko et al. 2020): the black-box stage of AutoAttack."""

import math

import keras
import numpy as np
from keras import ops

from keras_lowrank._tracing import holds_values
from keras_lowrank._validation import check_int, check_number
from keras_lowrank.robustness.attacks._runner import (
    _CompiledPerModel,
    _refuse_targeted,
    _RunsOnUnbroken,
)
from keras_lowrank.robustness.attacks.base import (
    _SYMBOL,
    _check_norm,
    renamed_argument,
)
from keras_lowrank.robustness.attacks.losses import (
    _EPS_DIV,
    _margin,
    _per_example,
)


def _square_fraction(p_init, iteration, steps):
    """The authors' schedule: p halves at iterations 10, 50, 200, 500, 1000, 2000,
    4000, 6000, 8000 of 10 000 (rescaled to ``steps``)."""
    it = int(iteration / steps * 10000)
    for divisor, bound in ((1, 10), (2, 50), (4, 200), (8, 500), (16, 1000), (32, 2000),
                           (64, 4000), (128, 6000), (256, 8000)):
        if it <= bound:
            return p_init / divisor
    return p_init / 512


def _corners(positions, heights, widths, h, w):
    """(top rows, left columns) of every iteration's window, on the host: the authors'
    random_int(0, h − s) as floor(u (h − s)) in float32, as the graph computes it."""
    positions = np.asarray(positions, np.float32)
    top = np.floor(positions[:, 0] * (h - heights).astype(np.float32)).astype(np.int64)
    left = np.floor(positions[:, 1] * (w - widths).astype(np.float32)).astype(np.int64)
    return top, left


def _eta_rectangles(rows, cols):
    """The authors' ``eta_rectangles``: concentric rectangles weighted 1/(k+1)²,
    normalised."""
    delta = np.zeros((rows, cols))
    row_c, col_c = rows // 2 + 1, cols // 2 + 1
    top, left = row_c - 1, col_c - 1
    for k in range(max(row_c, col_c)):
        delta[max(top, 0):min(top + 2 * k + 1, rows), max(left, 0):min(left + 2 * k + 1, cols)] += 1.0 / (k + 1) ** 2
        top, left = top - 1, left - 1
    return delta / np.sqrt((delta ** 2).sum())


def square_eta(side):
    """Square L2's window pattern (the authors' ``eta``, untransposed): the upper
    half +rectangles, the lower half −rectangles, unit Frobenius norm.

    Args:
        side: the window's side s (≥ 2).

    Returns:
        (s, s) float32 array.

    Examples:
        >>> p = square_eta(5)
        >>> round(float((p ** 2).sum()), 6), bool((p[:2] > 0).all() and (p[2:] < 0).all())
        (1.0, True)
    """
    delta = np.zeros((side, side))
    delta[:side // 2] = _eta_rectangles(side // 2, side)
    delta[side // 2:] = -_eta_rectangles(side - side // 2, side)
    return (delta / np.sqrt((delta ** 2).sum())).astype("float32")


def _eta_tail(length):
    """tail[m] = Σ_{k ≥ m} 1/(k+1)² (up to ``length``): a rectangle pattern's value
    at a cell whose distance from the centre is m is tail[m] − tail[K]."""
    weights = 1.0 / (np.arange(length) + 1.0) ** 2
    return np.concatenate([np.cumsum(weights[::-1])[::-1], [0.0]]).astype("float32")


def _eta_on_grid(i, j, side, transpose, tail):
    """``square_eta(side)`` (transposed if ``transpose``) at window coordinates
    (i, j) of the whole grid (0 outside the window), in graph ops: side is a
    tensor. Cell (i, j) of ``_eta_rectangles(r, s)`` gets Σ_{k=m}^{K−1} 1/(k+1)²,
    m = max(|i − (r//2)|, |j − (s//2)|), K = max(r//2, s//2) + 1."""
    i, j = ops.where(transpose, j, i), ops.where(transpose, i, j)
    inside = ops.logical_and(ops.logical_and(i >= 0, i < side), ops.logical_and(j >= 0, j < side))
    half = side // 2
    upper = i < half
    rows = ops.where(upper, half, side - half)
    local_i = ops.where(upper, i, i - half)
    k_max = ops.maximum(rows // 2, side // 2) + 1
    distance = ops.minimum(ops.maximum(ops.abs(local_i - rows // 2), ops.abs(j - side // 2)), k_max)
    values = ops.take(tail, ops.clip(distance, 0, tail.shape[0] - 1)) - ops.take(tail, k_max)
    values = ops.where(inside, values, 0.0)
    top_part = ops.where(ops.logical_and(inside, upper), values, 0.0)
    low_part = ops.where(ops.logical_and(inside, ops.logical_not(upper)), values, 0.0)
    top_part = top_part / ops.sqrt(ops.maximum(ops.sum(ops.square(top_part)), 1e-30))
    low_part = low_part / ops.sqrt(ops.maximum(ops.sum(ops.square(low_part)), 1e-30))
    return (top_part - low_part) / np.sqrt(2.0)


@keras.saving.register_keras_serializable(package="keras_lowrank")
class Square(_RunsOnUnbroken):
    """Square attack (Andriushchenko et al. 2020): a score-based black-box random
    search that needs only the model's outputs. L∞ below; L2 as in the authors'
    code (windows of odd side ≥ 3 filled with ±``square_eta`` patterns, the mass
    moved between two windows, images only; keras_lowrank/methods.md §7).

    From vertical stripes of ±ε (a random sign per column and channel), each
    iteration i draws one window of side s_i = round(√(p_i · h · w)) at a random
    position (the same for the batch) and a random sign per channel, sets the
    perturbation inside it to ±ε, and keeps the change for the examples whose
    margin z_y − max_{j≠y} z_j falls (or turns negative). p_i follows the authors'
    schedule from ``p_init``. Broken examples stop querying; the loop stops when
    all are broken. Inputs (batch, h, w, c); on (batch, length, channels) and flat
    (batch, features) inputs the window is a segment covering the share p_i of
    the positions.

    Args:
        eps: L∞ budget (≥ 0).
        steps: iterations, one query (forward pass of the batch) each (≥ 1; formerly
            ``n_queries``, deprecated).
        p_init: initial share of the image a window covers (0 < p_init ≤ 1).
        norm: "inf" (or np.inf) or 2.
        seed: seed of the random draws.

    Keyword Args:
        clip: see ``Attack``.
        from_logits: see ``Attack``.

    Examples:
        without a gradient it finds the way across the decision x₀ > 0.5.

        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
        >>> model.layers[0].set_weights([np.array([[1.0, -1.0], [0.0, 0.0]]), np.array([-0.5, 0.5])])
        >>> x = np.array([[0.55, 0.5]], "float32")
        >>> int(np.argmax(model.predict(Square(0.1, steps=50, seed=0)(model, x, [0]), verbose=0)))
        1

    References:
        - Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial attack
          via random search", ECCV 2020: https://arxiv.org/abs/1912.00049
    """

    needs_gradients = False

    def __init__(self, eps, steps=5000, p_init=0.8, norm="inf", seed=None, **kwargs):
        steps = renamed_argument(kwargs, "n_queries", "steps", steps, 5000, "Square")
        _refuse_targeted("Square", kwargs.pop("targeted", False),
                         "Square here is the untargeted attack of AutoAttack (y: the true labels)")
        super().__init__(targeted=False, **kwargs)
        self.eps = check_number(eps, "eps", minimum=0.0)
        self.norm = _check_norm(norm)
        self.steps = check_int(steps, "steps")
        self.p_init = check_number(p_init, "p_init", minimum=0.0, maximum=1.0)
        if self.p_init <= 0:
            raise ValueError(f"`p_init` must be in (0, 1], got p_init={p_init!r}.")
        self._set_seed(seed)
        self._runs = _CompiledPerModel(self._build_compiled)

    def get_config(self):
        config = super().get_config()
        config.pop("targeted")
        return {**config, "eps": self.eps, "steps": self.steps, "p_init": self.p_init,
                "norm": self.norm, "seed": self.seed}

    @property
    def name(self):
        return f"Square-{self.steps} L{_SYMBOL[self.norm]} ε={self.eps:g} (black-box)"

    def __repr__(self):
        return f"Square(eps={self.eps:g}, steps={self.steps}, p_init={self.p_init:g}, norm={self.norm})"

    @staticmethod
    def _canonical_shape(shape):
        """(h, w, c) of an input's per-example shape."""
        if len(shape) == 3:
            return tuple(shape)
        if len(shape) == 2:
            return (1,) + tuple(shape)
        if len(shape) == 1:
            return (1, shape[0], 1)
        raise ValueError(f"Square attacks inputs of rank 2 to 4 (with the batch); got per-example shape {shape}.")

    def _windows(self, h, w):
        """(heights, widths) of the windows of every iteration."""
        heights, widths = [], []
        for i in range(self.steps):
            p = _square_fraction(self.p_init, i, self.steps)
            if self.norm == "2":  # odd sides ≥ 3 (the authors' L2 schedule)
                side = max(int(round(math.sqrt(p * h * w))), 3)
                side += 1 - side % 2
                side = min(side, h, w)
                heights.append(side)
                widths.append(side)
                continue
            if h == 1:
                side_h, side_w = 1, max(int(round(p * w)), 1)
            else:
                side = max(int(round(math.sqrt(p * h * w))), 1)
                side_h, side_w = min(side, h), min(side, w)
            heights.append(side_h)
            widths.append(min(side_w, w))
        return np.array(heights, "int32"), np.array(widths, "int32")

    def _noise(self, x):
        h, w, c = self._canonical_shape(tuple(x.shape[1:]))
        if self.norm == "2":
            return self._noise_l2(x, h, w, c)
        stripes = ops.sign(keras.random.uniform((ops.shape(x)[0], 1, w, c), -1.0, 1.0, seed=self._seed))
        positions = keras.random.uniform((self.steps, 2), seed=self._seed)
        signs = ops.sign(keras.random.uniform((self.steps, c), -1.0, 1.0, seed=self._seed))
        return stripes, positions, signs

    def _check_inputs(self, num_classes, shape):
        h, w, _ = self._canonical_shape(shape)
        if self.norm == "2":
            self._check_l2_shape(h, w)

    def _run(self, scores, x, y, key, noise):
        found, margin, _ = self._square_run(scores, x, y, noise)
        return found, margin <= 0.0

    def _square_run(self, scores, x, y, noise):
        """Returns (best point, its margin; ≤ 0 where broken, queries used)."""
        if self.norm == "2":
            return self._run_l2(scores, x, y, noise)
        stripes, positions, signs = noise
        shape = tuple(x.shape[1:])
        h, w, c = self._canonical_shape(shape)
        y = ops.cast(y, "int32")
        xc = ops.reshape(x, (-1, h, w, c))
        heights, widths = self._windows(h, w)
        heights_host, widths_host = heights, widths
        rows = ops.reshape(ops.arange(h, dtype="int32"), (h, 1, 1))
        cols = ops.reshape(ops.arange(w, dtype="int32"), (1, w, 1))

        x_best = self._clip(xc + self.eps * stripes)
        # the ε-box and the input range as one box (x lies in the range; min and max
        # round nothing, so this is the box's projection clipped, to the bit)
        low, high = self._clip(xc - self.eps), self._clip(xc + self.eps)
        eager = holds_values(positions)
        if eager:  # torch: the windows' corners on the host, once
            window_rows, window_cols = _corners(ops.convert_to_numpy(positions), heights, widths, h, w)
        heights, widths = ops.convert_to_tensor(heights), ops.convert_to_tensor(widths)

        def propose(i, x_best):
            if eager:  # the window written as a slice: 2 ops instead of the mask's ~15
                k = int(i)
                top, left = int(window_rows[k]), int(window_cols[k])
                block = ops.broadcast_to(2.0 * self.eps * ops.reshape(signs[k], (1, 1, 1, c)),
                                         (1, int(heights_host[k]), int(widths_host[k]), c))
                delta = ops.slice_update(ops.zeros((1, h, w, c)), (0, top, left, 0), block)
                return ops.minimum(ops.maximum(x_best + delta, low), high)
            side_h, side_w = ops.take(heights, i), ops.take(widths, i)
            u = ops.take(positions, i, axis=0)
            # the authors' random_int(0, h − s): floor(u (h − s)), never h − s itself
            top = ops.cast(ops.floor(u[0] * ops.cast(h - side_h, "float32")), "int32")
            left = ops.cast(ops.floor(u[1] * ops.cast(w - side_w, "float32")), "int32")
            inside = ops.logical_and(ops.logical_and(rows >= top, rows < top + side_h),
                                     ops.logical_and(cols >= left, cols < left + side_w))
            delta = 2.0 * self.eps * ops.cast(inside, "float32") * ops.reshape(ops.take(signs, i, axis=0), (1, 1, c))
            return ops.minimum(ops.maximum(x_best + delta, low), high)

        return self._search(scores, xc, y, shape, x_best, propose)

    def _search(self, scores, xc, y, shape, x_start, propose):
        """The random search both norms share: from ``x_start`` (canonical
        (batch, h, w, c)), iteration i evaluates ``propose(i, x_best)`` and keeps it
        for the unbroken examples whose margin falls or turns negative; stops when
        all are broken. Returns (best point in ``shape``, its margin, queries)."""

        def margin(points):
            return _margin(scores(ops.reshape(points, (-1,) + shape)), y)

        def cond(i, x_best, margin_min, queries):
            return ops.logical_and(i < self.steps, ops.any(margin_min > 0.0))

        def body(i, x_best, margin_min, queries):
            x_new = propose(i, x_best)
            new_margin = margin(x_new)
            active = margin_min > 0.0
            better = ops.logical_and(active, ops.logical_or(new_margin < margin_min, new_margin <= 0.0))
            margin_min = ops.where(better, new_margin, margin_min)
            x_best = ops.where(_per_example(better, xc), x_new, x_best)
            queries = queries + ops.cast(active, "float32")
            return i + 1, x_best, margin_min, queries

        margin_min = margin(x_start)
        _, x_best, margin_min, queries = ops.while_loop(
            cond, body, (ops.convert_to_tensor(0, "int32"), x_start, margin_min, ops.ones_like(margin_min)))
        return ops.reshape(x_best, (-1,) + shape), margin_min, queries

    def applies_to(self, shape):
        """Whether inputs of per-example ``shape`` can be attacked (L2: images of
        at least 3×3 pixels)."""
        try:
            h, w, _ = self._canonical_shape(tuple(shape))
        except ValueError:
            return False
        return self.norm == "inf" or (h >= 3 and w >= 3)

    # -- L2: the authors' square.py, norm "L2"
    def _check_l2_shape(self, h, w):
        if h < 3 or w < 3:
            raise ValueError(f"Square L2 needs images of at least 3×3 pixels, got {h}×{w}; use norm='inf'.")

    def _init_blocks(self, h, w):
        """The starting pattern's blocks: side h // 5 from (h − 5·side) // 2, each
        with eta(side) and its transpose, placed on an h×w grid."""
        side = h // 5
        start = (h - side * 5) // 2
        blocks, blocks_t = [], []
        for top in range(start, h, side):
            if top + side > h:
                break
            for left in range(start, w, side):
                if left + side > w:
                    break
                pattern = np.zeros((h, w), "float32")
                pattern_t = np.zeros((h, w), "float32")
                pattern[top:top + side, left:left + side] = square_eta(side)
                pattern_t[top:top + side, left:left + side] = square_eta(side).T
                blocks.append(pattern)
                blocks_t.append(pattern_t)
        return np.stack(blocks), np.stack(blocks_t)

    def _noise_l2(self, x, h, w, c):
        self._check_l2_shape(h, w)
        batch = ops.shape(x)[0]
        blocks = len(self._init_blocks(h, w)[0])
        init_signs = ops.sign(keras.random.uniform((batch, blocks, c), -1.0, 1.0, seed=self._seed))
        init_flips = keras.random.uniform((blocks,), seed=self._seed)
        draws = keras.random.uniform((self.steps, 5), seed=self._seed)  # 2 windows, transpose
        signs = ops.sign(keras.random.uniform((self.steps, batch, c), -1.0, 1.0, seed=self._seed))
        return init_signs, init_flips, draws, signs

    def _run_l2(self, scores, x, y, noise):
        init_signs, init_flips, draws, signs = noise
        shape = tuple(x.shape[1:])
        h, w, c = self._canonical_shape(shape)
        self._check_l2_shape(h, w)
        y = ops.cast(y, "int32")
        xc = ops.reshape(x, (-1, h, w, c))
        sides = ops.convert_to_tensor(self._windows(h, w)[0])
        blocks, blocks_t = (ops.convert_to_tensor(b) for b in self._init_blocks(h, w))
        rows = ops.reshape(ops.arange(h, dtype="int32"), (h, 1))
        cols = ops.reshape(ops.arange(w, dtype="int32"), (1, w))
        tail = ops.convert_to_tensor(_eta_tail(max(h, w) + 2))

        def l2(t, axes):
            return ops.sqrt(ops.sum(ops.square(t), axis=axes, keepdims=True))

        def to_ball(delta):  # x + ε δ/‖δ‖, clipped
            return self._clip(xc + delta / (l2(delta, (1, 2, 3)) + _EPS_DIV) * self.eps)

        pattern = ops.where(ops.reshape(init_flips, (-1, 1, 1)) > 0.5, blocks_t, blocks)  # (blocks, h, w)
        delta = ops.einsum("khw,bkc->bhwc", pattern, init_signs)
        x_best = to_ball(delta)
        def propose(i, x_best):
            side = ops.take(sides, i)
            u = ops.take(draws, i, axis=0)
            span = ops.cast(h - side, "float32"), ops.cast(w - side, "float32")
            top, left = (ops.cast(ops.floor(u[k] * span[k]), "int32") for k in (0, 1))
            top2, left2 = (ops.cast(ops.floor(u[2 + k] * span[k]), "int32") for k in (0, 1))

            def window(t, l):
                inside = ops.logical_and(ops.logical_and(rows >= t, rows < t + side),
                                         ops.logical_and(cols >= l, cols < l + side))
                return ops.cast(inside, "float32")[None, :, :, None]

            mask, mask2 = window(top, left), window(top2, left2)
            eta = _eta_on_grid(rows - top, cols - left, side, u[4] > 0.5, tail)[None, :, :, None]
            delta = x_best - xc
            norm_window = l2(delta * mask, (1, 2))  # per example and channel
            norm_image = l2(delta, (1, 2, 3))
            norm_windows = l2(delta * ops.maximum(mask, mask2), (1, 2, 3))
            new = eta * ops.reshape(ops.take(signs, i, axis=0), (-1, 1, 1, c)) + delta * mask / (
                _EPS_DIV + norm_window)
            new = new / (_EPS_DIV + l2(new, (1, 2))) * ops.sqrt(
                ops.maximum(self.eps ** 2 - ops.square(norm_image), 0.0) / c + ops.square(norm_windows))
            delta = delta * (1.0 - mask2) * (1.0 - mask) + new * mask
            return to_ball(delta)

        return self._search(scores, xc, y, shape, x_best, propose)
