"""One compiled step for the rows of a robustness report: clean, Gaussian noise,
FGSM and PGD as settings of one parametrised graph.

Each kind of row used to trace the model anew inside Keras' test step (a
forward-only step alone costs seconds on a MobileNetV2; docs/benchmarks.md), so
a report with clean, noise, FGSM and PGD rows traced and compiled four to five
steps. All four are special cases of one computation, with every setting a
variable read at run time:

    x₀ = clip(x + σ n + s · Π_ε(η)),   n ~ N(0, I), η the PGD random start
    x_{k+1} = clip(x + Π_ε(clip(x_k + step(∇, α) − x)))  (or, with p = 0,
              clip(x_k + step(∇, α)) unprojected), k < K

    clean:     σ = 0, s = 0, K = 0, no range (clip to ±∞)
    noise:     σ = σ, s = 0, K = 0
    FGSM:      σ = 0, s = 0, K = 1, α = ε, p = 0
    PGD:       σ = 0, s = random_start, K = steps, α = step_size, p = 1

PGD with R restarts runs the K steps from each of R starts and keeps, per
example, the restart of the largest (signed) loss, as ``PGD`` does; a graph
built for up to R_max restarts (the most of its rows) draws R_max starts per
batch, skips restarts ≥ R by a ``cond`` and rewinds the start generator to
where R draws leave it, so a row of R restarts still draws, batch after batch,
what a fresh ``PGD`` draws.

In inference (``evaluate``, ``predict``) the step also takes the model's outputs
at the row's point from the loop: K + 1 forward passes, the last without its
backward pass, so the model's forward pass is traced and optimised once, not
twice (``perturb_and_predict``).

Every row computes exactly what its own object computes (the same operations
in the same order; the zero terms add exact zeros), and draws what a fresh
object with its seed draws: the noise and the random starts come from two
generators, each reset to the row's seed before the row. Only the norm, the
targeting and ``from_logits`` are fixed per graph (the L2 start draws other
random numbers than the L∞ one).
"""

import math

import keras
from keras import ops

from keras_lowrank.robustness._classifier import predicted_classes
from keras_lowrank.robustness.attacks import FGSM, PGD, Attack
from keras_lowrank.robustness.attacks.base import clip_to_ball, random_start, steepest_step
from keras_lowrank.robustness.perturbations import GaussianNoise, Perturbation


class Identity(Perturbation):
    """The clean row: the input as it is (no declared range)."""

    name = "clean"

    def describe(self):
        return "clean", None, 0.0

    def perturb_in_graph(self, model, x, y=None):
        return x


def sweep_group(perturbation):
    """The graph key (norm, targeted, from_logits) of an attack row ``Sweep`` can
    run; "any" for a clean or noise row (it joins any graph); None for the others
    (their own classes and subclasses keep their own steps)."""
    kind = type(perturbation)
    if kind in (Identity, GaussianNoise):
        return "any"
    if kind in (FGSM, PGD):
        return perturbation.norm, perturbation.targeted, perturbation.from_logits
    return None


class Sweep(Perturbation):
    """The parametrised step (see the module's docstring); ``load(row)`` sets it
    to compute ``row`` (an ``Identity``, ``GaussianNoise``, ``FGSM`` or ``PGD`` of
    at most ``max_restarts`` restarts) from the next call of the compiled step on."""

    def __init__(self, norm, targeted=False, from_logits=None, max_restarts=1):
        self.norm, self.targeted, self.from_logits = norm, targeted, from_logits
        self.max_restarts = max_restarts

        def variable(name, value=0.0, dtype="float32"):
            return keras.Variable(value, dtype=dtype, trainable=False, name=name)

        self.sigma = variable("sigma")
        self.eps = variable("eps")
        self.step_size = variable("step_size")
        self.start_scale = variable("start_scale")
        self.project = variable("project")
        self.steps = variable("steps", 0, "int32")
        self.restarts = variable("restarts", 1, "int32")
        self.clip_low = variable("clip_low", -math.inf)
        self.clip_high = variable("clip_high", math.inf)
        self._seed = keras.random.SeedGenerator(0)  # the random starts (PGD's own `_seed`)
        self._noise_seed = keras.random.SeedGenerator(0)
        self.row = Identity()
        self._states = {}

    # The loss and its gradient as the row's attack has them (signs, logits).
    _oracle = Attack._oracle

    @property
    def clip(self):
        """The current row's declared input range, or None."""
        low, high = (float(ops.convert_to_numpy(v)) for v in (self.clip_low, self.clip_high))
        return None if (low, high) == (-math.inf, math.inf) else (low, high)

    def input_range(self):
        """The current row's range as tensors, ±∞ for none (read in the step)."""
        return self.clip_low, self.clip_high

    def _fresh_state(self, seed):
        """The initial state of ``SeedGenerator(seed)``; for ``seed=None`` one random
        state per sweep (every σ and ε still sees the same draws)."""
        if seed not in self._states:
            self._states[seed] = ops.convert_to_numpy(keras.random.SeedGenerator(seed).state)
        return self._states[seed]

    def load(self, row):
        kind = type(row)
        is_attack = kind in (FGSM, PGD)
        clip = row.clip if kind is not Identity else None
        low, high = (-math.inf, math.inf) if clip is None else clip
        values = {
            "sigma": row.sigma if kind is GaussianNoise else 0.0,
            "eps": row.eps if is_attack else 0.0,
            "step_size": row.eps if kind is FGSM else row.step_size if kind is PGD else 0.0,
            "start_scale": float(kind is PGD and row.random_start),
            "project": float(kind is PGD),
            "clip_low": low, "clip_high": high,
        }
        for name, value in values.items():
            getattr(self, name).assign(float(value))
        self.steps.assign(row.steps if kind is PGD else int(kind is FGSM))
        restarts = row.restarts if kind is PGD else 1
        if restarts > self.max_restarts:
            raise ValueError(f"{row!r} has {restarts} restarts; this step was built for at most "
                             f"{self.max_restarts}.")
        self.restarts.assign(restarts)
        self._seed.state.assign(self._fresh_state(row.seed if kind is PGD else 0))
        self._noise_seed.state.assign(self._fresh_state(row.seed if kind is GaussianNoise else 0))
        self.row = row

    def perturb_in_graph(self, model, x, y=None):
        return self.perturb_and_predict(model, x, y)[0]

    def perturb_and_predict(self, model, x, y=None, num_classes=None):
        """(the row's perturbed ``x``, ``model``'s outputs there in inference mode as
        float32, or None without ``num_classes``). With ``num_classes`` the outputs
        come from the loop itself: it runs K + 1 forward passes and skips the last
        one's backward pass (a ``cond``), instead of K steps and a forward pass of
        its own — so a report's step traces and optimises the model's forward pass
        once less (docs/benchmarks.md). Those outputs record no ``add_loss`` (no
        attack's forward pass does): a report reads only the accuracy."""
        oracle = self._oracle(model)
        y = predicted_classes(model, x) if y is None else ops.cast(y, "int32")
        fused = num_classes is not None

        def clip(value):
            return ops.clip(value, self.clip_low, self.clip_high)

        noisy = x + self.sigma * keras.random.normal(ops.shape(x), seed=self._noise_seed)
        before = ops.copy(self._seed.state.value) if self.max_restarts > 1 else None
        starts = [random_start(x, self.eps, self.norm, self._seed)]  # PGD's, ε a tensor
        if self.max_restarts > 1:
            per_start = self._seed.state.value - before  # the state's advance per start
            starts += [random_start(x, self.eps, self.norm, self._seed)
                       for _ in range(self.max_restarts - 1)]
            # as if only this row's restarts had drawn (the next batch draws what PGD's does)
            self._seed.state.assign(before + per_start * ops.cast(self.restarts, per_start.dtype))

        def moved(adv, grad):
            stepped = clip(adv + steepest_step(grad, self.step_size, self.norm))
            projected = clip(x + clip_to_ball(stepped - x, self.eps, self.norm))
            return ops.where(self.project > 0, projected, stepped)

        def step(_, adv):
            return moved(adv, oracle.grad(adv, y))

        def fused_step(k, state):
            adv = state[0]
            stepping = ops.less(k, self.steps)  # else the K + 1-th pass: outputs only
            outputs, grad = oracle.outputs_and_grad(adv, y, stepping)
            # The model's outputs (its softmax of a logits view) and the loss, as
            # float32 (exact from lower precisions): both at the result.
            return (ops.where(stepping, moved(adv, grad), adv),
                    ops.cast(oracle.model_outputs(outputs), "float32"),
                    ops.cast(oracle.loss_fn(y, outputs), "float32"))

        def attack(start):
            """(the point after the row's steps from ``start``, then — fused — the
            model's outputs and the loss there)."""
            start = clip(noisy + self.start_scale * clip_to_ball(start, self.eps, self.norm))
            if not fused:
                adv = ops.fori_loop(0, self.steps, step, start)
                return (adv, ops.cast(oracle.loss(adv, y), "float32")) if self.max_restarts > 1 else (adv,)
            batch = ops.shape(x)[0]
            state = (start, ops.zeros((batch, num_classes), "float32"), ops.zeros((batch,), "float32"))
            return ops.fori_loop(0, self.steps + 1, fused_step, state)

        best = attack(starts[0])
        for restart, start in enumerate(starts[1:], 1):  # keep per example the larger loss
            def better(start=start, best=best):
                found = attack(start)
                wins = ops.greater(found[-1], best[-1])
                return tuple(ops.where(ops.reshape(wins, (-1,) + (1,) * (len(new.shape) - 1)), new, old)
                             for new, old in zip(found, best))

            best = ops.cond(ops.less(restart, self.restarts), better, lambda best=best: best)
        return best[0], best[1] if fused else None

    def get_config(self):
        return {"norm": self.norm, "targeted": self.targeted, "from_logits": self.from_logits,
                "max_restarts": self.max_restarts}

    def __repr__(self):
        return repr(self.row)
