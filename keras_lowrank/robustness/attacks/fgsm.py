"""FGSM (Goodfellow et al. 2015), with the semantics of cleverhans 4's
``fast_gradient_method``."""


import keras

from keras_lowrank.robustness.attacks.base import (
    _SYMBOL,
    Attack,
    _check_nonnegative,
    _check_norm,
    steepest_step,
)
from keras_lowrank.robustness.perturbations import number


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

        >>> import numpy as np
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False)])
        >>> model.layers[0].set_weights([np.array([[1.0, -1.0], [0.0, 0.0]])])  # logits (x₀, −x₀)
        >>> x = np.full((1, 2), 0.5, "float32")
        >>> np.round(keras.ops.convert_to_numpy(FGSM(0.1)(model, x, [0])).astype(float), 4).tolist()
        [[0.4, 0.5]]

    References:
        - Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015:
          https://arxiv.org/abs/1412.6572
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
