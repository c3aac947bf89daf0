"""AutoAttack (Croce & Hein 2020) native to Keras 3: APGD, APGD-T, FAB-T, Square
and their worst-case ensemble, each batch in compiled graphs on TensorFlow and JAX.

Written by hand: the authors' implementation runs in PyTorch (its TensorFlow path
copies every call to PyTorch), and ART's wrappers refuse Keras 3 models. The
algorithms follow the authors' code (fra31/auto-attack: ``autopgd_base.py``,
``fab_base.py``, ``fab_projections.py``, ``square.py``, ``checks.py``) step for
step; keras_lowrank/methods.md §7 gives the formulas.
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_lowrank._validation import check_int, check_number, check_seed
from keras_lowrank.robustness._classifier import ClassifierView, are_probabilities
from keras_lowrank.robustness._gradients import (
    compile_function,
    value_and_grad,
)
from keras_lowrank.robustness._report_inputs import refuse_token_inputs
from keras_lowrank.robustness.attacks._runner import (
    _CompiledPerModel,
    _refuse_targeted,
)
from keras_lowrank.robustness.attacks.apgd import (
    APGD,
    APGDT,
)
from keras_lowrank.robustness.attacks.base import (
    _SYMBOL,
    Attack,
    _check_norm,
    renamed_argument,
)
from keras_lowrank.robustness.attacks.fab import (
    FAB,
)
from keras_lowrank.robustness.attacks.losses import (
    DLR_MIN_CLASSES,
    TARGETED_DLR_MIN_CLASSES,
    _per_example,
)
from keras_lowrank.robustness.attacks.square import (
    Square,
)


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


_VERSIONS = ("standard", "fast", "rand")
EOT_ITER = 20  # passes per gradient in the "rand" version, as the authors


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
    - ``version="rand"``, for randomised defences (a model whose layers draw random
      numbers in inference, from a ``keras.random.SeedGenerator``): APGD-CE and
      APGD-DLR, each gradient the mean over 20 passes with fresh draws (expectation
      over transformation). ``flags["randomized"]`` of the other versions says when
      a model needs it.

    ``run`` returns the per-stage accuracies and the checks of the authors'
    ``checks.py`` (gradient masking, randomised defences, probabilities);
    ``evaluate_robustness`` reports them. Called like the other attacks
    (``AutoAttack(eps)(model, x, y)``) it returns the adversarial examples.

    Args:
        eps: the budget (≥ 0).
        norm: "inf" or 2 (Square L2 needs images of ≥ 3×3 pixels: on other
            inputs the ensemble runs without it and ``flags["skipped"]`` says so).
        version: "standard", "fast" or "rand".
        steps: the iterations of APGD, APGD-T and FAB-T (100 in the standard; formerly
            ``n_iter``, deprecated).
        square_steps: Square's iterations, one query each (5000 in the standard; formerly
            ``n_queries``, deprecated).
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
        >>> result = AutoAttack(0.1, square_steps=100, seed=0).run(model, x, np.array([0, 0]))
        >>> result.robust.tolist(), result.broken_by.tolist(), result.robust_accuracy
        ([False, True], [0, -1], 0.5)

    References:
        - Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
          attacks", ICML 2020: https://arxiv.org/abs/2003.01690 (code: https://github.com/fra31/auto-attack)
        - Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security" (EOT against randomised
          defences), ICML 2018: https://arxiv.org/abs/1802.00420
    """

    def __init__(self, eps, norm="inf", version="standard", steps=100, square_steps=5000,
                 batch_size=500, seed=0, **kwargs):
        steps = renamed_argument(kwargs, "n_iter", "steps", steps, 100, "AutoAttack")
        square_steps = renamed_argument(kwargs, "n_queries", "square_steps", square_steps, 5000, "AutoAttack")
        _refuse_targeted("AutoAttack", kwargs.pop("targeted", False),
                         "AutoAttack's stages choose their own targets (APGD-T, FAB-T), with y the true labels")
        super().__init__(targeted=False, **kwargs)
        self.eps = check_number(eps, "eps", minimum=0.0)
        self.norm = _check_norm(norm)
        if version not in _VERSIONS:
            raise ValueError(f"`version` must be one of {_VERSIONS}, got version={version!r}.")
        self.version = version
        self.steps = check_int(steps, "steps")
        self.square_steps = check_int(square_steps, "square_steps")
        self.batch_size = check_int(batch_size, "batch_size")
        self.seed = seed = check_seed(seed)
        common = {"clip": self.clip, "from_logits": self.from_logits}
        seeds = [None if seed is None else seed + k for k in range(3)]
        if version == "rand":
            self.stages = [APGD(self.eps, self.norm, loss=loss, steps=self.steps, eot_iter=EOT_ITER,
                                seed=seeds[k], **common) for k, loss in enumerate(("ce", "dlr"))]
        else:
            self.stages = [APGD(self.eps, self.norm, loss="ce", steps=self.steps, seed=seeds[0], **common),
                           APGDT(self.eps, self.norm, steps=self.steps,
                                 n_target_classes=9 if version == "standard" else 3, seed=seeds[1], **common)]
        if version == "standard":
            if self.clip is not None:
                self.stages.append(FAB(self.eps, self.norm, steps=self.steps, n_target_classes=9, **common))
            self.stages.append(Square(self.eps, norm=self.norm, steps=self.square_steps, seed=seeds[2], **common))
        self._gradients = _CompiledPerModel(self._build_gradients)

    def get_config(self):
        config = super().get_config()
        config.pop("targeted")
        return {**config, "eps": self.eps, "norm": self.norm, "version": self.version,
                "steps": self.steps, "square_steps": self.square_steps, "batch_size": self.batch_size,
                "seed": self.seed}

    @property
    def name(self):
        return f"AutoAttack ({self.version}) L{_SYMBOL[self.norm]} ε={self.eps:g}"

    def __repr__(self):
        return f"AutoAttack(eps={self.eps:g}, norm={self.norm}, version={self.version!r})"

    @property
    def required_classes(self):
        """(the fewest classes the ensemble can run on, what needs them)."""
        if self.version == "rand":
            return DLR_MIN_CLASSES, "its DLR loss, in APGD-DLR"
        return TARGETED_DLR_MIN_CLASSES, "its targeted DLR loss, in APGD-T"

    @property
    def stage_names(self):
        return [_stage_name(stage) for stage in self.stages]

    def _build_gradients(self, model):
        scores = ClassifierView(model, self.from_logits).scores

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

    # A report runs the ensemble stage by stage, each stage on the examples not yet
    # broken (cheaper than every stage on every example inside ``evaluate``).
    evaluates_itself = True

    def report_row(self, model, x, y, verbose=0):
        """The report's row: the robust accuracy, the accuracy after each stage and the
        authors' checks' flags (``run``)."""
        result = self.run(model, x, y, verbose=verbose)
        return {"accuracy": result.robust_accuracy, "stages": result.stage_accuracy, "flags": result.flags}

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
        needed, what = self.required_classes
        if num_classes < needed:
            raise ValueError(
                f"AutoAttack ({self.version}) needs a model of at least {needed} classes ({what}); "
                f"the model has {num_classes}. Evaluate such a model with the stages "
                "that apply: evaluate_robustness(model, data, attacks=[APGD(eps, loss='ce'), "
                "Square(eps)]).")
        self._check_range(x)
        y = np.asarray(ops.convert_to_numpy(self._labels(model, ops.convert_to_tensor(x), y, num_classes)))
        forward = ClassifierView(model, self.from_logits).compiled_scores()
        stages, skipped = [], []
        for stage in self.stages:
            (skipped if not stage.applies_to(x.shape[1:]) else stages).append(stage)
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
                               if not stages[-1].needs_gradients else None),
            # the authors' check_range_output (tolerance 1e-5) on outputs taken for logits
            "probabilities": (are_probabilities(raw, tolerance=1e-5)
                              and ClassifierView(model, self.from_logits).how == "logits"),
            "max_perturbation": _max_norm(adversarial - x, self.norm),
            "skipped": [f"{stage.name}: L2 needs images of at least 3×3 pixels" for stage in skipped],
            "version": self.version,
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
        scores = ClassifierView(model, self.from_logits).scores
        if y is None:
            y = ops.argmax(scores(x), axis=-1)
        y = ops.cast(y, "int32")
        adversarial = x
        robust = ops.equal(ops.cast(ops.argmax(scores(x), axis=-1), "int32"), y)
        for stage in self.stages:
            if not stage.applies_to(tuple(x.shape[1:])):
                continue
            found = stage.perturb_in_graph(model, x, y)
            fooled = ops.not_equal(ops.cast(ops.argmax(scores(found), axis=-1), "int32"), y)
            broken = ops.logical_and(robust, fooled)
            adversarial = ops.where(_per_example(broken, x), found, adversarial)
            robust = ops.logical_and(robust, ops.logical_not(fooled))
        return adversarial


def _stage_name(stage):
    return stage.name.split(" L")[0]


def _max_norm(delta, norm):
    flat = delta.reshape(len(delta), -1)
    if not len(flat):
        return 0.0
    values = np.abs(flat).max(axis=1) if norm == "inf" else np.sqrt((flat.astype("float64") ** 2).sum(axis=1))
    return float(values.max())
