"""Runs any cleverhans 4 tf2 attack inside our evaluation (TensorFlow only).

    from cleverhans.tf2.attacks.carlini_wagner_l2 import carlini_wagner_l2
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
    attack = CleverhansAttack(projected_gradient_descent, eps=0.1, eps_iter=0.01,
                              nb_iter=20, norm=np.inf, clip_min=0.0, clip_max=1.0)
    PerturbedModel(model, attack).evaluate(test)   # or attack(model, x, y)

The attack function is called as ``fn(model_fn, x, y=y, **kwargs)`` with a
``model_fn`` that runs the model in inference mode without recording losses and
returns logits (those before a final softmax), as cleverhans expects.
cleverhans' ``sanity_checks`` (asserts evaluated in Python) cannot run inside a
compiled step, so they are off unless passed explicitly.

Saved with a ``PerturbedModel`` as the attack function's module and name; only
functions of the ``cleverhans`` package are imported back when loading.
"""

import importlib
import math

import keras

from keras_lowrank.robustness._gradients import forward_without_side_effects
from keras_lowrank.robustness.perturbations import Perturbation


@keras.saving.register_keras_serializable(package="keras_lowrank")
class CleverhansAttack(Perturbation):
    """Adapter: a cleverhans tf2 attack function and its keyword arguments
    (TensorFlow backend only; see the module docstring).

    Args:
        attack_fn: a function of ``cleverhans.tf2.attacks``.
        name: the name in reports (default: the function's name).

    Keyword Args:
        **kwargs: the attack function's keyword arguments (``eps``, ``norm``,
            ``clip_min``, ``clip_max``, …).

    Examples:

        >>> import numpy as np
        >>> if keras.backend.backend() == "tensorflow":
        ...     from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
        ...     attack = CleverhansAttack(fast_gradient_method, eps=0.1, norm=np.inf, clip_min=0.0, clip_max=1.0)
        ...     assert attack.name == "fast_gradient_method" and attack.clip is None
    """

    def __init__(self, attack_fn, name=None, **kwargs):
        if keras.backend.backend() != "tensorflow":
            raise ValueError("CleverhansAttack needs the TensorFlow backend (cleverhans tf2).")
        if not callable(attack_fn):
            raise ValueError(f"`attack_fn` must be a cleverhans tf2 attack function, "
                             f"got {attack_fn!r}.")
        self.attack_fn = attack_fn
        self.kwargs = dict(kwargs)
        self.kwargs.setdefault("sanity_checks", False)
        self.name = name or attack_fn.__name__

    def get_config(self):
        return {"attack_fn": f"{self.attack_fn.__module__}.{self.attack_fn.__name__}",
                "name": self.name, **self.kwargs}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        module, _, name = config.pop("attack_fn").rpartition(".")
        if module.split(".")[0] != "cleverhans":
            raise ValueError(f"CleverhansAttack loads only functions of the cleverhans package, "
                             f"got attack_fn={module}.{name!r}.")
        return cls(getattr(importlib.import_module(module), name), **config)

    def input_range(self):
        """cleverhans' ``clip_min``/``clip_max`` (it clips to them), else none."""
        low, high = self.kwargs.get("clip_min"), self.kwargs.get("clip_max")
        return (-math.inf, math.inf) if low is None or high is None else (float(low), float(high))

    def perturb_in_graph(self, model, x, y=None):
        # cleverhans' model_fn returns logits: a softmax output's are taken before it.
        model_fn = lambda inputs: forward_without_side_effects(model, inputs, logits=True)  # noqa: E731
        return self.attack_fn(model_fn, x, y=y, **self.kwargs)

    def __call__(self, model, x, y=None):
        import tensorflow as tf

        return self.perturb_in_graph(model, tf.convert_to_tensor(x, tf.float32), y)

    def __repr__(self):
        return f"CleverhansAttack({self.name})"
