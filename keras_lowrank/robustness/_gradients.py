"""Compiled, backend-specific pieces of the attacks: the model's loss and its
gradient with respect to the input.

Everything else in the attacks is written with ``keras.ops``. Only the input
gradient differs by backend (tf.GradientTape / jax.grad), and so does
compilation (tf.function / jax.jit). On JAX the model's variables are passed as
arguments (``stateless_call``) so a cached compiled attack never sees stale
weights after training.
"""

import keras


def forward_without_side_effects(model, x):
    """model(x) in inference mode that records no losses (``add_loss`` of e.g.
    LowRankProjection or activity regularizers) and changes no state: the attack's
    forward passes, often inside a loop, must not leak into the training step."""
    mapping = [(v, v.value) for v in model.variables]
    with keras.StatelessScope(state_mapping=mapping, collect_losses=False):
        return model(x, training=False)


class _Oracle:
    """``loss(x, y)``: per-example loss of the model in inference mode;
    ``grad(x, y)``: d Σ loss / dx."""

    def __init__(self, loss, grad):
        self.loss = loss
        self.grad = grad


def compile_attack(model, loss_fn, attack_fn):
    """Compiles ``attack_fn(oracle, x, y, noise) -> x_adv`` for ``model``.

    ``loss_fn(y, outputs)`` returns one loss per example. Returns
    ``run(x, y, noise) -> x_adv``, which executes as one graph.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def loss(x, y):
            return loss_fn(y, forward_without_side_effects(model, x))

        def grad(x, y):
            with tf.GradientTape() as tape:
                tape.watch(x)
                total = tf.reduce_sum(loss(x, y))
            # A gradient that does not reach x (e.g. through round) is zero, as on JAX.
            return tape.gradient(total, x,
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)

        oracle = _Oracle(loss, grad)
        return tf.function(lambda x, y, noise: attack_fn(oracle, x, y, noise),
                           reduce_retracing=True)

    if backend == "jax":
        import jax

        def attack_with_state(trainable, non_trainable, x, y, noise):
            def loss(inputs, labels):
                outputs, _ = model.stateless_call(
                    trainable, non_trainable, inputs, training=False
                )
                return loss_fn(labels, outputs)

            grad = jax.grad(lambda inputs, labels: keras.ops.sum(loss(inputs, labels)))
            return attack_fn(_Oracle(loss, grad), x, y, noise)

        jitted = jax.jit(attack_with_state)

        def run(x, y, noise):
            return jitted(
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
                x, y, noise,
            )

        return run

    raise NotImplementedError(
        f"Attacks support the 'tensorflow' and 'jax' backends, not {backend!r}."
    )


def inline_oracle(model, loss_fn):
    """An oracle for use inside a step Keras is already tracing (tf.function, or
    jax.jit under Keras' StatelessScope, where ``model(x)`` reads the traced
    state)."""
    backend = keras.backend.backend()

    def loss(x, y):
        return loss_fn(y, forward_without_side_effects(model, x))

    if backend == "tensorflow":
        import tensorflow as tf

        def grad(x, y):
            with tf.GradientTape() as tape:
                tape.watch(x)
                total = tf.reduce_sum(loss(x, y))
            # A gradient that does not reach x (e.g. through round) is zero, as on JAX.
            return tape.gradient(total, x,
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)

        return _Oracle(loss, grad)
    if backend == "jax":
        import jax

        return _Oracle(loss, jax.grad(lambda x, y: keras.ops.sum(loss(x, y))))
    raise NotImplementedError(
        f"Attacks support the 'tensorflow' and 'jax' backends, not {backend!r}."
    )
