"""``evaluate_robustness``: accuracy under attacks and noise, with the checks of
Carlini et al., "On Evaluating Adversarial Robustness" (keras_lowrank/methods.md §6), so that a
real robustness gain can be told from a broken attack (gradient masking)."""

import dataclasses
import json
import numbers

import keras

from keras_lowrank._optional import require
from keras_lowrank._validation import check_clip, check_number, check_seed
from keras_lowrank.robustness._checks import Check, masking_checks
from keras_lowrank.robustness._classifier import resolve_from_logits
from keras_lowrank.robustness._evaluator import Evaluator, arrays
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
from keras_lowrank.robustness._sweep import Identity
from keras_lowrank.robustness.attacks import PGD, SPSA
from keras_lowrank.robustness.perturbations import GaussianNoise, class_count
from keras_lowrank.robustness.perturbed_model import PerturbedModel

__all__ = ["Check", "RobustnessReport", "evaluate_robustness"]


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
                           if r["norm"] is not None or r["family"] == "gaussian"}, key=str)
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

    References:
        - Carlini et al., "On Evaluating Adversarial Robustness", 2019:
          https://arxiv.org/abs/1902.06705
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
        described_family, norm, size = perturbation.describe()
        family = family or described_family
        if perturbation.evaluates_itself:  # e.g. AutoAttack: stage by stage on the unbroken examples
            extra = perturbation.report_row(model, *arrays(on), verbose=verbose)
        else:
            extra = {"accuracy": evaluator.accuracy(perturbation, on)}
        accuracy = extra.pop("accuracy")
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
        for eps in sorted({size for family, norm, size in (a.describe() for a in attacks)
                           if family == "PGD" and norm == "inf"}):
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
    evaluator = Evaluator(model, from_logits, jit_compile, verbose, [p for p, *_ in planned])
    for row in planned:
        run(*row)
    probe = rows[-1] if large_eps is not None else None
    checks = masking_checks(rows, probe, num_examples)
    return RobustnessReport(rows=rows, checks=checks, num_examples=num_examples)


def _as_list(perturbations):
    """``attacks`` / ``corruptions`` as a list: one perturbation object given alone
    is a list of one."""
    return [perturbations] if hasattr(perturbations, "perturb_in_graph") else list(perturbations)


