"""Gradient attacks as callables: ``x_adv = attack(model, x, y)``.

FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018), L∞ or L2, untargeted
or targeted, with the semantics of cleverhans 4 (``fast_gradient_method``,
``projected_gradient_descent``) so results can be cross-checked:

    FGSM:  x' = clip(x + ε · d),  d = sign(g) (L∞) or g / max(‖g‖₂, 1e-6) (L2),
           g = ∇ₓ CE(f(x), y)  (−∇ for targeted attacks, y = target)
    PGD:   x₀ = clip(x + η₀) (η₀ random in the ε-ball, or 0), then `steps` times
           x ← clip(x + Π_ε(FGSM_α(x) − x)),  Π_ε scales η back into the ε-ball.

The model runs in inference mode (``training=False``). Each batch is attacked in
one compiled graph on TensorFlow or JAX (on TensorFlow, for models of ≤ 32 layers,
the PGD and SPSA loops are unrolled up to 20 steps, ``keras.ops.fori_loop`` beyond
and for larger models; on JAX always ``fori_loop``).
"""

import weakref

import keras
import numpy as np
from keras import ops

from keras_lowrank._validation import check_clip, check_int, check_number
from keras_lowrank.robustness._gradients import (
    Oracle,
    blocked_gradient,
    compile_attack,
    ends_in_softmax,
    forward_without_side_effects,
)
from keras_lowrank.robustness._report_inputs import refuse_token_inputs
from keras_lowrank.robustness.perturbations import Perturbation, class_count, number

_NORMS = {"inf": "inf", np.inf: "inf", 2: "2", "2": "2"}
_SYMBOL = {"inf": "∞", "2": "2"}
_TINY = 1e-12  # cleverhans' avoid_zero_div, inside the square root
# TF-CPU: a while_loop costs ~1 ms per iteration, so short PGD loops are unrolled —
# for small models only: the unrolled graph holds every step's forward and backward
# pass, so its tracing, optimisation and memory grow with steps × layers (MobileNetV2,
# 32×32, batch 16: PGD-10 unrolled 31 s and 1.5 GB on the first call, a loop of 21
# steps 5.8 s and 1.0 GB; benchmarks/attack_first_call.py). A step of a large model
# costs far more than the loop's 1 ms, so the loop is free there.
# JAX: every step is XLA-compiled, and an unrolled loop compiles ~1.5x slower
# (the examples' robustness run: 190 s unrolled, 137 s as fori_loop, 2 CPUs).
_MAX_UNROLLED_STEPS = 20 if keras.backend.backend() == "tensorflow" else 0
_MAX_UNROLLED_LAYERS = 32  # layers (at any depth) of a model whose attack loops are unrolled


def unrolls(model, steps):
    """Whether an attack loop of ``steps`` steps on ``model`` is unrolled (TF, at
    most 20 steps, a model of at most 32 layers) rather than a compiled loop."""
    if steps > _MAX_UNROLLED_STEPS:
        return False
    from keras_lowrank._keras_compat import all_sublayers

    try:
        size = len(all_sublayers(model))
    except Exception:  # not a Keras model (e.g. a wrapped exported graph): keep the loop
        return False
    return size <= _MAX_UNROLLED_LAYERS


def _check_norm(norm):
    try:
        return _NORMS[norm]
    except (KeyError, TypeError):
        raise ValueError(
            f'`norm` must be "inf" (or np.inf) or 2, got norm={norm!r}.'
        ) from None


def _check_nonnegative(name, value, strict=False):
    return check_number(value, name, minimum=0.0, strict=strict)


def _per_example_sum(x):
    return ops.sum(x, axis=tuple(range(1, len(x.shape))), keepdims=True)


def steepest_step(grad, eps, norm):
    """ε · argmax_{‖d‖ ≤ 1} ⟨d, g⟩ per example: ε sign(g) or ε g / ‖g‖₂."""
    if norm == "inf":
        return eps * ops.sign(grad)
    return eps * grad / ops.sqrt(ops.maximum(_TINY, _per_example_sum(ops.square(grad))))


def clip_to_ball(eta, eps, norm):
    """Scales (L2) or clips (L∞) each perturbation back into the ε-ball."""
    if norm == "inf":
        return ops.clip(eta, -eps, eps)
    length = ops.sqrt(ops.maximum(_TINY, _per_example_sum(ops.square(eta))))
    return eta * ops.minimum(1.0, eps / length)


def random_start(x, eps, norm, seed):
    """A uniform random point of the ε-ball per example (PGD's random start): U(−ε, ε)
    per input (L∞), or a Gaussian direction at radius ε·u^(1/d) (L2; Calafiore et al.
    1998). ``eps`` may be a tensor; ``seed`` a ``SeedGenerator``."""
    if norm == "inf":
        return keras.random.uniform(ops.shape(x), -eps, eps, seed=seed)
    direction = keras.random.normal(ops.shape(x), seed=seed)
    dim = float(np.prod(x.shape[1:]))
    u = keras.random.uniform(ops.shape(x)[:1], seed=seed)
    scale = eps * u ** (1.0 / dim) / ops.sqrt(
        ops.sum(ops.square(ops.reshape(direction, (ops.shape(x)[0], -1))), axis=1))
    return direction * ops.reshape(scale, (-1,) + (1,) * (len(x.shape) - 1))


def keep_larger_loss(best, best_loss, adv, loss):
    """PGD's restart rule: per example, ``adv`` where its loss exceeds ``best_loss``
    (losses signed for targeted attacks: larger is always better). Returns the kept
    (points, losses)."""
    wins = loss > best_loss
    mask = ops.reshape(wins, (-1,) + (1,) * (len(adv.shape) - 1))
    return ops.where(mask, adv, best), ops.where(wins, loss, best_loss)


def outputs_logits(model):
    """True unless the model's last layer applies a softmax (``ends_in_softmax``)."""
    return not ends_in_softmax(model)


def _are_probabilities(outputs):
    """Every row non-negative and summing to 1 (to float32 rounding)."""
    outputs = np.asarray(outputs, "float64").reshape(len(outputs), -1)
    return bool(np.all(outputs >= -1e-6) and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-4))


def resolve_from_logits(model, from_logits, x=None, argument="from_logits"):
    """The one answer to "does ``model`` output logits?", for every attack and report.

    ``None``: logits unless the model's last layer applies a softmax. A value the
    user gave is checked against the model and refused where it contradicts it:
    ``True`` on a model ending in a softmax, or (given a batch ``x``) ``True`` where
    every output row is a probability vector, ``False`` where they are not — an
    attack would otherwise optimise the wrong loss and report robustness that is
    not there.

    Returns:
        bool: whether the model's outputs are treated as logits.
    """
    if from_logits is None:
        return outputs_logits(model)
    from_logits = bool(from_logits)
    if from_logits and ends_in_softmax(model):
        raise ValueError(
            f"`{argument}=True`, but the model ends in a softmax: it outputs probabilities. "
            f"Leave `{argument}=None` (the attack then works on the softmax's input, its logits).")
    if x is not None:
        outputs = np.asarray(ops.convert_to_numpy(forward_without_side_effects(model, x[:64])))
        if not np.all(np.isfinite(outputs)):
            return from_logits  # NaN inputs: the input checks that follow name them
        probabilities = _are_probabilities(outputs)
        if from_logits and probabilities:
            raise ValueError(
                f"`{argument}=True`, but every output row of the model is non-negative and sums to 1: "
                f"it outputs probabilities. Pass `{argument}=False` (or None for a model ending in a softmax).")
        if not from_logits and not probabilities:
            raise ValueError(
                f"`{argument}=False`, but the model's outputs are not probabilities (rows with negative "
                f"values or not summing to 1): pass `{argument}=True` or None.")
    return from_logits


def _check_batch_rank(model, x):
    """A clear error for ``x`` whose rank is not that of the model's (first) input,
    e.g. one example without its batch axis (else the model's output shape or a
    backend error speaks for it). Models that do not declare inputs are not checked."""
    try:
        declared = model.inputs[0].shape
    except (AttributeError, IndexError, TypeError, ValueError):
        return
    if len(x.shape) != len(declared):
        hint = " (one example? add the batch axis: x[None])" if len(x.shape) == len(declared) - 1 else ""
        raise ValueError(f"`x` must be a batch of the model's inputs, of shape {tuple(declared)}; "
                         f"got shape {tuple(x.shape)}{hint}.")


class Attack(Perturbation):
    """Base class of the attacks: label handling, input checks, compiled
    per-model graphs (a ``Perturbation``).

    Args:
        targeted: if True, ``y`` holds target classes and the attack pushes
            the prediction towards them.
        clip: (low, high) input range that inputs must lie in and adversarial
            examples are clipped to; None for no range.
        from_logits: whether the model outputs logits. None (default): logits
            unless the model's last layer applies a softmax. A model ending in a
            softmax is attacked through its logits (the softmax's input), since the
            cross-entropy of saturated float32 probabilities has no gradient.

    Examples:
        every attack is a ``Perturbation``, called on a batch or applied
        inside Keras' steps by ``PerturbedModel``.

        >>> attack = PGD(0.03, steps=20)
        >>> isinstance(attack, Attack), attack.name
        (True, 'PGD-20 L∞ ε=0.03')
    """

    def __init__(self, targeted=False, clip=(0.0, 1.0), from_logits=None):
        clip = check_clip(clip)
        self.targeted = bool(targeted)
        self.clip = clip
        self.from_logits = from_logits
        self._compiled = weakref.WeakKeyDictionary()

    # -- serialization (a PerturbedModel is saved with its attack)
    def get_config(self):
        return {"targeted": self.targeted, "clip": self.clip, "from_logits": self.from_logits}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # -- to be defined by attacks
    def _attack(self, oracle, x, y, noise):
        raise NotImplementedError

    def _noise(self, x):
        return ops.zeros_like(x)

    # -- public
    def __call__(self, model, x, y=None):
        """Adversarial examples for the batch ``x`` (labels ``y``: integer classes
        or one-hot; default: the model's own predictions, as cleverhans does)."""
        refuse_token_inputs(model, x, type(self).__name__)
        x = ops.convert_to_tensor(x, "float32")
        num_classes = self._num_classes(model, x)
        self._check_range(x)
        y = self._labels(model, x, y, num_classes)
        run = self._compiled.get(model)
        if run is None:
            run = compile_attack(self._oracle(model), self._attack)
            self._compiled[model] = run
        return run(x, y, self._noise(x))

    def perturb_in_graph(self, model, x, y=None):
        """The attack inside a step Keras is already compiling (no host-side
        checks): used by ``PerturbedModel``. ``y``: integer labels or None."""
        if y is None:
            y = ops.argmax(forward_without_side_effects(model, x), axis=-1)
        y = ops.cast(y, "int32")
        return self._attack(self._oracle(model), x, y, self._noise(x))

    def _oracle(self, model):
        """The loss is the cross-entropy of the model's logits: those of a model
        ending in a softmax are taken before it (see ``_final_softmax_removed``);
        ``from_logits=False`` on any other model: Keras' cross-entropy of the
        probabilities."""
        from_logits = resolve_from_logits(model, self.from_logits)
        logits_view = not from_logits and ends_in_softmax(model)
        from_logits = from_logits or logits_view
        sign = -1.0 if self.targeted else 1.0

        def loss_fn(y, outputs):
            return sign * keras.losses.sparse_categorical_crossentropy(
                y, outputs, from_logits=from_logits
            )

        return Oracle(model, loss_fn, logits=logits_view)

    #: False for the attacks that need only the model's outputs (SPSA, Square).
    needs_gradients = True

    def check_gradients(self, model):
        """Refuses a white-box attack on a model known to have no input gradient."""
        reason = blocked_gradient(model) if self.needs_gradients else None
        if reason:
            raise ValueError(
                f"{type(self).__name__} follows the model's input gradient, but the model has none: "
                f"{reason}. Use a black-box attack: Square(eps) or SPSA(eps).")

    def _num_classes(self, model, x):
        _check_batch_rank(model, x)
        self.check_gradients(model)
        if self.from_logits is not None:  # the flag the user gave, against the model's outputs
            resolve_from_logits(model, self.from_logits, x)
        return class_count(model, x.shape)

    def _labels(self, model, x, y, num_classes):
        if y is None:
            if self.targeted:
                raise ValueError("A targeted attack needs `y`: the target classes.")
            return ops.cast(ops.argmax(forward_without_side_effects(model, x), axis=-1),
                            "int32")
        y = np.asarray(ops.convert_to_numpy(y))
        if y.dtype.kind not in "biuf":
            raise ValueError(
                f"`y` must hold integer class labels or one-hot rows, got dtype {y.dtype} (class names? "
                "map them to indices 0..classes−1, e.g. np.unique(y, return_inverse=True)[1]).")
        if y.ndim == 2 and y.shape[1] == num_classes:
            y = y.argmax(axis=1)
        if y.ndim != 1 or len(y) != x.shape[0]:
            raise ValueError(
                f"`y` must hold {x.shape[0]} integer labels (shape ({x.shape[0]},)) "
                f"or one-hot rows (shape ({x.shape[0]}, {num_classes})), got "
                f"shape {y.shape}."
            )
        if not np.all((y >= 0) & (y < num_classes) & (y == np.round(y))):
            raise ValueError(
                f"`y` must be integer classes in [0, {num_classes}), got values "
                f"from {y.min()} to {y.max()}."
            )
        return ops.convert_to_tensor(y.astype("int32"))

    def _clip(self, x):
        return x if self.clip is None else ops.clip(x, self.clip[0], self.clip[1])


@keras.saving.register_keras_serializable(package="keras_lowrank")
class FGSM(Attack):
    """Fast gradient (sign) method: one steepest step of size ``eps``.

    Args:
        eps: the perturbation budget (≥ 0), in input units.
        norm: "inf" (sign of the gradient) or 2 (normalised gradient).

    Keyword Args:
        targeted: see ``Attack``.
        clip: see ``Attack``.
        from_logits: see ``Attack``.

    Examples:
        for logits (x₀, −x₀) and label 0 the loss falls with x₀ and does
        not depend on x₁, so the step is −ε along x₀ only.

        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
        >>> model.layers[0].set_weights([np.array([[1.0, -1.0], [0.0, 0.0]])])  # logits (x₀, −x₀)
        >>> x = np.full((1, 2), 0.5, "float32")
        >>> np.round(ops.convert_to_numpy(FGSM(0.1)(model, x, [0])).astype(float), 4).tolist()
        [[0.4, 0.5]]
    """

    _sizes = ("eps",)

    def __init__(self, eps, norm="inf", **kwargs):
        super().__init__(**kwargs)
        self.eps = _check_nonnegative("eps", eps)
        self.norm = _check_norm(norm)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps, "norm": self.norm}

    def _attack(self, oracle, x, y, noise):
        return self._clip(x + steepest_step(oracle.grad(x, y), self.eps, self.norm))

    @property
    def name(self):
        return f"FGSM L{_SYMBOL[self.norm]} ε={number(self.eps):g}"

    def __repr__(self):
        return f"FGSM(eps={number(self.eps):g}, norm={self.norm})"


@keras.saving.register_keras_serializable(package="keras_lowrank")
class PGD(Attack):
    """Projected gradient descent (Madry et al.): iterated FGSM steps of size
    ``step_size`` projected back into the ε-ball around x.

    Args:
        eps: the perturbation budget (≥ 0).
        step_size: size of each step (> 0, ≤ eps); default 2.5 · eps / steps.
        steps: number of steps (≥ 1).
        norm: "inf" or 2.
        random_start: start from a uniform random point of the ε-ball.
        restarts: attacks per example (≥ 1); each example keeps the restart
            with the largest loss (smallest for targeted attacks).
        seed: seed of the random starts.

    Keyword Args:
        targeted: see ``Attack``.
        clip: see ``Attack``.
        from_logits: see ``Attack``.

    Examples:
        the steps stop at the edge of the ε-ball.

        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
        >>> model.layers[0].set_weights([np.array([[1.0, -1.0], [0.0, 0.0]])])  # logits (x₀, −x₀)
        >>> x = np.full((1, 2), 0.5, "float32")
        >>> adversarial = PGD(0.1, steps=5, random_start=False)(model, x, [0])
        >>> np.round(ops.convert_to_numpy(adversarial).astype(float), 4).tolist()
        [[0.4, 0.5]]
    """

    _sizes = ("eps", "step_size")

    def __init__(self, eps, step_size=None, steps=10, norm="inf", random_start=True,
                 restarts=1, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.eps = _check_nonnegative("eps", eps)
        steps = check_int(steps, "steps")
        restarts = check_int(restarts, "restarts")
        self.steps = steps
        self.step_size = (2.5 * self.eps / steps if step_size is None
                          else _check_nonnegative("step_size", step_size, strict=True))
        self.norm = _check_norm(norm)
        self.random_start = bool(random_start)
        self.restarts = restarts
        self._set_seed(seed)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps, "step_size": self.step_size,
                "steps": self.steps, "norm": self.norm, "random_start": self.random_start,
                "restarts": self.restarts, "seed": self.seed}

    def _noise(self, x):
        """One random start per restart, each shaped like ``x`` (dynamic batch)."""
        if not self.random_start:
            return [ops.zeros_like(x)] * self.restarts
        return [random_start(x, self.eps, self.norm, self._seed) for _ in range(self.restarts)]

    def _attack(self, oracle, x, y, noise):
        def step(_, adv):
            stepped = self._clip(
                adv + steepest_step(oracle.grad(adv, y), self.step_size, self.norm))
            return self._clip(x + clip_to_ball(stepped - x, self.eps, self.norm))

        best = best_loss = None
        for restart in range(self.restarts):  # unrolled: restarts are few
            start = self._clip(x + clip_to_ball(noise[restart], self.eps, self.norm))
            if unrolls(oracle.model, self.steps):
                adv = start
                for i in range(self.steps):
                    adv = step(i, adv)
            else:
                adv = ops.fori_loop(0, self.steps, step, start)
            if self.restarts == 1:
                return adv
            loss = oracle.loss(adv, y)
            if best is None:
                best, best_loss = adv, loss
            else:
                best, best_loss = keep_larger_loss(best, best_loss, adv, loss)
        return best

    @property
    def name(self):
        restarts = f" ×{self.restarts}" if self.restarts > 1 else ""
        return f"PGD-{self.steps} L{_SYMBOL[self.norm]} ε={number(self.eps):g}{restarts}"

    def __repr__(self):
        return (f"PGD(eps={number(self.eps):g}, step_size={number(self.step_size):g}, "
                f"steps={self.steps}, norm={self.norm}, "
                f"random_start={self.random_start}, restarts={self.restarts})")


@keras.saving.register_keras_serializable(package="keras_lowrank")
class SPSA(Attack):
    """A black-box (gradient-free) attack: PGD L∞ on SPSA gradient estimates
    (Uesato et al. 2018), using only the model's loss values.

    Per step, with ``samples`` random sign vectors v_k (Rademacher):

        ĝ = (1/K) Σ_k [L(x + δ v_k) − L(x − δ v_k)] / (2δ) · v_k,
        x ← clip(x + Π_ε(x + α sign(ĝ) − x₀)).

    It needs no gradient through the model, so it still works where gradients
    are masked (rounding, saturated softmax, non-differentiable preprocessing):
    if it beats the white-box PGD at the same ε, the white-box numbers are not to
    be trusted (Carlini et al. 2019; ``evaluate_robustness`` runs this check).
    Written by hand: cleverhans' ``spsa`` handles one example at a time and
    runs a Python loop; here a batch is one compiled graph. Memory: the sign
    vectors of all steps are drawn up front, steps·samples·|x| floats.

    Args:
        eps: L∞ budget (≥ 0).
        steps: number of steps (≥ 1).
        samples: sign vectors per step (≥ 1; 2·samples forward passes of the
            batch per step).
        delta: finite-difference size δ (> 0); default eps / 2 — at the scale
            of the budget, so the differences see through input quantisation
            (δ = 0.01 left a rounded-input model's masking undetected).
        step_size: α (> 0); default eps / 4.
        seed: seed of the sign vectors.

    Keyword Args:
        targeted: see ``Attack``.
        clip: see ``Attack``.
        from_logits: see ``Attack``.

    Examples:
        from loss values alone it finds the descent along x₀.

        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
        >>> model.layers[0].set_weights([np.array([[1.0, -1.0], [0.0, 0.0]])])  # logits (x₀, −x₀)
        >>> x = np.full((1, 2), 0.5, "float32")
        >>> adversarial = SPSA(0.1, steps=8, samples=16, seed=0)(model, x, [0])
        >>> round(float(ops.convert_to_numpy(adversarial)[0, 0]), 4)
        0.4
    """

    norm = "inf"
    _sizes = ("eps", "delta", "step_size")

    needs_gradients = False

    def __init__(self, eps, steps=10, samples=32, delta=None, step_size=None, seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.eps = _check_nonnegative("eps", eps)
        steps, samples = check_int(steps, "steps"), check_int(samples, "samples")
        self.steps, self.samples = steps, samples
        self.delta = (self.eps / 2 if delta is None
                      else _check_nonnegative("delta", delta, strict=True))
        if not self.delta > 0:
            raise ValueError("`delta` must be > 0: pass delta= when eps is 0.")
        self.step_size = (self.eps / 4 if step_size is None
                          else _check_nonnegative("step_size", step_size, strict=True))
        self._set_seed(seed)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps, "steps": self.steps,
                "samples": self.samples, "delta": self.delta, "step_size": self.step_size,
                "seed": self.seed}

    def _noise(self, x):
        shape = (self.steps, self.samples) + tuple(ops.shape(x))
        return ops.sign(keras.random.uniform(shape, -1.0, 1.0, seed=self._seed))

    def _attack(self, oracle, x, y, noise):
        pairs = ops.tile(y, (2 * self.samples,))

        def step(i, adv):
            signs = ops.take(noise, i, axis=0)  # (samples, batch, ...)
            probes = ops.concatenate([adv[None] + self.delta * signs,
                                      adv[None] - self.delta * signs], axis=0)
            flat = ops.reshape(probes, (-1,) + tuple(x.shape[1:]))
            losses = ops.reshape(oracle.loss(flat, pairs), (2, self.samples, -1))
            slopes = (losses[0] - losses[1]) / (2 * self.delta)  # (samples, batch)
            slopes = ops.reshape(slopes, (self.samples, -1) + (1,) * (len(x.shape) - 1))
            estimate = ops.mean(slopes * signs, axis=0)
            stepped = self._clip(adv + self.step_size * ops.sign(estimate))
            return self._clip(x + ops.clip(stepped - x, -self.eps, self.eps))

        if not unrolls(oracle.model, self.steps):  # a large model: one compiled loop
            return ops.fori_loop(0, self.steps, step, x)
        adv = x
        for i in range(self.steps):  # unrolled: each step is one large forward pass
            adv = step(i, adv)
        return adv

    @property
    def name(self):
        return f"SPSA-{self.steps} L∞ ε={number(self.eps):g} (black-box)"

    def __repr__(self):
        return (f"SPSA(eps={number(self.eps):g}, steps={self.steps}, samples={self.samples}, "
                f"delta={number(self.delta):g}, step_size={number(self.step_size):g})")
