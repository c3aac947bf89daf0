"""FAB-T (Croce & Hein 2020): minimally distorted examples by projections onto the
linearised decision boundary."""

import math

import keras
import numpy as np
from keras import ops

from keras_lowrank._validation import check_int, check_number
from keras_lowrank.robustness._gradients import (
    value_and_grad,
)
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
    _per_example,
    _take_label,
)


def project_to_hyperplane_linf(t, w, b):
    """The smallest L∞ step d, per row, with w·(t + d) = b and t + d in [0, 1]ᵈ
    (or, where the box cannot reach the hyperplane, the box corner closest to it):
    the authors' ``projection_linf`` (fab_projections.py) in graph ops — a sort of
    the coordinates by how far they can move, and a bisection over them.

    Args:
        t: (n, d) points in [0, 1].
        w: (n, d) hyperplane normals.
        b: (n,) offsets.

    Returns:
        (n, d) steps d.

    Examples:
        from (0.5, 0.5) to the line x₀ + x₁ = 1.6: each coordinate moves 0.3.

        >>> d = project_to_hyperplane_linf(np.array([[0.5, 0.5]], "float32"), np.array([[1.0, 1.0]], "float32"),
        ...                                np.array([1.6], "float32"))
        >>> np.round(ops.convert_to_numpy(d).astype(float), 4).tolist()
        [[0.3, 0.3]]
    """
    t, w, b = (ops.convert_to_tensor(v, "float32") for v in (t, w, b))
    dim = t.shape[1]
    sign = ops.where(ops.sum(w * t, axis=1) - b >= 0, 1.0, -1.0)
    w = w * sign[:, None]
    b = b * sign
    a = ops.cast(w < 0, "float32")
    nonzero = ops.cast(ops.not_equal(w, 0.0), "float32")
    d = (a - t) * nonzero
    p = a - t * (2 * a - 1)
    order = ops.argsort(p, axis=1)
    b = b - ops.sum(w * t, axis=1)
    b0 = ops.sum(w * d, axis=1)
    reverse = ops.flip(order, axis=1)
    ws = ops.take_along_axis(w, reverse, axis=1)
    bs2 = -ws * ops.take_along_axis(d, reverse, axis=1)
    s = ops.cumsum(ops.abs(ws), axis=1)
    sb = ops.cumsum(bs2, axis=1) + b0[:, None]
    b2 = sb[:, -1] - s[:, -1] * ops.take_along_axis(p, order[:, :1], axis=1)[:, 0]
    beyond = b - b2 > 0
    inside = ops.logical_and(b - b0 > 0, b - b2 <= 0)
    low = ops.zeros_like(b)
    high = ops.full_like(b, dim - 1)
    for _ in range(math.ceil(math.log2(dim))):
        middle = ops.floor((low + high) / 2)
        index = ops.cast(middle, "int32")[:, None]
        current = ops.take_along_axis(order, dim - 1 - index, axis=1)
        b2 = (ops.take_along_axis(sb, index, axis=1)[:, 0]
              - ops.take_along_axis(s, index, axis=1)[:, 0] * ops.take_along_axis(p, current, axis=1)[:, 0])
        up = b - b2 > 0
        low = ops.where(up, middle, low)
        high = ops.where(up, high, middle)
    index = ops.cast(low, "int32")[:, None]
    lam_beyond = ops.maximum((b - sb[:, -1]) / (-s[:, -1]), 0.0)[:, None]
    lam = ops.maximum((b - ops.take_along_axis(sb, index, axis=1)[:, 0])
                      / (-ops.take_along_axis(s, index, axis=1)[:, 0]), 0.0)[:, None]
    d_beyond = (2 * a - 1) * lam_beyond
    d_inside = ops.minimum(lam, d) * a + ops.maximum(-lam, d) * (1 - a)
    d = ops.where(beyond[:, None], d_beyond, ops.where(inside[:, None], d_inside, d))
    return d * nonzero


def project_to_hyperplane_l2(t, w, b):
    """The smallest L2 step d, per row, with w·(t + d) = b and t + d in [0, 1]ᵈ
    (or, where the box cannot reach the hyperplane, the box corner closest to it):
    what the authors' ``projection_l2`` (fab_projections.py) computes, solved here
    through its optimality conditions. With the sign of w chosen so that
    c = w·t − b ≥ 0, the minimiser is d(α) = clip(−α w, −t, 1 − t) for the α ≥ 0
    with w·d(α) = −c; w·d(α) falls piecewise linearly in α, bending where a
    coordinate reaches the box (α = t_i/w_i or (t_i − 1)/w_i). The breakpoints are
    sorted, w·d is evaluated at each (cumulative sums), and α is solved on the one
    segment that crosses −c — no bisection, no tolerance.

    Args:
        t: (n, d) points in [0, 1].
        w: (n, d) hyperplane normals.
        b: (n,) offsets.

    Returns:
        (n, d) steps d.

    Examples:
        from (0.5, 0.5) to the line x₀ + x₁ = 1.6: each coordinate moves 0.3; to
        x₀ + 4x₁ = 4.9, x₁ stops at the box (1) and x₀ takes the rest.

        >>> d = project_to_hyperplane_l2(np.array([[0.5, 0.5], [0.5, 0.5]], "float32"),
        ...                              np.array([[1.0, 1.0], [1.0, 4.0]], "float32"),
        ...                              np.array([1.6, 4.9], "float32"))
        >>> np.round(ops.convert_to_numpy(d).astype(float), 4).tolist()
        [[0.3, 0.3], [0.4, 0.5]]
    """
    t, w, b = (ops.convert_to_tensor(v, "float32") for v in (t, w, b))
    c = ops.sum(w * t, axis=1) - b
    w = ops.where((c < 0)[:, None], -w, w)
    c = ops.abs(c)
    active = ops.abs(w) > 1e-8
    safe_w = ops.where(active, w, 1.0)
    big = 1e30
    corner = ops.where(w > 0, -t, 1.0 - t)  # each coordinate at its bound (α → ∞)
    corner = ops.where(active, corner, 0.0)
    breaks = ops.where(active, corner / -safe_w, big)  # α where coordinate i reaches its bound
    order = ops.argsort(breaks, axis=1)
    sorted_breaks = ops.take_along_axis(breaks, order, axis=1)
    w2 = ops.take_along_axis(ops.where(active, ops.square(w), 0.0), order, axis=1)
    bound_part = ops.take_along_axis(w * corner, order, axis=1)  # w_i d_i once coordinate i is at its bound
    zero = ops.zeros_like(c)[:, None]
    done = ops.concatenate([zero, ops.cumsum(bound_part, axis=1)], axis=1)  # (n, d + 1): k coordinates at bounds
    free = ops.sum(w2, axis=1, keepdims=True) - ops.concatenate([zero, ops.cumsum(w2, axis=1)], axis=1)
    # w·d at each breakpoint k (coordinates before k at their bounds), non-increasing in k
    at_breaks = done[:, :-1] - sorted_breaks * free[:, :-1]
    crossed = ops.logical_and(at_breaks > -c[:, None], sorted_breaks < big)
    k = ops.sum(ops.cast(crossed, "int32"), axis=1)  # segment holding the solution
    reachable = ops.take_along_axis(free, k[:, None], axis=1)[:, 0] > 0
    alpha = (c + ops.take_along_axis(done, k[:, None], axis=1)[:, 0]) / ops.where(
        reachable, ops.take_along_axis(free, k[:, None], axis=1)[:, 0], 1.0)
    d = ops.clip(-alpha[:, None] * w, -t, 1.0 - t)
    d = ops.where(reachable[:, None], d, corner)
    return ops.where(active, d, 0.0)


@keras.saving.register_keras_serializable(package="keras_lowrank")
class FAB(_RunsOnUnbroken):
    """FAB-T, L∞ or L2 (Croce & Hein 2020, "Minimally distorted adversarial examples
    with a fast adaptive boundary attack"): the targeted version AutoAttack runs.

    For each of the ``n_target_classes`` classes ranked highest after the true one,
    ``steps`` steps from x⁰ = x: linearise g = z_t − z_y at xᵏ, take the smallest
    steps (in the attack's norm) d₁ from xᵏ and d₂ from x onto {g = 0} within the
    input box (``project_to_hyperplane_linf`` / ``project_to_hyperplane_l2``), and move to
    clip((xᵏ + η d₁)(1 − α) + (x + η d₂) α), α = min(‖d₁‖ / (‖d₁‖ + ‖d₂‖), α_max); a
    misclassified iterate is kept if it is the closest to x so far and pulled back,
    xᵏ⁺¹ = x + β (xᵏ⁺¹ − x). An example counts as broken if its closest
    misclassified point lies within ``eps``. Targets run on unbroken examples only.

    Args:
        eps: budget (≥ 0), in the norm ``norm``.
        norm: "inf" (default) or 2.
        steps: steps per target (≥ 1; formerly ``n_iter``, deprecated).
        n_target_classes: targets (at most classes − 1 are used).
        alpha_max: α_max (the authors' 0.1).
        eta: overshoot η (1.05).
        beta: backward step β (0.9).

    Keyword Args:
        clip: see ``Attack`` (required: the projection is onto the input box).
        from_logits: see ``Attack``.

    Examples:
        the linear model's boundary x₀ = 0.5 lies 0.05 from the input: within
        ε = 0.1, beyond ε = 0.03.

        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
        >>> model.layers[0].set_weights([np.array([[1.0, -1.0, 0], [0, 0, 0]]), np.array([-0.5, 0.5, -5])])
        >>> x = np.array([[0.55, 0.5]], "float32")
        >>> [int(np.argmax(model.predict(FAB(eps, steps=10, n_target_classes=1)(model, x, [0]), verbose=0)))
        ...  for eps in (0.03, 0.1)]
        [0, 1]

    References:
        - Croce & Hein, "Minimally distorted Adversarial Examples with a Fast Adaptive Boundary Attack", ICML 2020:
          https://arxiv.org/abs/1907.02044
    """

    def __init__(self, eps, norm="inf", steps=100, n_target_classes=9, alpha_max=0.1, eta=1.05, beta=0.9,
                 **kwargs):
        steps = renamed_argument(kwargs, "n_iter", "steps", steps, 100, "FAB")
        _refuse_targeted("FAB", kwargs.pop("targeted", False),
                         "FAB here is FAB-T as AutoAttack runs it: it already aims at the "
                         "`n_target_classes` most likely other classes, with y the true labels")
        super().__init__(targeted=False, **kwargs)
        if self.clip is None:
            raise ValueError("FAB projects onto the input box: pass clip=(low, high).")
        self.eps = check_number(eps, "eps", minimum=0.0)
        self.norm = _check_norm(norm)
        self.steps = check_int(steps, "steps")
        self.n_target_classes = check_int(n_target_classes, "n_target_classes")
        self.alpha_max = check_number(alpha_max, "alpha_max", minimum=0.0, maximum=1.0)
        self.eta = check_number(eta, "eta", minimum=0.0)
        self.beta = check_number(beta, "beta", minimum=0.0, maximum=1.0)
        self._runs = _CompiledPerModel(self._build_compiled)

    def get_config(self):
        config = super().get_config()
        config.pop("targeted")
        return {**config, "eps": self.eps, "norm": self.norm, "steps": self.steps,
                "n_target_classes": self.n_target_classes, "alpha_max": self.alpha_max, "eta": self.eta,
                "beta": self.beta}

    @property
    def name(self):
        return f"FAB-T-{self.steps} L{_SYMBOL[self.norm]} ε={self.eps:g}"

    def __repr__(self):
        return (f"FAB(eps={self.eps:g}, norm={self.norm!r}, steps={self.steps}, "
                f"n_target_classes={self.n_target_classes})")

    def _run_keys(self, num_classes):
        return list(range(2, min(self.n_target_classes, num_classes - 1) + 2))

    def _run(self, scores, x, y, key, noise):
        found, distance = self._single_run(scores, x, y, key)
        return found, distance <= self.eps

    def _single_run(self, scores, x, y, rank):
        """One target: returns (closest misclassified point, its distance in the
        attack's norm; 1e10 if none)."""
        y = ops.cast(y, "int32")
        low, high = self.clip
        span = high - low
        clean = scores(x)
        classes = clean.shape[-1]
        target = ops.cast(ops.take(ops.argsort(clean, axis=-1),
                                   ops.clip(classes - ops.cast(rank, "int32"), 0, classes - 1), axis=1), "int32")

        def gap(points, y, target):
            z = scores(points)
            return _take_label(z, target) - _take_label(z, y), z

        gap_grad = value_and_grad(gap)
        batch = ops.shape(x)[0]
        features = int(np.prod(x.shape[1:]))  # static: the projection's bisection length
        x0 = ops.reshape((x - low) / span, (-1, features))  # the box as [0, 1]
        if self.norm == "inf":
            project = project_to_hyperplane_linf
            size_of = lambda v: ops.max(ops.abs(v), axis=1)
        else:
            project = project_to_hyperplane_l2
            size_of = lambda v: ops.sqrt(ops.sum(ops.square(v), axis=1))

        def body(_, state):
            x1, adv, distance = state
            g, _, grad = gap_grad(x1, y, target)
            w = ops.reshape(grad, (-1, features)) * span
            x1_unit = ops.reshape((x1 - low) / span, (-1, features))
            b = -g + ops.sum(w * x1_unit, axis=1)
            steps = project(ops.concatenate([x1_unit, x0], 0), ops.concatenate([w, w], 0),
                            ops.concatenate([b, b], 0))
            d1, d2 = steps[:batch], steps[batch:]
            a1 = ops.maximum(size_of(d1), 1e-8)  # in the unit box, as the authors'
            a2 = ops.maximum(size_of(d2), 1e-8)
            alpha = ops.minimum(ops.maximum(a1 / (a1 + a2), 0.0), self.alpha_max)[:, None]
            moved = ops.clip((x1_unit + self.eta * d1) * (1 - alpha) + (x0 + self.eta * d2) * alpha, 0.0, 1.0)
            x1 = ops.reshape(moved * span + low, ops.shape(x))
            fooled = ops.not_equal(ops.cast(ops.argmax(scores(x1), axis=-1), "int32"), y)
            size = size_of(ops.reshape(x1 - x, (-1, features)))
            closer = ops.logical_and(fooled, size < distance)
            adv = ops.where(_per_example(closer, x), x1, adv)
            distance = ops.where(closer, size, distance)
            x1 = ops.where(_per_example(fooled, x), x + (x1 - x) * self.beta, x1)
            return x1, adv, distance

        state = (x, x, ops.full((batch,), 1e10, "float32"))
        _, adv, distance = ops.fori_loop(0, self.steps, body, state)
        return adv, distance
