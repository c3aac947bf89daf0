"""``Perturbation``, the base class of everything ``PerturbedModel`` and
``evaluate_robustness`` apply to inputs (attacks, noise, corruptions), and the
random perturbations. They act inside the compiled step, in ``keras.ops``."""

import math

import keras
import numpy as np
from keras import ops

from keras_lowrank._validation import check_clip, check_number, check_seed
from keras_lowrank.robustness._report_inputs import refuse_token_inputs


def number(value):
    """A size as a Python float (a float, or a scalar ``keras.Variable``)."""
    return float(ops.convert_to_numpy(value))


def class_count(model, input_shape):
    """The number of classes of ``model`` for inputs of ``input_shape``: the one
    place that decides whether a model can be attacked and scored by accuracy
    (one output of shape (batch, classes ≥ 2)); a ValueError naming the fix otherwise."""
    shape = model.compute_output_shape(tuple(input_shape))
    if isinstance(shape, dict) or (shape and isinstance(shape[0], (tuple, list))):
        raise ValueError(
            f"The model has {len(shape)} outputs; attacks and reports need a model with one output "
            "of class scores. Pass a one-output view of it, e.g. keras.Model(model.inputs, model.outputs[0]).")
    shape = tuple(shape)
    if len(shape) != 2 or shape[-1] is None or shape[-1] < 2:
        raise ValueError(
            "`model` must be a classifier with outputs of shape (batch, classes ≥ 2) (logits or "
            f"probabilities); it outputs {shape}. One-output models (regression, a sigmoid) cannot be "
            "attacked or scored by accuracy here; for a binary sigmoid classifier use a 2-unit "
            "softmax/logits head.")
    return shape[-1]


class Perturbation:
    """Base class of input perturbations (the ``keras.regularizers.Regularizer``
    pattern: a configured object, serialisable by ``get_config``/``from_config``).

    Subclasses implement ``perturb_in_graph(model, x, y=None)`` in ``keras.ops``:
    it is traced inside Keras' compiled steps (``PerturbedModel``), so it must not
    read values on the host; ``y`` holds integer labels or is None. ``clip`` is
    the input range the perturbation clips to ((low, high) or None): inputs
    outside it are reported by ``PerturbedModel``. Register subclasses with
    ``keras.saving.register_keras_serializable`` to save them with a model.

    What the report and ``PerturbedModel`` ask of a perturbation, each with a default a
    subclass may override: ``describe()`` (its report row: family, norm — an attack's
    threat model, None otherwise — and size), ``input_range()`` (the inputs it accepts;
    ``clip``), ``perturb_and_predict`` (the perturbed batch and, where it computes them
    on the way, the model's outputs there) and ``evaluates_itself``/``report_row`` (a
    perturbation that a report runs its own way, as AutoAttack stage by stage).

    Attributes:
        clip: the declared input range, (low, high) or None.
        host_call: True where ``perturb_in_graph`` calls NumPy on the host (a
            ``tf.numpy_function`` on TensorFlow, which XLA cannot compile).

    Examples:

        >>> class Shift(Perturbation):
        ...     def __init__(self, delta):
        ...         self.delta = delta
        ...     def perturb_in_graph(self, model, x, y=None):
        ...         return x + self.delta
        ...     def get_config(self):
        ...         return {"delta": self.delta}
        >>> ops.convert_to_numpy(Shift(0.5)(None, [[1.0]])).tolist()
        [[1.5]]
    """

    clip = None
    host_call = False
    # Attributes that may be scalar ``keras.Variable``s instead of floats: the
    # perturbation's sizes (ε, step sizes, σ), used only in graph ops. Declared
    # in a class's own body (not inherited); ``evaluate_robustness`` shares one
    # compiled step among such perturbations that differ only in these.
    _sizes = ()

    def perturb_in_graph(self, model, x, y=None):
        raise NotImplementedError(
            f"{type(self).__name__} must implement perturb_in_graph(model, x, y=None).")

    def input_range(self):
        """(low, high): the range the inputs must lie in, ±∞ for none; ``PerturbedModel``
        reads it inside its step and counts the inputs outside. Default: ``clip``."""
        return (-math.inf, math.inf) if self.clip is None else self.clip

    def perturb_and_predict(self, model, x, y=None, num_classes=None):
        """(the perturbed ``x``, the model's outputs there in inference mode or None):
        a perturbation that computes those outputs on its way (given ``num_classes``)
        hands them over, saving ``PerturbedModel`` a forward pass. Default: no outputs."""
        return self.perturb_in_graph(model, x, y), None

    def describe(self):
        """(family, norm, size) of the perturbation's row in a robustness report: the
        family's name; the threat model's norm ("inf" or "2") for an attack — the
        reports' checks compare the rows that have one — else None; its size (ε, σ,
        severity) or None."""
        return type(self).__name__, None, None

    #: True for a perturbation that a report evaluates by ``report_row`` rather than
    #: inside Keras' ``evaluate`` (``PerturbedModel``).
    evaluates_itself = False

    def report_row(self, model, x, y, verbose=0):
        """{"accuracy": …, any other entries of the report's row} on arrays ``x`` and
        integer labels ``y``, for a perturbation that ``evaluates_itself``."""
        raise NotImplementedError(f"{type(self).__name__} is evaluated inside Keras' evaluate.")

    def __call__(self, model, x, y=None):
        """The perturbed batch, computed now (``perturb_in_graph`` outside a step)."""
        if isinstance(model, keras.Model) or isinstance(x, dict):
            refuse_token_inputs(model, x, type(self).__name__)
        x = ops.convert_to_tensor(x, "float32")
        self._check_range(x)
        y = None if y is None else ops.convert_to_tensor(y)
        return self.perturb_in_graph(model, x, y)

    def _check_range(self, x):
        """NaN or ±∞ anywhere (whatever ``clip``: an attack's gradients, losses and
        steps are then NaN, and a NaN input would come back as a NaN "adversarial"),
        then values outside ``clip``. On the host: one copy of the batch, no eager
        program per batch shape (JAX compiles each)."""
        values = np.asarray(ops.convert_to_numpy(x))
        finite = np.isfinite(values)
        if not finite.all():
            bad = int((~finite.reshape(len(values), -1)).any(axis=1).sum()) if values.ndim else 1
            raise ValueError(
                f"`x`: {bad} input(s) hold NaN or infinite values; perturbing them "
                "gives NaN. Clean the data (e.g. drop those examples) first.")
        if self.clip is None or values.size == 0:
            return
        low, high = float(values.min()), float(values.max())
        if low < self.clip[0] - 1e-6 or high > self.clip[1] + 1e-6:
            raise ValueError(
                f"`x` lies in [{low:.4g}, {high:.4g}], outside the declared input "
                f"range clip={self.clip}; rescale the inputs or pass clip=."
            )

    def _set_seed(self, seed):
        """``seed`` (None or an integer, NumPy's too: Keras' ``SeedGenerator`` refuses
        ``np.int64``) and the generator ``_seed`` of a random perturbation."""
        self.seed = check_seed(seed)
        self._seed = keras.random.SeedGenerator(self.seed)

    def get_config(self):
        raise NotImplementedError(f"{type(self).__name__} must implement get_config().")

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_lowrank")
class GaussianNoise(Perturbation):
    """x̃ = clip(x + σ ε), ε ~ N(0, I): a new draw for every batch.

    Args:
        sigma: the noise standard deviation (≥ 0), in input units.
        clip: (low, high) range of the noisy input, or None.
        seed: noise seed.

    Examples:

        >>> import numpy as np
        >>> noisy = ops.convert_to_numpy(GaussianNoise(0.5, seed=0)(None, np.full((100, 4), 0.5, "float32")))
        >>> bool(noisy.min() >= 0.0 and noisy.max() <= 1.0), bool(0.3 < noisy.std() < 0.5)
        (True, True)
    """

    _sizes = ("sigma",)

    def __init__(self, sigma, clip=(0.0, 1.0), seed=None):
        self.sigma = check_number(sigma, "sigma", minimum=0.0)
        self.clip = check_clip(clip)
        self._set_seed(seed)

    def get_config(self):
        return {"sigma": self.sigma, "clip": self.clip, "seed": self.seed}

    def describe(self):
        return "gaussian", None, self.sigma

    def perturb_in_graph(self, model, x, y=None):
        noisy = x + self.sigma * keras.random.normal(ops.shape(x), seed=self._seed)
        return noisy if self.clip is None else ops.clip(noisy, *self.clip)

    @property
    def name(self):
        return f"Gaussian σ={number(self.sigma):g}"

    def __repr__(self):
        return f"GaussianNoise(sigma={number(self.sigma):g})"
