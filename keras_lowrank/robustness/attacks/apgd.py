"""APGD-CE and APGD-T (Croce & Hein 2020): PGD with momentum and a step size that
adapts itself."""


import warnings

import keras
import numpy as np
from keras import ops

from keras_lowrank._validation import check_int, check_number
from keras_lowrank._warning import LowRankWarning
from keras_lowrank.robustness._classifier import ClassifierView
from keras_lowrank.robustness._gradients import (
    compile_function,
    loop_ops,
    value_and_grad,
)
from keras_lowrank.robustness.attacks._runner import (
    _CompiledPerModel,
    _RunsOnUnbroken,
)
from keras_lowrank.robustness.attacks.base import (
    _SYMBOL,
    _check_norm,
    renamed_argument,
)
from keras_lowrank.robustness.attacks.losses import (
    DLR_MIN_CLASSES,
    TARGETED_DLR_MIN_CLASSES,
    _l2,
    _normalize,
    _per_example,
    dlr_loss,
    targeted_dlr_loss,
)


def apgd_checkpoints(steps):
    """Iterations (0-based) after which APGD checks its step size, and the length
    of the window each check looks back on: the first after ⌊0.22 N⌋ iterations,
    each next window max(previous − ⌊0.03 N⌋, ⌊0.06 N⌋) long (each at least 1).

    Args:
        steps: N, the number of iterations.

    Returns:
        list of (iteration, window) pairs.

    Examples:
        >>> apgd_checkpoints(100)[:4]
        [(21, 22), (40, 19), (56, 16), (69, 13)]
    """
    steps = check_int(steps, "steps")
    window = max(int(0.22 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    decrease = max(int(0.03 * steps), 1)
    points, counter = [], 0
    for i in range(steps):
        counter += 1
        if counter == window:
            points.append((i, window))
            window, counter = max(window - decrease, shortest), 0
    return points


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

    Against a randomised model (one whose layers draw random numbers in inference,
    from a ``keras.random.SeedGenerator``) every pass draws anew, as in the authors'
    eager loop, and ``eot_iter`` > 1 takes each gradient as the mean over that many
    forward/backward passes (expectation over transformation, Athalye et al. 2018;
    the authors' ``eot_iter``): the loss and the misclassification check are the
    last pass's, as theirs.

    Args:
        eps: the perturbation budget (≥ 0).
        norm: "inf" (or np.inf) or 2.
        loss: "ce" (cross-entropy) or "dlr" (difference of logits ratio); None
            (default): "ce".
        targeted: deprecated (a ``LowRankWarning``; removed in the next release): use
            ``APGDT``. Elsewhere ``targeted=True`` means that ``y`` holds target
            classes; here it meant APGD-T, with ``y`` the true labels.
        steps: iterations N per run (≥ 1; formerly ``n_iter``, deprecated).
        restarts: random restarts (≥ 1) per target.
        n_target_classes: targets of the deprecated ``targeted=True``.
        rho: ρ, the share of rising steps below which η is halved.
        eot_iter: passes per gradient (≥ 1; 20 in AutoAttack's "rand" version).
        seed: seed of the random starts (and of the passes' draws).

    Keyword Args:
        clip: see ``Attack``.
        from_logits: see ``Attack``.

    Examples:
        a linear model whose decision x₀ > 0.5 lies 0.05 from the first input:
        APGD at ε = 0.1 crosses it, at ε = 0.03 it cannot.

        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
        >>> model.layers[0].set_weights([np.array([[1.0, -1.0], [0.0, 0.0]]), np.array([-0.5, 0.5])])
        >>> x = np.array([[0.55, 0.5]], "float32")
        >>> [int(np.argmax(model.predict(APGD(eps, steps=10, seed=0)(model, x, [0]), verbose=0)))
        ...  for eps in (0.03, 0.1)]
        [0, 1]

    References:
        - Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
          attacks", ICML 2020: https://arxiv.org/abs/2003.01690
        - Athalye, Engstrom, Ilyas & Kwok, "Synthesizing Robust Adversarial Examples" (expectation over
          transformation), ICML 2018: https://arxiv.org/abs/1707.07397
    """

    _TARGETED = False  # APGDT: True

    def __init__(self, eps, norm="inf", loss=None, targeted=False, steps=100, restarts=1,
                 n_target_classes=9, rho=0.75, eot_iter=1, seed=None, **kwargs):
        steps = renamed_argument(kwargs, "n_iter", "steps", steps, 100, type(self).__name__)
        if targeted and not self._TARGETED:
            warnings.warn(
                "APGD(targeted=True) is deprecated and will be removed in the next release: use "
                "APGDT(eps, ...), with y the true labels (targeted=True on FGSM, PGD and SPSA means "
                "that y holds the target classes).", LowRankWarning, stacklevel=2)
        super().__init__(targeted=False, **kwargs)
        self.eps = check_number(eps, "eps", minimum=0.0)
        self.norm = _check_norm(norm)
        self.apgd_targeted = self._TARGETED or bool(targeted)
        if loss is None:
            loss = "dlr" if self.apgd_targeted else "ce"
        if loss not in ("ce", "dlr"):
            raise ValueError(f'`loss` must be "ce" or "dlr", got loss={loss!r}.')
        self.loss = loss
        self.steps = check_int(steps, "steps")
        self.restarts = check_int(restarts, "restarts")
        self.n_target_classes = check_int(n_target_classes, "n_target_classes")
        self.rho = check_number(rho, "rho", minimum=0.0, maximum=1.0)
        self.eot_iter = check_int(eot_iter, "eot_iter")
        self._set_seed(seed)
        points = apgd_checkpoints(self.steps)
        checkpoint = np.zeros(self.steps, "float32")
        window = np.zeros(self.steps, "float32")
        for i, k in points:
            checkpoint[i], window[i] = 1.0, k
        self._checkpoint, self._window = checkpoint, window
        self._runs = _CompiledPerModel(self._build_compiled)

    def get_config(self):
        config = super().get_config()
        config.pop("targeted")
        return {**config, "eps": self.eps, "norm": self.norm, "loss": self.loss,
                "targeted": self.apgd_targeted, "steps": self.steps, "restarts": self.restarts,
                "n_target_classes": self.n_target_classes, "rho": self.rho, "eot_iter": self.eot_iter,
                "seed": self.seed}

    @property
    def name(self):
        kind = "APGD-T" if self.apgd_targeted else f"APGD-{self.loss.upper()}"
        restarts = f" ×{self.restarts}" if self.restarts > 1 else ""
        eot = f" EOT-{self.eot_iter}" if self.eot_iter > 1 else ""
        return f"{kind}-{self.steps} L{_SYMBOL[self.norm]} ε={self.eps:g}{restarts}{eot}"

    def __repr__(self):
        return (f"APGD(eps={self.eps:g}, norm={self.norm}, loss={self.loss}, "
                f"targeted={self.apgd_targeted}, steps={self.steps}, restarts={self.restarts}, "
                f"eot_iter={self.eot_iter})")

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

    @property
    def required_classes(self):
        """(the fewest classes the attack can run on, what needs them)."""
        if self.loss != "dlr":
            return 2, "the cross-entropy"
        if self.apgd_targeted:
            return TARGETED_DLR_MIN_CLASSES, "the targeted DLR loss"
        return DLR_MIN_CLASSES, "the DLR loss"

    def _check_classes(self, num_classes):
        needed, what = self.required_classes
        if num_classes < needed:
            raise ValueError(f"{what} needs at least {needed} classes; the model has {num_classes}. "
                             'Use loss="ce" (untargeted).')

    def _noise(self, x):
        """One random start, shaped like ``x``, and the first draw number of the
        run's passes (a random int32)."""
        shape = ops.shape(x)
        if self.norm == "inf":
            start = keras.random.uniform(shape, -1.0, 1.0, seed=self._seed)
        else:
            start = keras.random.normal(shape, seed=self._seed)
        return start, keras.random.randint((), 0, 2 ** 24, dtype="int32", seed=self._seed)

    def _projection(self, x):
        """v ↦ P(v), the projection onto the ε-ball around ``x`` and the input range.
        L∞: onto the box [max(x − ε, low), min(x + ε, high)], its bounds computed once
        per run (x lies in the range, so the box is the two boxes' intersection and
        this equals the ε-box's projection clipped, to the bit: min and max round
        nothing)."""
        if self.norm != "inf":
            def project(v):
                d = v - x
                return self._clip(x + _normalize(d, "2") * _per_example(ops.minimum(self.eps, _l2(d)), d))

            return project
        low, high = self._clip(x - self.eps), self._clip(x + self.eps)
        xp = loop_ops()
        return lambda v: xp.minimum(xp.maximum(v, low), high)

    def _loss_function(self, scores):
        def loss(x, y, target, draw=None):
            z = scores(x, draw)
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

    def _expected_loss_and_grad(self, loss_fn, first_draw):
        """``(x, y, target, k) -> (loss, scores, gradient)`` at APGD's k-th point (0:
        the start): one pass, or with ``eot_iter`` > 1 the gradient averaged over
        that many passes; the passes draw as numbers first_draw + k·eot_iter + e."""
        loss_grad = value_and_grad(loss_fn)
        if self.eot_iter == 1:
            return lambda x, y, target, k: loss_grad(x, y, target, first_draw + k)

        def expected(x, y, target, k):
            first = first_draw + k * self.eot_iter

            def one_pass(e, state):
                loss, z, grad = loss_grad(x, y, target, first + e)
                return loss, z, state[2] + grad

            loss, z, total = ops.fori_loop(1, self.eot_iter, one_pass, loss_grad(x, y, target, first))
            return loss, z, total / float(self.eot_iter)

        return expected

    def _single_run(self, scores, x, y, rank, noise, start=None):
        """One APGD run on a batch: returns (last misclassified iterate, still
        robust (1/0), best-loss point, best loss, final step sizes)."""
        y = ops.cast(y, "int32")
        if self.apgd_targeted:  # the class ranked ``rank`` on the clean input
            clean = scores(x)
            classes = clean.shape[-1]
            order = ops.argsort(clean, axis=-1)
            target = ops.take(order, ops.clip(classes - ops.cast(rank, "int32"), 0, classes - 1), axis=1)
            target = ops.cast(target, "int32")
        else:
            target = y  # unused by the untargeted losses
        noise, first_draw = noise if isinstance(noise, (tuple, list)) else (noise, 0)
        loss_grad = self._expected_loss_and_grad(self._loss_function(scores), first_draw)
        if start is None:
            start = x + self.eps * _normalize(noise, self.norm)
        x_adv = self._clip(start)
        project = self._projection(x)
        xp = loop_ops()  # the body's element-wise ops (torch's own on torch)
        loss, z, grad = loss_grad(x_adv, y, target, 0)
        acc = xp.hits(z, y)
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
            # Where the loop runs eagerly (torch: ``i`` is a Python int) the iteration's
            # own constants are Python numbers and the checkpoint runs only where due;
            # traced (TF, JAX) every iteration is the same graph.
            eager = isinstance(i, int)
            momentum = (0.75 if i > 0 else 1.0) if eager else ops.where(i > 0, 0.75, 1.0)
            change = x_adv - x_old
            x_old = x_adv
            if self.norm == "inf":
                direction = xp.sign(grad)
            else:
                direction = _normalize(grad, "2")
            z1 = project(x_adv + _per_example(step, x_adv) * direction)
            x_new = project(x_adv + (z1 - x_adv) * momentum + change * (1.0 - momentum))
            loss, z, grad = loss_grad(x_new, y, target, i + 1)
            correct = xp.hits(z, y)
            acc = xp.minimum(acc, correct)
            x_best_adv = xp.where(_per_example(correct < 0.5, x), x_new, x_best_adv)
            rises = rises + xp.to_float(loss > prev_loss)
            prev_loss = loss
            improved = loss > loss_best
            x_best = xp.where(_per_example(improved, x), x_new, x_best)
            grad_best = xp.where(_per_example(improved, x), grad, grad_best)
            loss_best = xp.where(improved, loss, loss_best)
            if eager and not self._checkpoint[i]:
                return (x_new, x_old, grad, step, x_best, loss_best, grad_best, x_best_adv, acc,
                        prev_loss, rises, reduced_last, loss_best_last)
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

        state = ops.fori_loop(0, self.steps, body, state)
        return state[7], state[8], state[4], state[5], state[3]

    def trace(self, model, x, y, start):
        """One run from the given starting points, its whole final state (for
        checks against another implementation): dict of numpy arrays ``x_adv``
        (last misclassified iterate), ``robust``, ``x_best``, ``loss_best``,
        ``step_size``. Targeted runs use the runner-up class."""
        scores = ClassifierView(model, self.from_logits).scores
        x = ops.convert_to_tensor(x, "float32")
        out = compile_function(model, lambda x, y, s: self._single_run(scores, x, y, 2, None, start=s))(
            x, ops.convert_to_tensor(np.asarray(y), "int32"), ops.convert_to_tensor(start, "float32"))
        names = ("x_adv", "robust", "x_best", "loss_best", "step_size")
        return {n: np.asarray(ops.convert_to_numpy(v)) for n, v in zip(names, out)}


@keras.saving.register_keras_serializable(package="keras_lowrank")
class APGDT(APGD):
    """APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss

        L(x) = −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12),

    run once per target t: the ``n_target_classes`` classes ranked highest after the
    true one on the clean input, each run only on the examples no earlier target broke.
    ``y`` holds the true labels (the attack chooses its targets; for an attack towards
    classes you choose, ``PGD(eps, targeted=True)`` with ``y`` the targets). Needs ≥ 4
    classes. The iteration, step-size schedule and arguments are ``APGD``'s.

    Args:
        eps: the perturbation budget (≥ 0).
        norm: "inf" (or np.inf) or 2.
        loss: "dlr" (the targeted DLR above, default) or "ce" (minus the cross-entropy
            of the target).
        steps: iterations N per run (≥ 1; formerly ``n_iter``, deprecated).
        restarts: random restarts (≥ 1) per target.
        n_target_classes: targets (at most classes − 1 are used; 9 in AutoAttack).
        rho: ρ, the share of rising steps below which η is halved.
        eot_iter: passes per gradient (≥ 1).
        seed: seed of the random starts (and of the passes' draws).

    Keyword Args:
        clip: see ``Attack``.
        from_logits: see ``Attack``.

    Examples:
        four classes; the example sits 0.05 from the decision towards class 1, the
        runner-up: APGD-T at ε = 0.1 reaches it.

        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4)])
        >>> model.layers[0].set_weights([np.array([[1.0, -1.0, 0, 0], [0, 0, 0, 0]]),
        ...                              np.array([-0.5, 0.5, -5, -5])])
        >>> x = np.array([[0.55, 0.5]], "float32")
        >>> found = APGDT(0.1, steps=10, n_target_classes=1, seed=0)(model, x, [0])
        >>> int(np.argmax(model.predict(found, verbose=0)))
        1

    References:
        - Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
          attacks", ICML 2020: https://arxiv.org/abs/2003.01690
    """

    _TARGETED = True

    def __init__(self, eps, norm="inf", loss="dlr", steps=100, restarts=1, n_target_classes=9, rho=0.75,
                 eot_iter=1, seed=None, **kwargs):
        steps = renamed_argument(kwargs, "n_iter", "steps", steps, 100, "APGDT")
        if kwargs.pop("targeted", False):
            raise ValueError("APGDT takes no `targeted=True`: it is targeted, choosing its own target "
                             "classes, with y the true labels. For an attack towards classes you choose, "
                             "use PGD(eps, targeted=True) with y the target classes.")
        super().__init__(eps, norm, loss=loss, steps=steps, restarts=restarts,
                         n_target_classes=n_target_classes, rho=rho, eot_iter=eot_iter, seed=seed, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.pop("targeted")
        return config

    def __repr__(self):
        return (f"APGDT(eps={self.eps:g}, norm={self.norm}, loss={self.loss}, steps={self.steps}, "
                f"restarts={self.restarts}, n_target_classes={self.n_target_classes}, eot_iter={self.eot_iter})")
