"""SPSA (Uesato et al. 2018): PGD L∞ on gradient estimates from loss values alone."""


import keras
from keras import ops

from keras_lowrank._validation import check_int
from keras_lowrank.robustness.attacks.base import (
    Attack,
    _check_nonnegative,
    unrolls,
)
from keras_lowrank.robustness.perturbations import number


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

        >>> import numpy as np
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
        >>> model.layers[0].set_weights([np.array([[1.0, -1.0], [0.0, 0.0]])])  # logits (x₀, −x₀)
        >>> x = np.full((1, 2), 0.5, "float32")
        >>> adversarial = SPSA(0.1, steps=8, samples=16, seed=0)(model, x, [0])
        >>> round(float(ops.convert_to_numpy(adversarial)[0, 0]), 4)
        0.4

    References:
        - Uesato et al., "Adversarial Risk and the Dangers of Evaluating Against Weak Attacks", ICML 2018:
          https://arxiv.org/abs/1802.05666
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
