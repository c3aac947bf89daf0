"""AutoAttack (Croce & Hein 2020) native to Keras 3: APGD, APGD-T, FAB-T, Square
and their worst-case ensemble, each batch in compiled graphs on TensorFlow and JAX.

Written by hand: the authors' implementation runs in PyTorch (its TensorFlow path
copies every call to PyTorch), and ART's wrappers refuse Keras 3 models. The
algorithms follow the authors' code (fra31/auto-attack: ``autopgd_base.py``,
``fab_base.py``, ``fab_projections.py``, ``square.py``, ``checks.py``) step for
step; docs/methods.md §7 gives the formulas.
"""

import dataclasses
import math
import warnings
import weakref

import keras
import numpy as np
from keras import ops

from keras_lowrank._validation import check_int, check_number, check_seed
from keras_lowrank.robustness._gradients import (
    compile_function,
    ends_in_softmax,
    forward_without_side_effects,
    value_and_grad,
)
from keras_lowrank.robustness._report_inputs import refuse_token_inputs
from keras_lowrank.robustness.attacks import _SYMBOL, Attack, _check_norm, resolve_from_logits

_EPS_DIV = 1e-12  # the authors' guard in normalisations and the DLR denominator


# ----------------------------------------------------------------------------- pieces


def _per_example(v, x):
    """A (batch,) vector shaped to broadcast against ``x``."""
    return ops.reshape(v, (-1,) + (1,) * (len(x.shape) - 1))


def _flat(x):
    return ops.reshape(x, (ops.shape(x)[0], -1))


def _normalize(d, norm):
    """d / (‖d‖ + 1e-12) per example (‖·‖∞ or ‖·‖₂)."""
    if norm == "inf":
        size = ops.max(ops.abs(_flat(d)), axis=1)
    else:
        size = ops.sqrt(ops.sum(ops.square(_flat(d)), axis=1))
    return d / _per_example(size + _EPS_DIV, d)


def _l2(d):
    return ops.sqrt(ops.sum(ops.square(_flat(d)), axis=1))


def _take_label(z, y):
    return ops.squeeze(ops.take_along_axis(z, ops.expand_dims(ops.cast(y, "int32"), 1), axis=1), 1)


def dlr_loss(logits, y):
    """Difference of logits ratio: −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12),
    per example (z sorted z_π1 ≥ z_π2 ≥ …; needs ≥ 3 classes). Invariant to
    shifting and positively scaling the logits.

    Args:
        logits: (batch, classes ≥ 3) logits.
        y: (batch,) integer labels.

    Returns:
        (batch,) losses; positive once the example is misclassified.

    Examples:
        >>> z = np.array([[3.0, 1.0, 0.0]], "float32")
        >>> round(float(ops.convert_to_numpy(dlr_loss(z, np.array([0])))[0]), 4)  # −(3 − 1) / (3 − 0)
        -0.6667
    """
    zs = ops.sort(logits, axis=-1)
    zy = _take_label(logits, y)
    top_is_y = ops.equal(ops.argmax(logits, axis=-1), ops.cast(y, "int32"))
    other = ops.where(top_is_y, zs[:, -2], zs[:, -1])
    return -(zy - other) / (zs[:, -1] - zs[:, -3] + _EPS_DIV)


# z_π1 − (z_π3 + z_π4)/2: the fewest classes APGD-T (and so AutoAttack) can attack
TARGETED_DLR_MIN_CLASSES = 4


def targeted_dlr_loss(logits, y, target):
    """Targeted DLR: −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12), per example
    (needs ≥ 4 classes).

    Args:
        logits: (batch, classes ≥ 4) logits.
        y: (batch,) true labels.
        target: (batch,) target classes.

    Returns:
        (batch,) losses, larger as z_t overtakes z_y.

    Examples:
        >>> z = np.array([[4.0, 2.0, 1.0, 0.0]], "float32")
        >>> round(float(ops.convert_to_numpy(targeted_dlr_loss(z, np.array([0]), np.array([1])))[0]), 4)
        -0.5714
    """
    zs = ops.sort(logits, axis=-1)
    return -(_take_label(logits, y) - _take_label(logits, target)) / (
        zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + _EPS_DIV)


def _margin(logits, y):
    """z_y − max_{i≠y} z_i (Square's loss)."""
    classes = logits.shape[-1]
    mask = ops.one_hot(ops.cast(y, "int32"), classes)
    others = ops.max(ops.where(mask > 0, -np.inf, logits), axis=-1)
    return _take_label(logits, y) - others


def apgd_checkpoints(n_iter):
    """Iterations (0-based) after which APGD checks its step size, and the length
    of the window each check looks back on: the first after ⌊0.22 N⌋ iterations,
    each next window max(previous − ⌊0.03 N⌋, ⌊0.06 N⌋) long (each at least 1).

    Args:
        n_iter: N, the number of iterations.

    Returns:
        list of (iteration, window) pairs.

    Examples:
        >>> apgd_checkpoints(100)[:4]
        [(21, 22), (40, 19), (56, 16), (69, 13)]
    """
    n_iter = check_int(n_iter, "n_iter")
    window = max(int(0.22 * n_iter), 1)
    shortest = max(int(0.06 * n_iter), 1)
    decrease = max(int(0.03 * n_iter), 1)
    points, counter = [], 0
    for i in range(n_iter):
        counter += 1
        if counter == window:
            points.append((i, window))
            window, counter = max(window - decrease, shortest), 0
    return points


def _scores_function(model, from_logits):
    """x ↦ the model's logits (a final softmax is bypassed) or, for a model that
    outputs probabilities some other way (``from_logits=False``), log p (logits up
    to a per-example shift, which neither DLR nor cross-entropy sees). Returns
    (function, how: "logits", "softmax bypassed" or "log p")."""
    from_logits = resolve_from_logits(model, from_logits)
    logits_view = not from_logits and ends_in_softmax(model)

    def scores(x):
        out = ops.cast(forward_without_side_effects(model, x, logits_view), "float32")
        if from_logits or logits_view:
            return out
        return ops.log(ops.maximum(out, 1e-30))

    return scores, "logits" if from_logits else "softmax bypassed" if logits_view else "log p"


def _refuse_targeted(name, targeted, why):
    """``targeted=True`` where an attack cannot honour it is an error, not a silent
    untargeted run that takes the target classes for true labels."""
    if targeted:
        raise ValueError(
            f"{name} takes no `targeted=True`: {why}. For an attack towards classes you "
            "choose, use PGD(eps, targeted=True) or FGSM(eps, targeted=True) with y the target "
            "classes; for AutoAttack's targeted stage, APGD(eps, targeted=True).")


def _bucket(n, full):
    """Rows a subset of n examples is padded to: the next power of two, at most
    ``full`` (JAX compiles once per shape; this bounds the shapes to log₂ full)."""
    return min(full, 1 << max(n - 1, 0).bit_length())


def _padded(rows, size):
    """Indices ``rows`` padded to ``size`` by repeating the first."""
    return np.concatenate([rows, np.full(size - len(rows), rows[0], rows.dtype)])


_FORWARDS = weakref.WeakKeyDictionary()


def _compiled_scores(model, from_logits):
    """The compiled ``_scores_function`` of ``model``, one per (model, from_logits)
    for all attacks."""
    per_model = _FORWARDS.setdefault(model, {})
    if from_logits not in per_model:
        per_model[from_logits] = compile_function(model, _scores_function(model, from_logits)[0])
    return per_model[from_logits]


class _CompiledPerModel:
    """One compiled function per model (weakly keyed), built on first use."""

    def __init__(self, build):
        self._build = build
        self._cache = weakref.WeakKeyDictionary()

    def __call__(self, model):
        fn = self._cache.get(model)
        if fn is None:
            fn = self._cache[model] = self._build(model)
        return fn


class _RunsOnUnbroken(Attack):
    """An attack made of compiled runs (targets, restarts), each on the examples
    no earlier run broke. Subclasses give ``_run_keys(num_classes)`` (one int per
    run), ``_run(scores, x, y, key, noise) -> (found, broken)`` in graph ops,
    ``_noise(x)`` (the run's random draws) and ``_check_inputs``."""

    def _run_keys(self, num_classes):
        return [0]

    def _check_inputs(self, num_classes, shape):
        pass

    def _build_compiled(self, model):
        scores, _ = _scores_function(model, self.from_logits)
        return compile_function(model, lambda x, y, key, noise: self._run(scores, x, y, key, noise))

    def __call__(self, model, x, y=None):
        """Adversarial examples for the batch ``x`` (``y``: true labels, integer or
        one-hot; default the model's predictions); x where the attack found none.
        Each run covers only the examples not yet broken (padded to a power-of-two
        batch, so JAX compiles few shapes)."""
        refuse_token_inputs(model, x, type(self).__name__)
        x = ops.convert_to_tensor(x, "float32")
        num_classes = self._num_classes(model, x)
        self._check_inputs(num_classes, tuple(x.shape[1:]))
        self._check_range(x)
        y = np.asarray(ops.convert_to_numpy(self._labels(model, x, y, num_classes)))
        x_np = np.asarray(ops.convert_to_numpy(x))
        predicted = np.asarray(ops.convert_to_numpy(_compiled_scores(model, self.from_logits)(x))).argmax(axis=1)
        adversarial = x_np.copy()
        robust = predicted == y
        run = self._runs(model)
        for key in self._run_keys(num_classes):
            rows = np.flatnonzero(robust)
            if not len(rows):
                break
            padded = _padded(rows, _bucket(len(rows), len(x_np)))
            xs = ops.convert_to_tensor(x_np[padded])
            found, broken = run(xs, ops.convert_to_tensor(y[padded]), ops.convert_to_tensor(key, "int32"),
                                self._noise(xs))
            found = np.asarray(ops.convert_to_numpy(found))[:len(rows)]
            broken = np.asarray(ops.convert_to_numpy(broken))[:len(rows)]
            adversarial[rows[broken]] = found[broken]
            robust[rows[broken]] = False
        return adversarial

    def perturb_in_graph(self, model, x, y=None):
        """All runs inside the step being compiled (for ``PerturbedModel``): each
        covers the whole batch, and an example keeps the first run's adversarial
        that breaks it."""
        scores, _ = _scores_function(model, self.from_logits)
        clean = scores(x)
        if y is None:
            y = ops.argmax(clean, axis=-1)
        y = ops.cast(y, "int32")
        self._check_inputs(clean.shape[-1], tuple(x.shape[1:]))
        adversarial = x
        robust = ops.equal(ops.cast(ops.argmax(clean, axis=-1), "int32"), y)
        for key in self._run_keys(clean.shape[-1]):
            found, broken = self._run(scores, x, y, key, self._noise(x))
            broken = ops.logical_and(robust, broken)
            adversarial = ops.where(_per_example(broken, x), found, adversarial)
            robust = ops.logical_and(robust, ops.logical_not(broken))
        return adversarial


# ----------------------------------------------------------------------------- APGD


@keras.saving.register_keras_serializable(package="keras_lowrank")
class APGD(_RunsOnUnbroken):
    """Auto-PGD (Croce & Hein 2020): PGD with momentum and a step size that adapts
    itself, no step size to tune.

    Per example, N iterations from x⁰ = P(x + ε t/‖t‖) (t uniform in [−1, 1]ᵈ for
    L∞, Gaussian for L2), step size η = 2ε:

        z = P(xᵏ + η · sign(∇L(xᵏ)))            (L2: η ∇/‖∇‖₂)
        xᵏ⁺¹ = P(xᵏ + α (z − xᵏ) + (1 − α)(xᵏ − xᵏ⁻¹)),  α = 0.75 (1 on the first step)

    P projects onto the ε-ball around x and the input range. At the checkpoints of
    ``apgd_checkpoints(N)`` each example halves η and restarts from its best point if
    its loss rose in at most ρ·k of the last k steps, or if η was not halved at the
    previous checkpoint and the best loss has not improved since. An example is
    broken as soon as one iterate is misclassified; the attack returns, per example,
    its last misclassified iterate (x itself where none was). Restarts and targets run
    only on the examples not yet broken.

    Args:
        eps: the perturbation budget (≥ 0).
        norm: "inf" (or np.inf) or 2.
        loss: "ce" (cross-entropy) or "dlr" (difference of logits ratio); None
            (default): "ce", and the targeted DLR loss when ``targeted``.
        targeted: APGD-T: for each of the ``n_target_classes`` classes ranked
            highest after the true one (on the clean input), maximise the targeted
            loss towards it. ``y`` still holds the true labels.
        n_iter: iterations N per run (≥ 1).
        restarts: random restarts (≥ 1) per target.
        n_target_classes: targets of APGD-T (at most classes − 1 are used).
        rho: ρ, the share of rising steps below which η is halved.
        seed: seed of the random starts.

    Keyword Args:
        clip: see ``Attack``.
        from_logits: see ``Attack``.

    Examples:
        a linear model whose decision x₀ > 0.5 lies 0.05 from the first input:
        APGD at ε = 0.1 crosses it, at ε = 0.03 it cannot.

        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
        >>> model.layers[0].set_weights([np.array([[1.0, -1.0], [0.0, 0.0]]), np.array([-0.5, 0.5])])
        >>> x = np.array([[0.55, 0.5]], "float32")
        >>> [int(np.argmax(model.predict(APGD(eps, n_iter=10, seed=0)(model, x, [0]), verbose=0)))
        ...  for eps in (0.03, 0.1)]
        [0, 1]
    """

    def __init__(self, eps, norm="inf", loss=None, targeted=False, n_iter=100, restarts=1,
                 n_target_classes=9, rho=0.75, seed=None, **kwargs):
        kwargs.pop("targeted", None)
        super().__init__(targeted=False, **kwargs)
        self.eps = check_number(eps, "eps", minimum=0.0)
        self.norm = _check_norm(norm)
        self.apgd_targeted = bool(targeted)
        if loss is None:
            loss = "dlr" if self.apgd_targeted else "ce"
        if loss not in ("ce", "dlr"):
            raise ValueError(f'`loss` must be "ce" or "dlr", got loss={loss!r}.')
        self.loss = loss
        self.n_iter = check_int(n_iter, "n_iter")
        self.restarts = check_int(restarts, "restarts")
        self.n_target_classes = check_int(n_target_classes, "n_target_classes")
        self.rho = check_number(rho, "rho", minimum=0.0, maximum=1.0)
        self._set_seed(seed)
        points = apgd_checkpoints(self.n_iter)
        checkpoint = np.zeros(self.n_iter, "float32")
        window = np.zeros(self.n_iter, "float32")
        for i, k in points:
            checkpoint[i], window[i] = 1.0, k
        self._checkpoint, self._window = checkpoint, window
        self._runs = _CompiledPerModel(self._build_compiled)

    def get_config(self):
        config = super().get_config()
        config.pop("targeted")
        return {**config, "eps": self.eps, "norm": self.norm, "loss": self.loss,
                "targeted": self.apgd_targeted, "n_iter": self.n_iter, "restarts": self.restarts,
                "n_target_classes": self.n_target_classes, "rho": self.rho, "seed": self.seed}

    @property
    def name(self):
        kind = "APGD-T" if self.apgd_targeted else f"APGD-{self.loss.upper()}"
        restarts = f" ×{self.restarts}" if self.restarts > 1 else ""
        return f"{kind}-{self.n_iter} L{_SYMBOL[self.norm]} ε={self.eps:g}{restarts}"

    def __repr__(self):
        return (f"APGD(eps={self.eps:g}, norm={self.norm}, loss={self.loss}, "
                f"targeted={self.apgd_targeted}, n_iter={self.n_iter}, restarts={self.restarts})")

    # -- the pieces
    def _targets(self, num_classes):
        """Ranks (2 = the runner-up) of the target classes, or [0] (untargeted)."""
        if not self.apgd_targeted:
            return [0]
        return list(range(2, min(self.n_target_classes, num_classes - 1) + 2))

    def _run_keys(self, num_classes):
        return [rank for rank in self._targets(num_classes) for _ in range(self.restarts)]

    def _check_inputs(self, num_classes, shape):
        self._check_classes(num_classes)

    def _run(self, scores, x, y, key, noise):
        found, still = self._single_run(scores, x, y, key, noise)[:2]
        return found, still < 0.5

    def _check_classes(self, num_classes):
        targeted = self.apgd_targeted and self.loss == "dlr"
        needed = TARGETED_DLR_MIN_CLASSES if targeted else 3 if self.loss == "dlr" else 2
        if num_classes < needed:
            what = "the targeted DLR loss" if targeted else "the DLR loss"
            raise ValueError(f"{what} needs at least {needed} classes; the model has {num_classes}. "
                             'Use loss="ce" (untargeted).')

    def _noise(self, x):
        """One random start, shaped like ``x``."""
        shape = ops.shape(x)
        if self.norm == "inf":
            return keras.random.uniform(shape, -1.0, 1.0, seed=self._seed)
        return keras.random.normal(shape, seed=self._seed)

    def _project(self, v, x):
        if self.norm == "inf":
            v = ops.minimum(ops.maximum(v, x - self.eps), x + self.eps)
        else:
            d = v - x
            v = x + _normalize(d, "2") * _per_example(ops.minimum(self.eps, _l2(d)), d)
        return self._clip(v)

    def _loss_function(self, scores):
        def loss(x, y, target):
            z = scores(x)
            if self.apgd_targeted:
                if self.loss == "dlr":
                    value = targeted_dlr_loss(z, y, target)
                else:
                    value = -keras.losses.sparse_categorical_crossentropy(target, z, from_logits=True)
            elif self.loss == "dlr":
                value = dlr_loss(z, y)
            else:
                value = keras.losses.sparse_categorical_crossentropy(y, z, from_logits=True)
            return value, z

        return loss

    def _single_run(self, scores, x, y, rank, noise, start=None):
        """One APGD run on a batch: returns (last misclassified iterate, still
        robust (1/0), best-loss point, best loss, final step sizes)."""
        y = ops.cast(y, "int32")
        clean = scores(x)
        classes = clean.shape[-1]
        order = ops.argsort(clean, axis=-1)
        target = ops.take(order, ops.clip(classes - ops.cast(rank, "int32"), 0, classes - 1), axis=1)
        target = ops.cast(target, "int32")
        loss_grad = value_and_grad(self._loss_function(scores))
        if start is None:
            start = x + self.eps * _normalize(noise, self.norm)
        x_adv = self._clip(start)
        loss, z, grad = loss_grad(x_adv, y, target)
        acc = ops.cast(ops.equal(ops.cast(ops.argmax(z, axis=-1), "int32"), y), "float32")
        batch = ops.shape(x)[0]
        step = ops.full((batch,), 2.0 * self.eps, "float32")
        checkpoint = ops.convert_to_tensor(self._checkpoint)
        window = ops.convert_to_tensor(self._window)
        zeros = ops.zeros((batch,), "float32")
        state = (x_adv, x_adv, grad, step, x_adv, loss, grad, x_adv, acc,
                 zeros, zeros, ops.ones((batch,), "float32"), loss)

        def body(i, state):
            (x_adv, x_old, grad, step, x_best, loss_best, grad_best, x_best_adv, acc,
             prev_loss, rises, reduced_last, loss_best_last) = state
            momentum = ops.where(i > 0, 0.75, 1.0)
            change = x_adv - x_old
            x_old = x_adv
            if self.norm == "inf":
                direction = ops.sign(grad)
            else:
                direction = _normalize(grad, "2")
            z1 = self._project(x_adv + _per_example(step, x_adv) * direction, x)
            x_new = self._project(x_adv + (z1 - x_adv) * momentum + change * (1.0 - momentum), x)
            loss, z, grad = loss_grad(x_new, y, target)
            correct = ops.cast(ops.equal(ops.cast(ops.argmax(z, axis=-1), "int32"), y), "float32")
            acc = ops.minimum(acc, correct)
            x_best_adv = ops.where(_per_example(correct < 0.5, x), x_new, x_best_adv)
            rises = rises + ops.cast(loss > prev_loss, "float32")
            prev_loss = loss
            improved = loss > loss_best
            x_best = ops.where(_per_example(improved, x), x_new, x_best)
            grad_best = ops.where(_per_example(improved, x), grad, grad_best)
            loss_best = ops.where(improved, loss, loss_best)
            # the checkpoint (a no-op at other iterations)
            at = ops.take(checkpoint, i) > 0.5
            k = ops.take(window, i)
            oscillating = rises <= k * self.rho
            stalled = ops.logical_and(reduced_last < 0.5, loss_best_last >= loss_best)
            flag = ops.logical_and(at, ops.logical_or(oscillating, stalled))
            reduced_last = ops.where(at, ops.cast(flag, "float32"), reduced_last)
            loss_best_last = ops.where(at, loss_best, loss_best_last)
            step = ops.where(flag, step / 2.0, step)
            x_adv = ops.where(_per_example(flag, x), x_best, x_new)
            grad = ops.where(_per_example(flag, x), grad_best, grad)
            rises = ops.where(at, 0.0, rises)
            return (x_adv, x_old, grad, step, x_best, loss_best, grad_best, x_best_adv, acc,
                    prev_loss, rises, reduced_last, loss_best_last)

        state = ops.fori_loop(0, self.n_iter, body, state)
        return state[7], state[8], state[4], state[5], state[3]

    def trace(self, model, x, y, start):
        """One run from the given starting points, its whole final state (for
        checks against another implementation): dict of numpy arrays ``x_adv``
        (last misclassified iterate), ``robust``, ``x_best``, ``loss_best``,
        ``step_size``. Targeted runs use the runner-up class."""
        scores, _ = _scores_function(model, self.from_logits)
        x = ops.convert_to_tensor(x, "float32")
        out = compile_function(model, lambda x, y, s: self._single_run(scores, x, y, 2, None, start=s))(
            x, ops.convert_to_tensor(np.asarray(y), "int32"), ops.convert_to_tensor(start, "float32"))
        names = ("x_adv", "robust", "x_best", "loss_best", "step_size")
        return {n: np.asarray(ops.convert_to_numpy(v)) for n, v in zip(names, out)}


# ----------------------------------------------------------------------------- Square


def _square_fraction(p_init, iteration, n_queries):
    """The authors' schedule: p halves at iterations 10, 50, 200, 500, 1000, 2000,
    4000, 6000, 8000 of 10 000 (rescaled to ``n_queries``)."""
    it = int(iteration / n_queries * 10000)
    for divisor, bound in ((1, 10), (2, 50), (4, 200), (8, 500), (16, 1000), (32, 2000),
                           (64, 4000), (128, 6000), (256, 8000)):
        if it <= bound:
            return p_init / divisor
    return p_init / 512


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
    moved between two windows, images only; docs/methods.md §7).

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
        n_queries: iterations, one forward pass of the batch each (≥ 1).
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
        >>> int(np.argmax(model.predict(Square(0.1, n_queries=50, seed=0)(model, x, [0]), verbose=0)))
        1
    """

    needs_gradients = False

    def __init__(self, eps, n_queries=5000, p_init=0.8, norm="inf", seed=None, **kwargs):
        _refuse_targeted("Square", kwargs.pop("targeted", False),
                         "Square here is the untargeted attack of AutoAttack (y: the true labels)")
        super().__init__(targeted=False, **kwargs)
        self.eps = check_number(eps, "eps", minimum=0.0)
        self.norm = _check_norm(norm)
        self.n_queries = check_int(n_queries, "n_queries")
        self.p_init = check_number(p_init, "p_init", minimum=0.0, maximum=1.0)
        if self.p_init <= 0:
            raise ValueError(f"`p_init` must be in (0, 1], got p_init={p_init!r}.")
        self._set_seed(seed)
        self._runs = _CompiledPerModel(self._build_compiled)

    def get_config(self):
        config = super().get_config()
        config.pop("targeted")
        return {**config, "eps": self.eps, "n_queries": self.n_queries, "p_init": self.p_init,
                "norm": self.norm, "seed": self.seed}

    @property
    def name(self):
        return f"Square-{self.n_queries} L{_SYMBOL[self.norm]} ε={self.eps:g} (black-box)"

    def __repr__(self):
        return f"Square(eps={self.eps:g}, n_queries={self.n_queries}, p_init={self.p_init:g}, norm={self.norm})"

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
        for i in range(self.n_queries):
            p = _square_fraction(self.p_init, i, self.n_queries)
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
        positions = keras.random.uniform((self.n_queries, 2), seed=self._seed)
        signs = ops.sign(keras.random.uniform((self.n_queries, c), -1.0, 1.0, seed=self._seed))
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
        heights, widths = ops.convert_to_tensor(heights), ops.convert_to_tensor(widths)
        rows = ops.reshape(ops.arange(h, dtype="int32"), (h, 1, 1))
        cols = ops.reshape(ops.arange(w, dtype="int32"), (1, w, 1))

        x_best = self._clip(xc + self.eps * stripes)
        def propose(i, x_best):
            side_h, side_w = ops.take(heights, i), ops.take(widths, i)
            u = ops.take(positions, i, axis=0)
            # the authors' random_int(0, h − s): floor(u (h − s)), never h − s itself
            top = ops.cast(ops.floor(u[0] * ops.cast(h - side_h, "float32")), "int32")
            left = ops.cast(ops.floor(u[1] * ops.cast(w - side_w, "float32")), "int32")
            inside = ops.logical_and(ops.logical_and(rows >= top, rows < top + side_h),
                                     ops.logical_and(cols >= left, cols < left + side_w))
            delta = 2.0 * self.eps * ops.cast(inside, "float32") * ops.reshape(ops.take(signs, i, axis=0), (1, 1, c))
            x_new = ops.minimum(ops.maximum(x_best + delta, xc - self.eps), xc + self.eps)
            return self._clip(x_new)

        return self._search(scores, xc, y, shape, x_best, propose)

    def _search(self, scores, xc, y, shape, x_start, propose):
        """The random search both norms share: from ``x_start`` (canonical
        (batch, h, w, c)), iteration i evaluates ``propose(i, x_best)`` and keeps it
        for the unbroken examples whose margin falls or turns negative; stops when
        all are broken. Returns (best point in ``shape``, its margin, queries)."""

        def margin(points):
            return _margin(scores(ops.reshape(points, (-1,) + shape)), y)

        def cond(i, x_best, margin_min, queries):
            return ops.logical_and(i < self.n_queries, ops.any(margin_min > 0.0))

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
        draws = keras.random.uniform((self.n_queries, 5), seed=self._seed)  # 2 windows, transpose
        signs = ops.sign(keras.random.uniform((self.n_queries, batch, c), -1.0, 1.0, seed=self._seed))
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

# ----------------------------------------------------------------------------- FAB-T


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
    ``n_iter`` steps from x⁰ = x: linearise g = z_t − z_y at xᵏ, take the smallest
    steps (in the attack's norm) d₁ from xᵏ and d₂ from x onto {g = 0} within the
    input box (``project_to_hyperplane_linf`` / ``project_to_hyperplane_l2``), and move to
    clip((xᵏ + η d₁)(1 − α) + (x + η d₂) α), α = min(‖d₁‖ / (‖d₁‖ + ‖d₂‖), α_max); a
    misclassified iterate is kept if it is the closest to x so far and pulled back,
    xᵏ⁺¹ = x + β (xᵏ⁺¹ − x). An example counts as broken if its closest
    misclassified point lies within ``eps``. Targets run on unbroken examples only.

    Args:
        eps: budget (≥ 0), in the norm ``norm``.
        norm: "inf" (default) or 2.
        n_iter: steps per target (≥ 1).
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
        >>> [int(np.argmax(model.predict(FAB(eps, n_iter=10, n_target_classes=1)(model, x, [0]), verbose=0)))
        ...  for eps in (0.03, 0.1)]
        [0, 1]
    """

    def __init__(self, eps, norm="inf", n_iter=100, n_target_classes=9, alpha_max=0.1, eta=1.05, beta=0.9,
                 **kwargs):
        _refuse_targeted("FAB", kwargs.pop("targeted", False),
                         "FAB here is FAB-T as AutoAttack runs it: it already aims at the "
                         "`n_target_classes` most likely other classes, with y the true labels")
        super().__init__(targeted=False, **kwargs)
        if self.clip is None:
            raise ValueError("FAB projects onto the input box: pass clip=(low, high).")
        self.eps = check_number(eps, "eps", minimum=0.0)
        self.norm = _check_norm(norm)
        self.n_iter = check_int(n_iter, "n_iter")
        self.n_target_classes = check_int(n_target_classes, "n_target_classes")
        self.alpha_max = check_number(alpha_max, "alpha_max", minimum=0.0, maximum=1.0)
        self.eta = check_number(eta, "eta", minimum=0.0)
        self.beta = check_number(beta, "beta", minimum=0.0, maximum=1.0)
        self._runs = _CompiledPerModel(self._build_compiled)

    def get_config(self):
        config = super().get_config()
        config.pop("targeted")
        return {**config, "eps": self.eps, "norm": self.norm, "n_iter": self.n_iter,
                "n_target_classes": self.n_target_classes, "alpha_max": self.alpha_max, "eta": self.eta,
                "beta": self.beta}

    @property
    def name(self):
        return f"FAB-T-{self.n_iter} L{_SYMBOL[self.norm]} ε={self.eps:g}"

    def __repr__(self):
        return (f"FAB(eps={self.eps:g}, norm={self.norm!r}, n_iter={self.n_iter}, "
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
        _, adv, distance = ops.fori_loop(0, self.n_iter, body, state)
        return adv, distance

# ----------------------------------------------------------------------------- AutoAttack


@dataclasses.dataclass
class AutoAttackResult:
    """What ``AutoAttack.run`` found.

    Attributes:
        x_adv: the adversarial examples (x where no stage broke the example).
        robust: (n,) bool, still classified correctly after every stage.
        broken_by: (n,) stage index that broke each example; −1 if none; −2 if
            misclassified clean.
        clean_accuracy: accuracy on x.
        robust_accuracy: accuracy under the ensemble (the worst case per example).
        stage_accuracy: {stage name: robust accuracy after it and all before it}.
        flags: the checks of the authors' ``checks.py``: ``zero_gradient_share``
            (examples whose input gradient is exactly 0), ``randomized`` (the
            forward pass differs between calls), ``black_box_gain`` (accuracy the
            black-box stage took after the white-box ones), ``probabilities`` (the
            model outputs probabilities, attacked through log p), and
            ``max_perturbation`` (largest ‖x_adv − x‖, to compare with ε).
        seconds: wall time.

    Examples:

        >>> result = AutoAttackResult(x_adv=None, robust=np.array([True, False]), broken_by=np.array([-1, 0]),
        ...                           clean_accuracy=1.0, robust_accuracy=0.5, stage_accuracy={}, flags={},
        ...                           seconds=0.0)
        >>> result.robust_accuracy
        0.5
    """

    x_adv: object
    robust: object
    broken_by: object
    clean_accuracy: float
    robust_accuracy: float
    stage_accuracy: dict
    flags: dict
    seconds: float


_VERSIONS = ("standard", "fast")


@keras.saving.register_keras_serializable(package="keras_lowrank")
class AutoAttack(Attack):
    """AutoAttack: a worst-case ensemble of parameter-free attacks, the standard
    by which robustness is reported (Croce & Hein 2020).

    Stages, in order, each run only on the examples every earlier stage failed to
    break; an example counts as broken by the first stage that misclassifies it
    (re-checked with a fresh forward pass), and keeps that stage's adversarial:

    - ``version="standard"``: APGD-CE (100 iterations), APGD-T (targeted DLR, the 9
      classes ranked highest after the true one, 100 iterations each), FAB-T (9
      targets, 100 iterations; needs ``clip``), Square (5000 queries).
    - ``version="fast"``: APGD-CE and APGD-T with 3 targets: a quick estimate for
      sweeps, not the standard.

    ``run`` returns the per-stage accuracies and the checks of the authors'
    ``checks.py`` (gradient masking, randomised defences, probabilities);
    ``evaluate_robustness`` reports them. Called like the other attacks
    (``AutoAttack(eps)(model, x, y)``) it returns the adversarial examples.

    Args:
        eps: the budget (≥ 0).
        norm: "inf" or 2 (Square L2 needs images of ≥ 3×3 pixels: on other
            inputs the ensemble runs without it and ``flags["skipped"]`` says so).
        version: "standard" or "fast".
        n_iter: APGD iterations (100 in the standard).
        n_queries: Square's queries (5000 in the standard).
        batch_size: examples per compiled batch in ``run``.
        seed: seed of every stage's random draws.

    Keyword Args:
        clip: see ``Attack``.
        from_logits: see ``Attack``.

    Examples:
        the example 0.05 from the decision is broken at ε = 0.1 by the first
        stage; the one 0.4 away is not.

        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4)])
        >>> model.layers[0].set_weights([np.array([[1.0, -1.0, 0, 0], [0, 0, 0, 0]]),
        ...                              np.array([-0.5, 0.5, -5, -5])])
        >>> x = np.array([[0.55, 0.5], [0.9, 0.5]], "float32")
        >>> result = AutoAttack(0.1, n_queries=100, seed=0).run(model, x, np.array([0, 0]))
        >>> result.robust.tolist(), result.broken_by.tolist(), result.robust_accuracy
        ([False, True], [0, -1], 0.5)
    """

    def __init__(self, eps, norm="inf", version="standard", n_iter=100, n_queries=5000,
                 batch_size=500, seed=0, **kwargs):
        _refuse_targeted("AutoAttack", kwargs.pop("targeted", False),
                         "AutoAttack's stages choose their own targets (APGD-T, FAB-T), with y the true labels")
        super().__init__(targeted=False, **kwargs)
        self.eps = check_number(eps, "eps", minimum=0.0)
        self.norm = _check_norm(norm)
        if version not in _VERSIONS:
            raise ValueError(f"`version` must be one of {_VERSIONS}, got version={version!r}.")
        self.version = version
        self.n_iter = check_int(n_iter, "n_iter")
        self.n_queries = check_int(n_queries, "n_queries")
        self.batch_size = check_int(batch_size, "batch_size")
        self.seed = seed = check_seed(seed)
        common = {"clip": self.clip, "from_logits": self.from_logits}
        seeds = [None if seed is None else seed + k for k in range(3)]
        self.stages = [APGD(self.eps, self.norm, loss="ce", n_iter=self.n_iter, seed=seeds[0], **common),
                       APGD(self.eps, self.norm, targeted=True, n_iter=self.n_iter,
                            n_target_classes=9 if version == "standard" else 3, seed=seeds[1], **common)]
        if version == "standard":
            if self.clip is not None:
                self.stages.append(FAB(self.eps, self.norm, n_iter=self.n_iter, n_target_classes=9, **common))
            self.stages.append(Square(self.eps, norm=self.norm, n_queries=self.n_queries, seed=seeds[2], **common))
        self._gradients = _CompiledPerModel(self._build_gradients)

    def get_config(self):
        config = super().get_config()
        config.pop("targeted")
        return {**config, "eps": self.eps, "norm": self.norm, "version": self.version,
                "n_iter": self.n_iter, "n_queries": self.n_queries, "batch_size": self.batch_size,
                "seed": self.seed}

    @property
    def name(self):
        return f"AutoAttack ({self.version}) L{_SYMBOL[self.norm]} ε={self.eps:g}"

    def __repr__(self):
        return f"AutoAttack(eps={self.eps:g}, norm={self.norm}, version={self.version!r})"

    @property
    def stage_names(self):
        return [_stage_name(stage) for stage in self.stages]

    def _build_gradients(self, model):
        scores, _ = _scores_function(model, self.from_logits)

        def loss(x, y):
            z = scores(x)
            return keras.losses.sparse_categorical_crossentropy(y, z, from_logits=True), z

        grad = value_and_grad(loss)

        def gradient(x, y):
            return grad(x, ops.cast(y, "int32"))[2]

        if keras.backend.backend() == "jax":
            # Eager JAX compiles every primitive of the forward and backward passes as a
            # program of its own: 51 programs for a 5-layer CNN (docs/benchmarks.md),
            # each dearer on a GPU. One jit instead.
            return compile_function(model, gradient)
        return gradient  # TensorFlow: eager, one call per batch (a graph trace: ~1 s per model)

    def __call__(self, model, x, y=None):
        return self.run(model, x, y).x_adv

    def run(self, model, x, y=None, verbose=0):
        """The ensemble on (x, y) in batches of ``batch_size``.

        Args:
            model: a Keras classifier.
            x: inputs (numpy array or tensor) in the ``clip`` range.
            y: true labels (integer or one-hot); default the model's predictions.
            verbose: 1 for a Keras progress bar over the batches.

        Returns:
            ``AutoAttackResult``.
        """
        import time

        start = time.perf_counter()
        refuse_token_inputs(model, x, "AutoAttack")
        x = np.asarray(ops.convert_to_numpy(ops.convert_to_tensor(x, "float32")))
        num_classes = self._num_classes(model, ops.convert_to_tensor(x[:1]))
        if num_classes < TARGETED_DLR_MIN_CLASSES:  # every version runs APGD-T
            raise ValueError(
                f"AutoAttack needs a model of at least {TARGETED_DLR_MIN_CLASSES} classes (its APGD-T "
                f"stage's targeted DLR "
                f"loss); the model has {num_classes}. Evaluate such a model with the stages "
                "that apply: evaluate_robustness(model, data, attacks=[APGD(eps, loss='ce'), "
                "Square(eps)]).")
        self._check_range(x)
        y = np.asarray(ops.convert_to_numpy(self._labels(model, ops.convert_to_tensor(x), y, num_classes)))
        forward = _compiled_scores(model, self.from_logits)
        stages, skipped = [], []
        for stage in self.stages:
            (skipped if isinstance(stage, Square) and not stage.applies_to(x.shape[1:]) else stages).append(stage)
        adversarial = x.copy()
        broken_by = np.full(len(x), -1)
        after_stage = np.zeros(len(stages))
        zero_gradients = 0
        progress = keras.utils.Progbar(len(x)) if verbose else None
        for begin in range(0, len(x), self.batch_size):
            xb, yb = x[begin:begin + self.batch_size], y[begin:begin + self.batch_size]
            predicted = np.asarray(ops.convert_to_numpy(forward(ops.convert_to_tensor(xb)))).argmax(axis=1)
            robust = predicted == yb
            broken = broken_by[begin:begin + len(xb)]
            broken[~robust] = -2
            grads = np.asarray(ops.convert_to_numpy(self._gradients(model)(
                ops.convert_to_tensor(xb), ops.convert_to_tensor(yb))))
            zero_gradients += int(np.sum(np.all(grads.reshape(len(xb), -1) == 0, axis=1)))
            for index, stage in enumerate(stages):
                rows = np.flatnonzero(robust)
                if len(rows):
                    found = stage(model, xb[rows], yb[rows])
                    fooled = np.asarray(ops.convert_to_numpy(
                        forward(ops.convert_to_tensor(found)))).argmax(axis=1) != yb[rows]
                    adversarial[begin + rows[fooled]] = found[fooled]
                    broken[rows[fooled]] = index
                    robust[rows[fooled]] = False
                after_stage[index] += robust.sum()
            if progress is not None:
                progress.update(begin + len(xb))
        n = len(x)
        randomized, raw = self._randomized(model, x[:self.batch_size])
        clean = float(np.mean(broken_by != -2))
        robust = broken_by == -1
        stage_accuracy = {_stage_name(stage): value for stage, value in zip(stages, (after_stage / n).tolist())}
        flags = {
            "zero_gradient_share": zero_gradients / n,
            "randomized": randomized,
            "black_box_gain": (float(after_stage[-2] - after_stage[-1]) / n
                               if isinstance(stages[-1], Square) else None),
            "probabilities": bool(_looks_like_probabilities(raw)
                                  and _scores_function(model, self.from_logits)[1] == "logits"),
            "max_perturbation": _max_norm(adversarial - x, self.norm),
            "skipped": [f"{stage.name}: L2 needs images of at least 3×3 pixels" for stage in skipped],
        }
        return AutoAttackResult(x_adv=adversarial, robust=robust, broken_by=broken_by, clean_accuracy=clean,
                                robust_accuracy=float(robust.mean()), stage_accuracy=stage_accuracy, flags=flags,
                                seconds=time.perf_counter() - start)

    @staticmethod
    def _randomized(model, x, passes=5, tolerance=1e-4):
        """The authors' check: normalised outputs of repeated eager passes (whose
        random state advances, unlike the attacks' stateless ones) differ by more
        than ``tolerance``, or the predictions differ. Returns (flag, first outputs)."""
        x = ops.convert_to_tensor(x)
        raw = [np.asarray(ops.convert_to_numpy(model(x, training=False)), "float64") for _ in range(passes)]
        outputs = [o / (np.linalg.norm(o, axis=1, keepdims=True) + 1e-10) for o in raw]
        predictions = [o.argmax(axis=1) for o in outputs]
        differ = max(float(np.abs(a - b).max()) for a in outputs for b in outputs)
        return bool(differ > tolerance or any((p != predictions[0]).any() for p in predictions)), raw[0]

    def perturb_in_graph(self, model, x, y=None):
        """The stages inside a step being compiled (``PerturbedModel``): each runs on
        the whole batch, an example keeping the first stage's adversarial that breaks
        it. ``run`` (and ``evaluate_robustness``) run each stage on the unbroken
        examples only, which is much cheaper."""
        scores, _ = _scores_function(model, self.from_logits)
        if y is None:
            y = ops.argmax(scores(x), axis=-1)
        y = ops.cast(y, "int32")
        adversarial = x
        robust = ops.equal(ops.cast(ops.argmax(scores(x), axis=-1), "int32"), y)
        for stage in self.stages:
            if isinstance(stage, Square) and not stage.applies_to(tuple(x.shape[1:])):
                continue
            found = stage.perturb_in_graph(model, x, y)
            fooled = ops.not_equal(ops.cast(ops.argmax(scores(found), axis=-1), "int32"), y)
            broken = ops.logical_and(robust, fooled)
            adversarial = ops.where(_per_example(broken, x), found, adversarial)
            robust = ops.logical_and(robust, ops.logical_not(fooled))
        return adversarial


def _stage_name(stage):
    return stage.name.split(" L")[0]


def _looks_like_probabilities(outputs, tolerance=1e-5):
    """The authors' ``check_range_output``: every row in [0, 1] and summing to 1."""
    return bool(outputs.max() < 1 + tolerance and outputs.min() > -tolerance
                and np.all(np.abs(outputs.sum(axis=-1) - 1) < tolerance))


def _max_norm(delta, norm):
    flat = delta.reshape(len(delta), -1)
    if not len(flat):
        return 0.0
    values = np.abs(flat).max(axis=1) if norm == "inf" else np.sqrt((flat.astype("float64") ** 2).sum(axis=1))
    return float(values.max())


def warn_flags(result, eps):
    """Warnings, worded as the authors' checks, for the flags of ``result``."""
    flags = result.flags
    if flags["zero_gradient_share"] > 0:
        warnings.warn(f"{flags['zero_gradient_share']:.1%} of the points have a zero input gradient: "
                      "gradient-based attacks may be unreliable here.", stacklevel=2)
    if flags["randomized"]:
        warnings.warn("The forward pass is not deterministic (a randomised defence?): use an attack with "
                      "expectation over transformation.", stacklevel=2)
    if flags["black_box_gain"]:
        warnings.warn(f"Square (black-box) lowered robust accuracy by {flags['black_box_gain']:.2%} after the "
                      "white-box stages: their gradients are likely masked.", stacklevel=2)
    if flags["probabilities"]:
        warnings.warn("The outputs look like probabilities but are attacked as logits: pass from_logits=False.",
                      stacklevel=2)
    if flags["max_perturbation"] > eps * (1 + 1e-5) + 1e-6:
        warnings.warn(f"A perturbation of size {flags['max_perturbation']:.4g} exceeds ε = {eps:g}.", stacklevel=2)
