"""Compiled, backend-specific pieces of the attacks: the model's loss and its
gradient with respect to the input.

Everything else in the attacks is written with ``keras.ops``. Only the input
gradient differs by backend (tf.GradientTape / jax.grad / torch.autograd), and so
does compilation (tf.function / jax.jit; on torch the attacks run eagerly, as
Keras' own torch train step does by default) — and, for the element-wise ops of an
attack's loop, their dispatch (``loop_ops``).
"""

import contextlib
import functools
import inspect

import keras

from keras_lowrank._keras_compat import all_sublayers, replaced_attribute, seed_states
from keras_lowrank._tracing import holds_values


def _output_layer(model):
    layer = model.layers[-1] if getattr(model, "layers", None) else None
    while isinstance(layer, keras.Model) and layer.layers:  # a nested model's own last layer
        layer = layer.layers[-1]
    return layer


def blocked_gradient(model):
    """Why ``model`` has no input gradient a white-box attack could follow, or None.
    A layer or model that knows it has none says so in ``no_input_gradient`` (a
    TFLite interpreter, a ``PerturbedModel``'s stopped gradient)."""
    layers = all_sublayers(model) if isinstance(model, keras.layers.Layer) else []
    for layer in [model] + layers:
        reason = getattr(type(layer), "no_input_gradient", None)
        if reason:
            return reason
    return None


def is_symbolic(x):
    """True where ``x`` carries a shape and no values: the torch backend infers a model's
    output shapes (``fit``/``evaluate``'s first build) by calling it on "meta" tensors,
    through which no attack loop or random draw can run."""
    return keras.backend.backend() == "torch" and not holds_values(x)


def ends_in_softmax(model):
    """True if the model's last layer applies a softmax: ``activation="softmax"``
    (Dense, Conv, ``Activation``) or a ``keras.layers.Softmax`` layer."""
    layer = _output_layer(model)
    return (isinstance(layer, keras.layers.Softmax)
            or getattr(layer, "activation", None) is keras.activations.softmax)


@contextlib.contextmanager
def _final_softmax_removed(model):
    """While tracing the attack's forward pass, the last layer's softmax is the
    identity, so the model returns its logits.

    Written by hand: Keras recovers the logits of a softmax output only on
    TensorFlow (``_keras_logits`` on the tensor); elsewhere its cross-entropy takes
    log(clip(p, 1e-7, 1 − 1e-7)), whose gradient is exactly 0 wherever the label's
    probability is clipped — most examples of a confident model, which the attack
    then leaves alone (gradient masking by the loss, not by the model)."""
    layer = _output_layer(model)
    if isinstance(layer, keras.layers.Softmax):
        with replaced_attribute(layer, "call", lambda inputs, mask=None: inputs):
            yield
        return
    with replaced_attribute(layer, "activation", keras.activations.linear):
        yield


def forward_without_side_effects(model, x, logits=False, draw=None):
    """model(x) in inference mode that records no losses (``add_loss`` of e.g.
    LowRankProjection or activity regularizers) and changes no state: the attack's
    forward passes, often inside a loop, must not leak into the training step.
    ``logits=True``: a model ending in a softmax returns the softmax's input.

    A random layer (one drawing from a ``keras.random.SeedGenerator`` in inference,
    a randomised defence) draws the same numbers on every such pass, from the
    generators' current states. ``draw`` (an integer, traced or not) makes it draw
    anew: each generator's state is moved to a stream of its own for that ``draw``
    (the pass number of an expectation over transformation), the same on every pass
    given the same ``draw``."""
    # The scope keeps every assignment to itself, so no pass changes state. Traced
    # (TensorFlow, JAX), the variables' values are handed in explicitly; eager on
    # torch, a read outside the mapping is the variable's own current value, and
    # mapping every variable would cost ~2 % of an attack's iteration.
    eager = keras.backend.backend() == "torch"
    mapping = [] if eager else [(v, v.value) for v in model.variables]
    if draw is not None:
        mapping = _moved_seed_states(model, mapping, draw)
    removed = _final_softmax_removed(model) if logits and ends_in_softmax(model) else contextlib.nullcontext()
    with removed, keras.StatelessScope(state_mapping=mapping, collect_losses=False):
        if eager and _inference_by_default(model):  # the same pass, Keras' fast call path
            return model(x)
        return model(x, training=False)


def _inference_by_default(model):
    """True where ``model(x)`` is ``model(x, training=False)``: the model and every layer
    in it are Keras' own or this library's, each taking no ``training`` or defaulting it
    to None or False, which those layers read as inference (``Lambda`` aside: its
    function decides).

    Eager (torch), the keyword is not free: Keras hands ``training`` to every layer of
    the model as a keyword, and a layer's call with any keyword leaves its fast path
    (its arguments mapped through ``keras.tree``): ~5 % of an APGD iteration on a small
    CNN. Any other layer (one of the user's, keras-hub's, an augmentation layer, whose
    ``training`` defaults to True) keeps the keyword."""
    return all(_infers_without_training(type(layer)) for layer in [model, *all_sublayers(model)])


@functools.cache
def _infers_without_training(cls):
    if not cls.__module__.startswith(("keras.", "keras_lowrank.layers.")) or issubclass(cls, keras.layers.Lambda):
        return False
    training = inspect.signature(cls.call).parameters.get("training")
    return training is None or training.default is None or training.default is False


# Odd, so that distinct draws move a state by distinct amounts modulo 2³² (a seed is
# 32 bits on JAX and torch); large, so that generators seeded s and s + 1 do not meet.
_DRAW_STRIDE = 1_000_003


def _moved_seed_states(model, mapping, draw):
    """``mapping`` with the first word of every seed generator's state (the seed; the
    second counts the draws) moved by (draw + 1) · ``_DRAW_STRIDE``."""
    states = seed_states(model)
    values = {id(v): value for v, value in mapping}
    moved = {id(v) for v in states}
    mapping = [(v, value) for v, value in mapping if id(v) not in moved]
    for state in states:
        value = values.get(id(state), state.value)
        step = (keras.ops.cast(draw, state.dtype) + 1) * _DRAW_STRIDE
        mapping.append((state, value + keras.ops.stack([step, keras.ops.zeros_like(step)])))
    return mapping


class Oracle:
    """``loss(x, y)``: per-example loss of the model in inference mode (on its
    logits if ``logits``: see ``forward_without_side_effects``);
    ``grad(x, y)``: d Σ loss / dx. For use inside a step being traced."""

    def __init__(self, model, loss_fn, logits=False):
        self.model = model
        self.loss_fn = loss_fn
        self.logits = logits
        backend = keras.backend.backend()
        if backend == "jax":
            import jax

            self.grad = jax.grad(lambda x, y: keras.ops.sum(self.loss(x, y)))
        elif backend == "torch":
            self.grad = lambda x, y: _torch_value_and_grad(lambda x: (self.loss(x, y), None), x)[2]
        elif backend != "tensorflow":
            raise NotImplementedError(
                f"Attacks support the 'tensorflow', 'jax' and 'torch' backends, not {backend!r}."
            )

    def loss(self, x, y):
        return self.loss_fn(y, forward_without_side_effects(self.model, x, self.logits))

    def outputs_and_grad(self, x, y, needed):
        """(the forward outputs ``loss`` takes at ``x``, d Σ loss / dx where ``needed``
        — a traced boolean — and zeros where not): one forward pass for both, the
        backward pass only where needed. The gradient is ``grad``'s, computed the
        same way (``jax.grad`` is this pullback of 1)."""
        if keras.backend.backend() == "torch":
            def per_example(x):
                outputs = forward_without_side_effects(self.model, x, self.logits)
                return self.loss_fn(y, outputs), outputs

            if not bool(needed):  # eager: the backward pass is skipped for real
                return per_example(keras.ops.convert_to_tensor(x))[1], keras.ops.zeros_like(x)
            _, outputs, grad = _torch_value_and_grad(per_example, x)
            return outputs, grad
        if keras.backend.backend() == "jax":
            import jax

            def total(x):
                outputs = forward_without_side_effects(self.model, x, self.logits)
                return keras.ops.sum(self.loss_fn(y, outputs)), outputs

            value, pullback, outputs = jax.vjp(total, x, has_aux=True)
            grad = keras.ops.cond(needed, lambda: pullback(keras.ops.ones_like(value))[0],
                                  lambda: keras.ops.zeros_like(x))
            return outputs, grad
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = forward_without_side_effects(self.model, x, self.logits)
            total = tf.reduce_sum(self.loss_fn(y, outputs))
        grad = tf.cond(needed, lambda: tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO),
                       lambda: tf.zeros_like(x))
        return outputs, grad

    def model_outputs(self, outputs):
        """``model(x)``'s outputs from the ``outputs`` the loss takes: the same, or for
        a logits view (a model ending in a softmax) the last layer's softmax of them,
        computed as that layer computes it."""
        if not self.logits:
            return outputs
        layer = _output_layer(self.model)
        if isinstance(layer, keras.layers.Softmax):
            return layer.call(outputs)
        return layer.activation(outputs)

    def grad(self, x, y):  # TensorFlow; replaced by jax.grad on JAX
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(self.loss(x, y))
        # A gradient that does not reach x (e.g. through round) is zero, as on JAX.
        return tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def compile_attack(oracle, attack_fn):
    """Compiles ``attack_fn(oracle, x, y, noise) -> x_adv`` for ``oracle.model``
    into ``run(x, y, noise)``, one graph per batch. On JAX the model's variables
    are arguments, so a cached compiled attack never sees stale weights. No
    AutoGraph (see ``compile_function``)."""
    model = oracle.model
    if keras.backend.backend() == "torch":
        return _eager(lambda x, y, noise: attack_fn(oracle, x, y, noise))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda x, y, noise: attack_fn(oracle, x, y, noise),
                           reduce_retracing=True, autograph=False)
    import jax

    def attack_with_state(values, x, y, noise):
        with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
            return attack_fn(oracle, x, y, noise)

    jitted = jax.jit(attack_with_state)
    return lambda x, y, noise: jitted([v.value for v in model.variables], x, y, noise)


def value_and_grad(fn):
    """``fn(x, *args) -> (per_example_loss, aux)`` to
    ``run(x, *args) -> (per_example_loss, aux, d Σ loss / dx)``, for use inside a
    step being traced (``GradientTape`` on TensorFlow, ``jax.value_and_grad`` on
    JAX). A gradient that does not reach x is zero on both."""
    if keras.backend.backend() == "jax":
        import jax

        def total(x, *args):
            loss, aux = fn(x, *args)
            return keras.ops.sum(loss), (loss, aux)

        grad_fn = jax.value_and_grad(total, has_aux=True)

        def run(x, *args):
            (_, (loss, aux)), grad = grad_fn(x, *args)
            return loss, aux, grad

        return run
    if keras.backend.backend() == "torch":
        return lambda x, *args: _torch_value_and_grad(fn, x, *args)
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(
            f"Attacks support the 'tensorflow', 'jax' and 'torch' backends, not {keras.backend.backend()!r}.")
    import tensorflow as tf

    def run(x, *args):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss, aux = fn(x, *args)
            total = tf.reduce_sum(loss)
        return loss, aux, tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    return run


def compile_function(model, fn):
    """Compiles ``fn(*args)``, which runs ``model``, into one graph (tf.function /
    jax.jit); on JAX the model's variables are arguments, so a cached function never
    sees stale weights. TensorFlow traces without AutoGraph, as Keras' own train and
    test steps do: the attacks' loops are graph loops (``keras.ops``) already, and
    AutoGraph's source conversion was most of an attack's first call (docs/benchmarks.md)."""
    if keras.backend.backend() == "torch":
        return _eager(fn)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True, autograph=False)
    import jax

    def with_state(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
            return fn(*args)

    jitted = jax.jit(with_state)
    return lambda *args: jitted([v.value for v in model.variables], *args)


@contextlib.contextmanager
def without_autograd():
    """torch: no autograd graph is recorded inside (the gradients the attacks take
    enable it for themselves, in ``_torch_value_and_grad``); elsewhere nothing.

    An attack's loop runs eagerly on torch, and every forward pass through a model
    whose weights require gradients records a graph: a value kept from one iteration to
    the next (Square's best margin) would hold every iteration's activations alive:
    memory growing with the queries (docs/development.md)."""
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    with torch.no_grad():
        yield


def _eager(fn):
    """torch: ``fn`` run eagerly, without autograd but where it takes a gradient, with
    its arguments as tensors and its results detached."""
    def run(*args):
        with without_autograd():
            return _detached(fn(*keras.tree.map_structure(keras.ops.convert_to_tensor, args)))

    return run


def _detached(structure):
    return keras.tree.map_structure(lambda t: t.detach() if hasattr(t, "detach") else t, structure)


def _torch_value_and_grad(fn, x, *args):
    """torch: ``fn(x, *args) -> (per_example_loss, aux)`` evaluated with autograd on
    for x alone; returns (loss, aux, d Σ loss / dx), all detached. A gradient that does
    not reach x is zero, as on TensorFlow and JAX."""
    import torch

    x = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
    with torch.enable_grad():
        loss, aux = fn(x, *args)
        (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
    return loss.detach(), _detached(aux), torch.zeros_like(x) if grad is None else grad


class _KerasLoopOps:
    """The element-wise ops an attack's loop body uses, as ``keras.ops`` (traced on
    TensorFlow and JAX: dispatch costs nothing per iteration there)."""

    where = staticmethod(keras.ops.where)
    minimum = staticmethod(keras.ops.minimum)
    maximum = staticmethod(keras.ops.maximum)
    sign = staticmethod(keras.ops.sign)

    @staticmethod
    def hits(z, y):
        """1.0 where argmax z = y (int32 labels), else 0.0."""
        return keras.ops.cast(keras.ops.equal(keras.ops.cast(keras.ops.argmax(z, axis=-1), "int32"), y), "float32")

    @staticmethod
    def to_float(b):
        return keras.ops.cast(b, "float32")


class _TorchLoopOps:
    """The same ops as torch's own functions: on torch the loop runs eagerly and a
    ``keras.ops`` call costs ~15 µs of dispatch against ~2 µs for the torch op it runs;
    APGD's body makes ~16 of them per iteration beside the model's passes. Same
    results to the bit (the same torch kernels run)."""

    def __init__(self):
        import torch

        self.where, self.minimum, self.maximum, self.sign = torch.where, torch.minimum, torch.maximum, torch.sign
        self._torch = torch

    def hits(self, z, y):
        return (self._torch.argmax(z, dim=-1) == y).to(self._torch.float32)

    def to_float(self, b):
        return b.to(self._torch.float32)


def loop_ops():
    """The element-wise ops of an attack's loop body for this backend: ``where``,
    ``minimum``, ``maximum``, ``sign``, ``hits(z, y)`` (1.0 where the prediction is
    ``y``), ``to_float``. ``keras.ops`` on TensorFlow and JAX; torch's functions on
    torch, where the loop runs eagerly and Keras' per-call dispatch would dominate
    the iteration's own work."""
    return _TorchLoopOps() if keras.backend.backend() == "torch" else _KerasLoopOps
