"""Compiled, backend-specific pieces of the attacks: the model's loss and its
gradient with respect to the input.

Everything else in the attacks is written with ``keras.ops``. Only the input
gradient differs by backend (tf.GradientTape / jax.grad), and so does
compilation (tf.function / jax.jit).
"""

import keras


def forward_without_side_effects(model, x):
    """model(x) in inference mode that records no losses (``add_loss`` of e.g.
    LowRankProjection or activity regularizers) and changes no state: the attack's
    forward passes, often inside a loop, must not leak into the training step."""
    mapping = [(v, v.value) for v in model.variables]
    with keras.StatelessScope(state_mapping=mapping, collect_losses=False):
        return model(x, training=False)


class Oracle:
    """``loss(x, y)``: per-example loss of the model in inference mode;
    ``grad(x, y)``: d Σ loss / dx. For use inside a step being traced."""

    def __init__(self, model, loss_fn):
        self.model = model
        self.loss_fn = loss_fn
        backend = keras.backend.backend()
        if backend == "jax":
            import jax

            self.grad = jax.grad(lambda x, y: keras.ops.sum(self.loss(x, y)))
        elif backend != "tensorflow":
            raise NotImplementedError(
                f"Attacks support the 'tensorflow' and 'jax' backends, not {backend!r}."
            )

    def loss(self, x, y):
        return self.loss_fn(y, forward_without_side_effects(self.model, x))

    def grad(self, x, y):  # TensorFlow; replaced by jax.grad on JAX
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(self.loss(x, y))
        # A gradient that does not reach x (e.g. through round) is zero, as on JAX.
        return tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def compile_attack(model, loss_fn, attack_fn):
    """Compiles ``attack_fn(oracle, x, y, noise) -> x_adv`` for ``model`` into
    ``run(x, y, noise)``, one graph per batch. On JAX the model's variables are
    arguments, so a cached compiled attack never sees stale weights."""
    oracle = Oracle(model, loss_fn)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda x, y, noise: attack_fn(oracle, x, y, noise),
                           reduce_retracing=True)
    import jax

    def attack_with_state(values, x, y, noise):
        with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
            return attack_fn(oracle, x, y, noise)

    jitted = jax.jit(attack_with_state)
    return lambda x, y, noise: jitted([v.value for v in model.variables], x, y, noise)
