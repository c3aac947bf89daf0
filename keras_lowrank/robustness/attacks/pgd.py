"""PGD (Madry et al. 2018), with the semantics of cleverhans 4's
``projected_gradient_descent``."""


import keras
from keras import ops

from keras_lowrank._validation import check_int
from keras_lowrank.robustness.attacks.base import (
    _SYMBOL,
    Attack,
    _check_nonnegative,
    _check_norm,
    clip_to_ball,
    keep_larger_loss,
    random_start,
    steepest_step,
    unrolls,
)
from keras_lowrank.robustness.perturbations import number


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

        >>> import numpy as np
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
        >>> model.layers[0].set_weights([np.array([[1.0, -1.0], [0.0, 0.0]])])  # logits (x₀, −x₀)
        >>> x = np.full((1, 2), 0.5, "float32")
        >>> adversarial = PGD(0.1, steps=5, random_start=False)(model, x, [0])
        >>> np.round(ops.convert_to_numpy(adversarial).astype(float), 4).tolist()
        [[0.4, 0.5]]

    References:
        - Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018:
          https://arxiv.org/abs/1706.06083
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
