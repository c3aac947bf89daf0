"""The attack base class and what every attack shares: norms, steepest steps, the
projection onto the ε-ball, the model's output kind, the checks of x and y."""

import warnings
import weakref

import keras
import numpy as np
from keras import ops

from keras_lowrank._validation import check_clip, check_number
from keras_lowrank._warning import LowRankWarning
from keras_lowrank.robustness._classifier import ClassifierView, predicted_classes, resolve_from_logits
from keras_lowrank.robustness._gradients import blocked_gradient, compile_attack
from keras_lowrank.robustness._report_inputs import refuse_token_inputs
from keras_lowrank.robustness.perturbations import Perturbation, class_count

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


def renamed_argument(kwargs, old, new, value, default, owner):
    """``value``, the argument ``new``; or, for one release and with a warning, what the
    caller passed under its former name ``old`` (popped from ``kwargs``). Both at once
    (``new`` not at its ``default``) are an error."""
    if old not in kwargs:
        return value
    if value != default:
        raise ValueError(f"{owner}: pass `{new}` only (`{old}` is its former name).")
    warnings.warn(f"{owner}({old}=...) is deprecated and will be removed in the next release: pass "
                  f"{new}= (every attack names its iteration count `steps`).", LowRankWarning, stacklevel=3)
    return kwargs.pop(old)


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

        >>> from keras_lowrank.robustness import PGD
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

    def describe(self):
        return type(self).__name__, self.norm, self.eps

    def applies_to(self, input_shape):
        """Whether the attack can run on inputs of ``input_shape`` (no batch axis)."""
        return True

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
        y = predicted_classes(model, x) if y is None else ops.cast(y, "int32")
        return self._attack(self._oracle(model), x, y, self._noise(x))

    def _oracle(self, model):
        """The cross-entropy ``Oracle`` of ``ClassifierView.cross_entropy_oracle``."""
        return ClassifierView(model, self.from_logits).cross_entropy_oracle(self.targeted)

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
            return predicted_classes(model, x)
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
