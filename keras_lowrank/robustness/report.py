"""``evaluate_robustness``: accuracy under attacks and noise, with the checks of
Carlini et al., "On Evaluating Adversarial Robustness" (docs/methods.md §6), so that a
real robustness gain can be told from a broken attack (gradient masking)."""

import dataclasses
import json
import numbers

import keras
import numpy as np

from keras_lowrank._optional import require
from keras_lowrank._validation import check_clip, check_number, check_seed
from keras_lowrank.robustness._gradients import blocked_gradient
from keras_lowrank.robustness._report_inputs import (
    as_pair,
    check_data,
    check_input_shape,
    first_inputs,
    first_inputs_raw,
    is_pair,
    refuse_token_inputs,
)
from keras_lowrank.robustness._sweep import Identity, Sweep, sweep_group
from keras_lowrank.robustness.attacks import APGD, FAB, FGSM, PGD, SPSA, AutoAttack, Square
from keras_lowrank.robustness.attacks.autoattack import EOT_ITER
from keras_lowrank.robustness.attacks.base import _SYMBOL, resolve_from_logits
from keras_lowrank.robustness.corruptions import Corruption
from keras_lowrank.robustness.evaluation import PerturbedModel
from keras_lowrank.robustness.perturbations import GaussianNoise, class_count


@dataclasses.dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclasses.dataclass
class RobustnessReport:
    """``evaluate_robustness``' result: rows of (perturbation, family, norm, size,
    accuracy) and the gradient-masking checks.

    Attributes:
        rows: one dict per evaluation (name, family, norm, size, accuracy).
        checks: ``Check(name, passed, detail)`` objects.
        num_examples: examples evaluated.

    Examples:

        >>> report = RobustnessReport(rows=[{"name": "clean", "family": "clean", "norm": None,
        ...                                  "size": 0.0, "accuracy": 0.9}], checks=[], num_examples=10)
        >>> report.clean_accuracy, report.all_checks_passed
        (0.9, True)
    """

    rows: list
    checks: list
    num_examples: int

    @property
    def clean_accuracy(self):
        return next(r["accuracy"] for r in self.rows if r["family"] == "clean")

    def accuracy(self, family, size, norm="inf"):
        for row in self.rows:
            if row["family"] == family and row["size"] == size and row["norm"] in (norm, None):
                return row["accuracy"]
        raise KeyError(f"no row for {family} at {size} ({norm})")

    def mean_corruption_accuracy(self):
        """Mean accuracy over the corruption rows (None without any)."""
        values = [r["accuracy"] for r in self.rows if r["family"].startswith("corruption:")]
        return sum(values) / len(values) if values else None

    @property
    def all_checks_passed(self):
        return all(check.passed for check in self.checks)

    def as_dict(self):
        return {"num_examples": self.num_examples, "rows": self.rows,
                "checks": [dataclasses.asdict(c) for c in self.checks]}

    def to_json(self, path=None):
        text = json.dumps(self.as_dict(), indent=2)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    def to_markdown(self):
        lines = ["| perturbation | accuracy |", "| --- | --- |"]
        for r in self.rows:
            lines.append(f"| {r['name']} | {r['accuracy']:.4f} |")
            lines += [f"| ↳ after {stage} | {value:.4f} |" for stage, value in r.get("stages", {}).items()]
        lines += ["", "| check | result | detail |", "| --- | --- | --- |"]
        lines += [f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {c.detail} |"
                  for c in self.checks]
        return "\n".join(lines)

    def __str__(self):
        width = max(len(r["name"]) for r in self.rows)
        lines = [f"{'perturbation':<{width}}  accuracy  ({self.num_examples} examples)"]
        lines += [f"{r['name']:<{width}}  {r['accuracy']:.4f}" for r in self.rows]
        lines.append("gradient-masking checks:")
        for c in self.checks:
            lines.append(f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}")
        if not self.all_checks_passed:
            lines.append("  WARNING: a check failed; the attack accuracies may overstate "
                         "robustness (possible gradient masking or a broken attack).")
        return "\n".join(lines)

    def plot(self, path, title=None):
        """Accuracy vs eps per attack (and vs sigma for noise), saved to ``path``."""
        require("matplotlib", "Plotting")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        families = sorted({(r["family"], r["norm"]) for r in self.rows
                           if r["family"] in _ATTACK_FAMILIES + ("gaussian",)}, key=str)
        noise = [f for f in families if f[0] == "gaussian"]
        attacks = [f for f in families if f[0] != "gaussian"]
        panels = [p for p in (attacks, noise) if p]
        if not panels:
            raise ValueError("Nothing to plot: the report has no attack or Gaussian-noise rows.")
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6),
                                 squeeze=False)
        for ax, group in zip(axes[0], panels):
            for family, norm in group:
                points = sorted((r["size"], r["accuracy"]) for r in self.rows
                                if r["family"] == family and r["norm"] == norm)
                points = [(0.0, self.clean_accuracy)] + points
                label = family if norm is None else f"{family} (L{'∞' if norm == 'inf' else norm})"
                ax.plot(*zip(*points), "o-", label=label)
            ax.set_xlabel("σ" if group is noise else "ε")
            ax.set_ylabel("accuracy")
            ax.set_ylim(0, 1.02)
            ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _describe(perturbation):
    if isinstance(perturbation, Identity):
        return "clean", None, 0.0
    if isinstance(perturbation, GaussianNoise):
        return "gaussian", None, perturbation.sigma
    if isinstance(perturbation, Corruption):
        return f"corruption:{perturbation.corruption}", None, perturbation.severity
    if isinstance(perturbation, (FGSM, PGD, SPSA, APGD, FAB, Square, AutoAttack)):
        return type(perturbation).__name__, perturbation.norm, perturbation.eps
    return type(perturbation).__name__, None, None


def _arrays(data):
    """(x, integer labels) as numpy arrays, from a pair or an iterable of batches."""
    if is_pair(data):
        x, y = (np.asarray(keras.ops.convert_to_numpy(a)) for a in data)
    else:
        batches = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else iter(data)
        xs, ys = zip(*((np.asarray(b[0]), np.asarray(b[1])) for b in batches))
        x, y = np.concatenate(xs), np.concatenate(ys)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    return x, y.reshape(-1)


class _Evaluator:
    """Accuracy of one model under perturbations, through ``PerturbedModel.evaluate``.

    Clean, Gaussian-noise, FGSM and PGD rows all run in one
    ``PerturbedModel`` of a ``Sweep``: one parametrised step whose settings (σ, ε,
    step size, steps, start, projection, range) are variables assigned before each
    row, so Keras traces and compiles one test step for all of them (per norm,
    targeting and ``from_logits``) instead of one per kind — a large model's step
    takes seconds to minutes to compile. ``default_group`` is the step the clean
    and noise rows join: that of the first FGSM/PGD row, or none.

    Other perturbations of one class whose configurations differ only in their sizes
    (``Perturbation._sizes``: ε, step sizes, σ) share one ``PerturbedModel`` whose
    copy of the perturbation holds those sizes as variables: Keras traces and
    compiles its test step once for an ε-sweep, not once per ε (a large model's
    attack step takes seconds to minutes to compile). Before each row the sizes are
    assigned and the random generators reset to their initial state, so every row
    draws what a fresh object with that seed would (common random numbers across σ
    and ε)."""

    def __init__(self, model, from_logits, jit_compile, verbose, perturbations=()):
        self.model, self.from_logits = model, from_logits
        self.jit_compile, self.verbose = jit_compile, verbose
        self._shared = {}
        self._pairs = {}
        groups = [self._group(p) for p in perturbations]
        self._restarts = {}  # per shared step, the most restarts of its PGD rows
        for group, perturbation in zip(groups, perturbations):
            if type(perturbation) is PGD:
                self._restarts[group] = max(self._restarts.get(group, 1), perturbation.restarts)
        # Without a gradient attack the clean and noise rows keep steps of their own:
        # the shared step holds the model's input gradient, which a model that is
        # not differentiable (a numpy_function inside) cannot trace.
        self.default_group = next((g for g in groups if g not in (None, "any")), None)

    def _group(self, perturbation):
        found = sweep_group(perturbation)
        if found in (None, "any"):
            return found
        norm, targeted, from_logits = found
        # None means "logits unless the model ends in a softmax" (Attack._oracle)
        return norm, targeted, resolve_from_logits(self.model, from_logits)

    def accuracy(self, perturbation, data):
        wrapper = self._ready_wrapper(perturbation, _one_hot(data))
        inputs = self._pair_inputs(data) if is_pair(data) else {"x": data}
        result = wrapper.evaluate(**inputs, verbose=self.verbose, return_dict=True)
        return float(result["accuracy"])

    def _pair_inputs(self, pair):
        """``evaluate``'s arguments for ``pair`` padded (``_padded_pair``), made once per
        report: on TensorFlow a ``tf.data.Dataset`` of (x, y, sample weight) batches —
        from arrays Keras builds one at every ``evaluate``, tracing dataset functions
        again for every row (docs/benchmarks.md) — elsewhere the arrays and batch size
        (Keras' array adapter costs little there, and JAX users need not have
        TensorFlow)."""
        key = id(pair)
        if key not in self._pairs:
            x, y, weights, batch = _padded_pair(pair)
            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                made = {"x": tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(batch)}
            else:
                made = {"x": x, "y": y, "sample_weight": weights, "batch_size": batch}
            self._pairs[key] = pair, made  # the pair held, so its id stays its own
        return self._pairs[key][1]

    def _ready_wrapper(self, perturbation, one_hot):
        """A wrapper set to compute ``perturbation``: the shared ``Sweep``, a shared
        wrapper with the sizes assigned, or one of its own."""
        found = self._group(perturbation)
        if found == "any":
            found = self.default_group
        if found is not None:
            key = ("sweep", found, one_hot)
            if key not in self._shared:
                self._shared[key] = self._wrapper(
                    Sweep(*key[1], max_restarts=self._restarts.get(found, 1)), one_hot)
            self._shared[key].perturbation.load(perturbation)
            return self._shared[key]
        key = self._key(perturbation, one_hot)
        if key is None:
            return self._wrapper(perturbation, one_hot)
        if key not in self._shared:
            self._shared[key] = self._sized_wrapper(perturbation, one_hot)
        wrapper, sizes, seeds = self._shared[key]
        for name, variable in sizes.items():
            variable.assign(float(getattr(perturbation, name)))
        for generator, state in seeds:
            generator.state.assign(state)
        return wrapper

    @staticmethod
    def _sizes(perturbation):
        # declared by the class itself: a subclass may use a size on the host
        return vars(type(perturbation)).get("_sizes", ())

    def _key(self, perturbation, one_hot):
        sizes = self._sizes(perturbation)
        if not sizes:
            return None
        try:
            config = perturbation.get_config()
        except NotImplementedError:
            return None
        rest = sorted((name, repr(value)) for name, value in config.items() if name not in sizes)
        return type(perturbation), tuple(rest), one_hot

    def _sized_wrapper(self, perturbation, one_hot):
        template = type(perturbation).from_config(perturbation.get_config())
        sizes = {}
        for name in self._sizes(perturbation):
            sizes[name] = keras.Variable(float(getattr(perturbation, name)), dtype="float32", trainable=False,
                                         name=name)
            setattr(template, name, sizes[name])
        seeds = [(g, keras.ops.convert_to_numpy(g.state)) for g in vars(template).values()
                 if isinstance(g, keras.random.SeedGenerator)]
        return self._wrapper(template, one_hot), sizes, seeds

    def _wrapper(self, perturbation, one_hot):
        wrapper = PerturbedModel(self.model, perturbation)
        if one_hot:
            loss = keras.losses.CategoricalCrossentropy(from_logits=self.from_logits)
            metric = keras.metrics.CategoricalAccuracy(name="accuracy")
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=self.from_logits)
            metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        # weighted: the padding of (x, y) pairs has weight 0 (`metrics=` would ignore it);
        # no optimizer: evaluate would build compile's default (RMSprop), a slot per weight
        # of the model — and on JAX one compiled program per weight shape
        wrapper.compile(optimizer=None, jit_compile=self.jit_compile, loss=loss, weighted_metrics=[metric])
        return wrapper


_PAIR_BATCH = 256


def _padded_pair(data):
    """(x, y) padded to a whole number of equal batches, the padding weighted 0.

    JAX compiles a step once per batch shape: a smaller last batch would compile
    every perturbation's step twice (each a compile of the whole step). The padding repeats the
    first examples with sample weight 0, so the weighted accuracy is exactly the
    accuracy on ``data``."""
    x, y = (np.asarray(keras.ops.convert_to_numpy(a)) for a in data)
    batch = min(_PAIR_BATCH, len(x))
    pad = -len(x) % batch
    weights = np.concatenate([np.ones(len(x), "float32"), np.zeros(pad, "float32")])
    if pad:
        x, y = np.concatenate([x, x[:pad]]), np.concatenate([y, y[:pad]])
    return x, y, weights, batch


def _label_shape(data):
    if is_pair(data):
        return tuple(data[1].shape)
    spec = getattr(data, "element_spec", None)  # tf.data
    if isinstance(spec, (tuple, list)) and len(spec) >= 2 and hasattr(spec[1], "shape"):
        return tuple(spec[1].shape)
    return None


def _one_hot(data):
    """Whether ``data``'s labels are one-hot rows (batch, classes > 1)."""
    shape = _label_shape(data)
    return shape is not None and len(shape) == 2 and (shape[1] or 0) > 1


def evaluate_robustness(model, data, attacks=(), noise_sigmas=(), corruptions=(),
                        datasets=None, clip=(0.0, 1.0), large_eps="auto", seed=0,
                        from_logits=None, jit_compile="auto", black_box=False, verbose=0):
    """Accuracy of ``model`` on ``data`` clean, under each attack and noise level.

    Args:
        model: a Keras classifier.
        data: a tf.data.Dataset (or anything ``evaluate`` takes) of (x, y)
            batches, or an (x, y) pair of arrays; labels are integer classes or
            one-hot rows.
        attacks: attack objects (``FGSM``, ``PGD``, ``APGD``, ``FAB``, ``Square``,
            ``AutoAttack``), typically a sweep over eps; one alone is a list of one
            (so are one σ and one corruption). ``AutoAttack`` runs stage
            by stage on the examples not yet broken (``AutoAttack.run``); its row
            holds the accuracy after each stage, and its flags become checks.
        noise_sigmas: Gaussian-noise standard deviations (``GaussianNoise`` with
            ``seed``: every σ, and every model evaluated with the same data and
            seed, sees the same draws ε — common random numbers).
        corruptions: ``Corruption`` objects (e.g. ``all_corruptions()``).
        datasets: {label: dataset} of already-perturbed data evaluated as they
            are, e.g. the real CIFAR-10-C from
            ``data.load("cifar10_corrupted/fog_3", "test")``.
        clip: the input range.
        large_eps: eps of the "large eps drives accuracy to ~0" probe (PGD L∞, 20
            steps); "auto" (default): half the input range; None: no probe.
        from_logits: as in the attacks; None = logits unless the last layer has a
            softmax.
        jit_compile: passed to ``compile``; True (XLA) makes TF attacks ~1.3–1.5×
            faster on CPU, where Keras' "auto" leaves XLA off.
        black_box: also run the black-box ``SPSA`` (10 steps, 32 samples) at
            each ε of the L∞ PGD attacks, for the check "a black-box attack is
            not stronger than the white-box one" (costs ~30× a PGD-10 run).

    Returns:
        ``RobustnessReport`` (print it; ``to_json``, ``to_markdown``, ``plot``).

    Examples:
        FGSM at ε = 0.1 flips the example with margin 0.05, not the one
        with margin 0.4.

        >>> import numpy as np
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
        >>> model.layers[0].set_weights([np.array([[1.0, -1.0], [0.0, 0.0]]), np.array([-0.5, 0.5])])
        >>> x = np.array([[0.55, 0.5], [0.9, 0.5]], "float32")  # class 0 iff x₀ > 0.5
        >>> y = np.array([0, 0])
        >>> from keras_lowrank.robustness import FGSM
        >>> report = evaluate_robustness(model, (x, y), attacks=[FGSM(0.1)], noise_sigmas=[0.0], large_eps=None)
        >>> report.clean_accuracy, report.accuracy("FGSM", 0.1), report.accuracy("gaussian", 0.0)
        (1.0, 0.5, 1.0)
    """
    attacks, corruptions = _as_list(attacks), _as_list(corruptions)
    if isinstance(noise_sigmas, numbers.Number) or getattr(noise_sigmas, "ndim", None) == 0:
        noise_sigmas = [noise_sigmas]  # one σ (a Python or NumPy number, a 0-d array)
    noise_sigmas = [check_number(s, "noise_sigmas", minimum=0.0) for s in noise_sigmas]
    clip = check_clip(clip)
    seed = check_seed(seed)
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model, got {type(model).__name__}.")
    if isinstance(model, PerturbedModel):  # its gradient is stopped: every attack would read clean
        raise ValueError(f"evaluate_robustness cannot evaluate this model: {blocked_gradient(model)}.")
    refuse_token_inputs(model, data[0] if is_pair(data) else first_inputs_raw(data))
    for attack in attacks:
        if hasattr(attack, "check_gradients"):
            attack.check_gradients(model)  # a white-box attack on a model without gradients
    data = as_pair(model, data)
    num_examples = check_data(data)
    check_input_shape(model, data)
    first = first_inputs(data)  # for the checks before any trace: outputs, from_logits
    if first is not None:
        class_count(model, (None,) + first.shape[1:])  # one output of class scores
    datasets = {label: as_pair(model, dataset, f"datasets[{label!r}]") for label, dataset in (datasets or {}).items()}
    for label, dataset in datasets.items():
        check_data(dataset, f"datasets[{label!r}]")
        check_input_shape(model, dataset, f"datasets[{label!r}]")
    reason = blocked_gradient(model)
    given = [(a.from_logits, f"{type(a).__name__}(from_logits)") for a in attacks
             if getattr(a, "from_logits", None) is not None]
    given += [(from_logits, "from_logits")] if from_logits is not None else []
    for flag, argument in given:  # each flag given, against the model's outputs
        resolve_from_logits(model, flag, first, argument)
    from_logits = resolve_from_logits(model, from_logits)
    rows, planned = [], []

    def add(perturbation, name=None, on=data, family=None):
        planned.append((perturbation, name, on, family))

    def run(perturbation, name=None, on=data, family=None):
        described_family, norm, size = _describe(perturbation)
        family = family or described_family
        extra = {}
        if isinstance(perturbation, AutoAttack):
            # run stage by stage, each on the examples not yet broken (cheaper
            # than all stages on every example inside `evaluate`)
            result = perturbation.run(model, *_arrays(on), verbose=verbose)
            accuracy = result.robust_accuracy
            extra = {"stages": result.stage_accuracy, "flags": result.flags}
        else:
            accuracy = evaluator.accuracy(perturbation, on)
        name = name or getattr(perturbation, "name", repr(perturbation))
        if extra.get("flags", {}).get("skipped"):  # a stage left out is in the row's name
            name += " without " + ", ".join(s.split(":")[0] for s in extra["flags"]["skipped"])
        row = {"name": name, "family": family, "norm": norm, "size": size, "accuracy": accuracy, **extra}
        rows.append(row)
        return row

    add(Identity(), name="clean")
    for attack in attacks:
        add(attack)
    if black_box:
        for eps in sorted({a.eps for a in attacks if isinstance(a, PGD) and a.norm == "inf"}):
            add(SPSA(eps, seed=seed, clip=clip))
    for sigma in noise_sigmas:
        add(GaussianNoise(sigma, clip=clip, seed=seed))
    for corruption in corruptions:
        add(corruption)
    for label, dataset in (datasets or {}).items():
        add(Identity(), name=label, on=dataset, family="dataset")
    if large_eps == "auto":  # the probe is PGD: no probe where PGD has no gradient to follow
        large_eps = None if clip is None or reason else (clip[1] - clip[0]) / 2
    elif reason and large_eps is not None:
        raise ValueError(f"`large_eps`: the large-ε probe is a PGD attack, but the model has no input "
                         f"gradient: {reason}. Pass large_eps=None (or 'auto').")
    large_eps = check_number(large_eps, "large_eps", minimum=0.0, allow_none=True)
    if large_eps is not None:
        add(PGD(large_eps, steps=20, seed=seed, clip=clip), name=f"PGD-20 L∞ ε={large_eps:g} (large-ε probe)")
    evaluator = _Evaluator(model, from_logits, jit_compile, verbose, [p for p, *_ in planned])
    for row in planned:
        run(*row)
    probe = rows[-1] if large_eps is not None else None
    checks = _checks(rows, probe, num_examples)
    return RobustnessReport(rows=rows, checks=checks, num_examples=num_examples)


def _as_list(perturbations):
    """``attacks`` / ``corruptions`` as a list: one perturbation object given alone
    is a list of one."""
    return [perturbations] if hasattr(perturbations, "perturb_in_graph") else list(perturbations)


BLACK_BOX_MARGIN = 0.02
_ATTACK_FAMILIES = ("FGSM", "PGD", "SPSA", "APGD", "FAB", "Square", "AutoAttack")
AUTOATTACK_BLACK_BOX_MARGIN = 0.002  # the authors' check_square_sr


def _autoattack_checks(row):
    """The checks of AutoAttack's checks.py on one AutoAttack row."""
    flags, label = row["flags"], f"AutoAttack ε={row['size']:g}"
    checks = [
        Check("AutoAttack: input gradients not zero", flags["zero_gradient_share"] == 0,
              f"{label}: {flags['zero_gradient_share']:.2%} of the points have an all-zero input gradient"),
        Check("AutoAttack: outputs attacked as logits are logits", not flags["probabilities"],
              f"{label}: " + ("the outputs sum to 1 like probabilities: pass from_logits=False"
                              if flags["probabilities"] else "logits, or probabilities handled")),
        _randomized_check(flags, label),
    ]
    if flags["black_box_gain"] is not None:
        checks.append(Check(
            "AutoAttack: black-box stage adds nothing", flags["black_box_gain"] <= AUTOATTACK_BLACK_BOX_MARGIN,
            f"{label}: Square lowered robust accuracy by {flags['black_box_gain']:.2%} after the white-box stages"
            + (" (gradients likely masked)" if flags["black_box_gain"] > AUTOATTACK_BLACK_BOX_MARGIN else "")))
    return checks


def _randomized_check(flags, label):
    """The authors' check_randomized: a randomised forward pass needs the "rand"
    version (gradients averaged over passes), which passes it."""
    if flags.get("version") == "rand":
        return Check("AutoAttack: forward pass deterministic, or attacked with EOT", True,
                     f"{label}: version 'rand', each gradient averaged over {EOT_ITER} passes"
                     + (" (outputs differ between passes)" if flags["randomized"] else ""))
    return Check("AutoAttack: forward pass deterministic, or attacked with EOT", not flags["randomized"],
                 f"{label}: " + ("outputs differ between passes (a randomised defence?): attack it with "
                                 "AutoAttack(eps, version='rand') (CLI: autoattack-rand:EPS)"
                                 if flags["randomized"] else "repeated passes agree"))


def _checks(rows, probe, num_examples):
    # One example; Keras' metrics are float32, so k/n and (k+1)/n can differ by a
    # hair more than 1/n: the slack keeps a one-example difference a pass.
    tolerance = (1.0 + 1e-3) / num_examples if num_examples else 0.005
    clean = rows[0]["accuracy"]
    attack_rows = [r for r in rows if r["family"] in _ATTACK_FAMILIES and r is not probe]
    checks = []
    worst = max((r["accuracy"] - clean for r in attack_rows), default=0.0)
    checks.append(Check("attacks do not raise accuracy above clean", worst <= tolerance,
                        f"largest gain over clean {worst:+.4f}"))
    for family in ("FGSM", "PGD"):
        for norm in ("inf", "2"):
            series = sorted((r["size"], r["accuracy"]) for r in attack_rows
                            if r["family"] == family and r["norm"] == norm)
            if len(series) < 2:
                continue
            rises = [(a, b) for (a, acc_a), (b, acc_b) in zip(series, series[1:])
                     if acc_b > acc_a + tolerance]
            checks.append(Check(
                f"{family} L{_SYMBOL[norm]} accuracy non-increasing in ε", not rises,
                "monotone" if not rises else f"rises between ε={rises[0][0]:g} and {rises[0][1]:g}"))
    for norm in ("inf", "2"):
        fgsm = {r["size"]: r["accuracy"] for r in attack_rows
                if r["family"] == "FGSM" and r["norm"] == norm}
        pgd = {r["size"]: r["accuracy"] for r in attack_rows
               if r["family"] == "PGD" and r["norm"] == norm}
        common = sorted(set(fgsm) & set(pgd))
        if common:
            weaker = [e for e in common if pgd[e] > fgsm[e] + tolerance]
            checks.append(Check(
                f"PGD L{_SYMBOL[norm]} at least as strong as FGSM", not weaker,
                f"at ε in {common}" if not weaker else f"PGD weaker at ε={weaker}"))
    pgd = {r["size"]: r["accuracy"] for r in attack_rows
           if r["family"] == "PGD" and r["norm"] == "inf"}
    spsa = {r["size"]: r["accuracy"] for r in attack_rows if r["family"] == "SPSA"}
    common = sorted(set(pgd) & set(spsa))
    if common:
        # SPSA is random: "much stronger" means by more than BLACK_BOX_MARGIN.
        stronger = [e for e in common if spsa[e] < pgd[e] - max(BLACK_BOX_MARGIN, tolerance)]
        checks.append(Check(
            "black-box SPSA not stronger than white-box PGD L∞", not stronger,
            f"at ε in {common}" if not stronger else
            f"SPSA stronger at ε={stronger}: gradients are likely masked"))
    for row in attack_rows:
        if row["family"] == "AutoAttack":
            checks.extend(_autoattack_checks(row))
    if probe is not None:
        checks.append(Check(f"large ε={probe['size']:g} drives accuracy near 0",
                            probe["accuracy"] <= 0.1,
                            f"accuracy {probe['accuracy']:.4f} (threshold 0.10)"))
    return checks
