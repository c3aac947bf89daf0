"""DLRT: the rank-adaptive dynamical low-rank integrator as a Keras optimizer wrapper.

keras_lowrank/methods.md §2 (Schotthöfer et al. 2025, augmented BUG). Wrap any Keras optimizer,
compile, fit — the wrapper recognises the factors of ``DynamicLowRankDense`` /
``DynamicLowRankConv2D`` layers among the trainable variables and runs, in
cycles of ``steps_per_cycle`` training steps, inside the compiled train step:

1. augment (first step of a cycle): r₁ = min(r_max, 2r),
   U₁ = orth([U_r, −∇_U L]), V₁ = orth([V_r, −∇_V L]), S ← (U₁ᵀU) S (VᵀV₁);
2. Galerkin steps: the wrapped optimizer moves S (in the fixed bases), biases
   and every other variable; the gradients of U and V are dropped;
3. truncate (after the last step of a cycle): SVD of S, keep the fewest singular
   values with ‖d[r:]‖ < tol·‖d‖ (tol, min_rank from each layer).

Every other variable of the model takes an ordinary step on every batch,
including the augment batch (the authors' code skips it; a wasted batch buys
nothing). Where S changes basis (augment, truncate), the wrapped optimizer's
slots of S are carried into the new basis as the authors' code does (first
moments like S, second moments through their square roots; see
``factorization.carry_slot``). Resetting them instead, as keras_lowrank/methods.md §2 allows,
is wrong for Keras optimizers: their bias correction counts the global step,
so zeroed Adam moments make the next steps of S 3–6× the learning rate in
sign-like jumps. (On MNIST-1D the two give the same accuracy, 61.8 vs 61.5 %
over 3 seeds; carried moments keep higher ranks at the same tol.) Unlike the authors'
code, biases of the low-rank layers train (keras_lowrank/methods.md §2, "bug to avoid").

Non-finite gradients: the whole step is discarded (no variable changes), counted
in ``skipped_steps`` — a NaN batch never corrupts the factors or the rank. Under
``tf.distribute`` the gradients of U and V are all-reduced before the basis
update and the replicas agree on finiteness (tested with MirroredStrategy).

Why an optimizer wrapper (like ``keras.optimizers.LossScaleOptimizer``): it is
the one place of Keras' compiled train step that sees gradients and may assign
trainable variables on both backends, so Sequential, functional and subclassed
models, ``fit``, ``BackupAndRestore`` and saving all work unchanged; the user
changes one line (``optimizer=DLRT(keras.optimizers.Adam())``).
"""

import warnings

import keras
from keras import backend, ops

from keras_lowrank._keras_compat import (
    built_trainable_variables,
    no_automatic_dependency_tracking,
    own_optimizer_variables,
    tensorflow_host_callbacks_allowed,
)
from keras_lowrank._low_rank import factorization
from keras_lowrank._low_rank import host_factorization as host
from keras_lowrank._low_rank.host_integrator import integrate_on_host as _integrate_on_host
from keras_lowrank._low_rank.optimizer_slots import optimizer_slots, slot_kind
from keras_lowrank._validation import check_int
from keras_lowrank._warning import LowRankWarning
from keras_lowrank.layers.dynamic_low_rank import FACTOR_OWNER, FACTOR_ROLE

__all__ = ["DLRT"]


def low_rank_groups(variables):
    """[(layer, index_U, index_S, index_V)] for the dynamic low-rank layers whose
    three factors are all among ``variables``."""
    found = {}
    for index, variable in enumerate(variables):
        owner = getattr(variable, FACTOR_OWNER, None)
        layer = owner() if owner is not None else None
        if layer is None:
            continue
        found.setdefault(id(layer), [layer, {}])[1][getattr(variable, FACTOR_ROLE)] = index
    return [
        (layer, roles["U"], roles["S"], roles["V"])
        for layer, roles in found.values()
        if set(roles) == {"U", "S", "V"}
    ]


# On JAX's CPU backend, models of up to this many dynamic low-rank layers integrate in the
# compiled step (each layer its own ops); larger ones in one host callback. See
# ``_integrator_mode``.
_IN_GRAPH_UP_TO = 16


def _integrator_mode(layer_count):
    """Where DLRT's augment and truncate run (see ``DLRT._step``) for a model of
    ``layer_count`` dynamic low-rank layers: ``"host"`` (NumPy in one host callback: TensorFlow
    on the CPU without XLA, JAX on the CPU beyond ``_IN_GRAPH_UP_TO`` layers), ``"vmap"``
    (alike layers batched: JAX on a GPU/TPU) or None (each layer its own ops: JAX on the CPU
    up to ``_IN_GRAPH_UP_TO`` layers, TensorFlow on a GPU or under ``jit_compile=True``,
    torch).

    Why a layer count on JAX's CPU: a host callback in a compiled program makes JAX run
    that program synchronously and off its C++ dispatch path, so every step of ``fit`` —
    Galerkin steps too, which never call it — waits for the Python side of the loop instead
    of overlapping it: a few milliseconds a step, a third of a small model's step
    (the transformer example, 12 layers: 1.43× its dense model's step with the callback,
    1.07× in the graph, as plain Adam on the factors) and noise in a large one's
    (MobileNetV2, 29 layers: 65.0 vs 65.3 ms). In the graph, each layer's QR / SVD kernels
    lengthen XLA's compile of the first call (MobileNetV2 12.2 → 15.6 s, DenseNet121's 120
    layers 57 → 69 s), so larger models keep the callback (docs/benchmarks.md)."""
    if backend.backend() == "tensorflow":
        return "host" if tensorflow_host_callbacks_allowed() else None
    if backend.backend() != "jax":
        return None
    import jax

    if jax.default_backend() != "cpu":
        return "vmap"
    return None if layer_count <= _IN_GRAPH_UP_TO else "host"


@keras.saving.register_keras_serializable(package="keras_lowrank")
class DLRT(keras.optimizers.Optimizer):
    """Dynamical low-rank training around any Keras optimizer.

    Args:
        inner_optimizer: the optimizer that takes the S (Galerkin) steps and the
            steps of every other variable, e.g. ``keras.optimizers.Adam(1e-3)``.
        steps_per_cycle: k ≥ 2 training steps per augment / Galerkin / truncate
            cycle (default 10, as the authors).

    Keyword Args:
        name: the optimizer's name.

    Models without dynamic low-rank layers train exactly as with
    ``inner_optimizer``. For loss scaling wrap it:
    ``keras.optimizers.LossScaleOptimizer(DLRT(inner))``.

    Examples:
        the factors' bases stay orthonormal through the cycles.

        >>> import numpy as np
        >>> from keras_lowrank import DynamicLowRankDense
        >>> layer = DynamicLowRankDense(8, max_rank=4)
        >>> model = keras.Sequential([keras.Input((8,)), layer])
        >>> model.compile(optimizer=DLRT(keras.optimizers.Adam(1e-2), steps_per_cycle=3), loss="mse")
        >>> x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
        >>> _ = model.fit(x, x, batch_size=8, epochs=3, verbose=0)
        >>> u, _, _ = layer.factors()
        >>> bool(np.allclose(u.T @ u, np.eye(layer.rank), atol=1e-4))
        True

    References:
        - Schotthöfer et al., "Low-rank lottery tickets", NeurIPS 2022: https://arxiv.org/abs/2205.13571
        - Schotthöfer et al., "Dynamical Low-Rank Compression of Neural Networks with Robustness under Adversarial
          Attacks" (augmented BUG integrator), NeurIPS 2025: https://arxiv.org/abs/2505.08022
    """

    def __init__(self, inner_optimizer, steps_per_cycle=10, name=None, **kwargs):
        if kwargs:
            raise ValueError(
                f"DLRT does not take {sorted(kwargs)}; set them on `inner_optimizer`."
            )
        steps_per_cycle = check_int(steps_per_cycle, "steps_per_cycle", minimum=2)
        if inner_optimizer is None:
            raise ValueError("`inner_optimizer` is required: the optimizer of the S steps and of "
                             "every other variable, e.g. DLRT(keras.optimizers.Adam(1e-3)).")
        inner = keras.optimizers.get(inner_optimizer)
        if isinstance(inner, keras.optimizers.LossScaleOptimizer):
            # Keras scales the loss through the model's optimizer (DLRT, which
            # does not), so the inner LossScaleOptimizer would divide unscaled
            # gradients by its scale (2¹⁵): training 2¹⁵× too slowly on TF, a
            # tracer leak on JAX.
            raise ValueError(
                "DLRT cannot wrap a LossScaleOptimizer: wrap them the other way round, "
                "keras.optimizers.LossScaleOptimizer(DLRT(inner_optimizer)).")
        if isinstance(inner, DLRT):
            raise ValueError("`inner_optimizer` is already a DLRT optimizer; wrap the plain one.")
        if getattr(inner, "loss_scale_factor", None) is not None:
            # The same as a LossScaleOptimizer inside: Keras scales the loss through
            # the model's optimizer (DLRT), so the inner one would divide unscaled
            # gradients of S and every other variable by its factor.
            raise ValueError(
                f"DLRT cannot wrap an optimizer with loss_scale_factor={inner.loss_scale_factor!r}: "
                "its S and other steps would be that many times too small. For loss scaling use "
                "keras.optimizers.LossScaleOptimizer(DLRT(inner_optimizer)).")
        if getattr(inner, "gradient_accumulation_steps", None):
            # The inner optimizer would step S every n batches while the integrator
            # augments and truncates on single batches: neither the larger batch
            # accumulation stands for nor DLRT.
            raise ValueError(
                f"DLRT cannot wrap an optimizer with gradient_accumulation_steps="
                f"{inner.gradient_accumulation_steps}: its augment and truncate steps would see "
                "single batches while S steps every few. Use a larger batch_size instead.")
        if isinstance(inner, keras.optimizers.Ftrl):
            # Surveyed over every Keras optimizer (docs/guides/dlrt_compression.md): Ftrl's
            # per-coordinate `linear` and `accumulator` slots define S through a proximal
            # formula, not a moment that can be carried into a new basis; S diverged to NaN
            # within three epochs on both backends.
            raise ValueError(
                "DLRT cannot wrap Ftrl: its per-coordinate `linear` and `accumulator` slots define S "
                "itself and cannot follow S into each new basis (S became NaN). Use another inner "
                "optimizer, e.g. keras.optimizers.Adagrad (its closest relative) or Adam.")
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner
        self.steps_per_cycle = steps_per_cycle

    # -- variables ------------------------------------------------------------
    @no_automatic_dependency_tracking  # S's slots belong to the inner optimizer
    def build(self, var_list):
        self._groups = low_rank_groups(var_list)
        if not self._groups:  # DLRT would train as its inner optimizer, and say nothing
            warnings.warn(
                "DLRT was given a model without dynamic low-rank layers (trainable U, S, V): it "
                f"trains as its inner {type(self.inner_optimizer).__name__} alone. Convert the model "
                "first (compression.to_low_rank) or build it from DynamicLowRank* layers.",
                stacklevel=2, category=LowRankWarning)
        frozen = {i for _, iu, _, iv in self._groups for i in (iu, iv)}
        self._inner_indices = [i for i in range(len(var_list)) if i not in frozen]
        self.cycle_step = self.add_variable(
            shape=(), dtype="int64", initializer="zeros", aggregation="none", name="cycle_step"
        )
        self.skipped_steps = self.add_variable(
            shape=(), dtype="int64", initializer="zeros", aggregation="none", name="skipped_steps"
        )
        self.inner_optimizer.build([var_list[i] for i in self._inner_indices])
        super().build(var_list)
        self._s_slots = [
            [(slot, slot_kind(slot, var_list[i_s])) for slot in optimizer_slots(self, var_list[i_s])]
            for _, _, i_s, _ in self._groups
        ]

    @property
    def variables(self):
        return own_optimizer_variables(self) + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    # -- the step ---------------------------------------------------------------
    def _step(self, grads, trainable_variables, finite):
        """One DLRT step (stateful). Where ``finite`` is false every variable keeps
        its value: the step is computed on zeroed gradients and then discarded by
        selection, so no branch holds a synchronisation point (tf.distribute) or a
        side effect (JAX)."""
        grads = [None if g is None else ops.where(finite, g, ops.zeros_like(g)) for g in grads]
        inner_variables = [trainable_variables[i] for i in self._inner_indices]
        kept = list(inner_variables) + list(self.inner_optimizer.variables)
        snapshot = [ops.copy(v.value) for v in kept]
        factors = [
            (trainable_variables[iu], trainable_variables[i_s], trainable_variables[iv])
            for _, iu, i_s, iv in self._groups
        ]
        before = [tuple(ops.copy(v.value) for v in f) for f in factors]
        self.inner_optimizer.apply([grads[i] for i in self._inner_indices], inner_variables)
        if factors:  # an inner step that made some S non-finite is skipped too, like a NaN batch
            # One reduction, as for the gradients (``_finite``): a stack of per-S tests
            # became a chain of scalar ANDs that XLA copied into every guarded update.
            finite = ops.logical_and(finite, self._finite([s.value for _, s, _ in factors]))
        phase = self.cycle_step % self.steps_per_cycle
        augmenting = ops.equal(phase, 0)
        truncating = ops.equal(phase, self.steps_per_cycle - 1)
        layers = []
        for (layer, iu, _, iv), (u0, s0, v0), (_, s, _), slots in zip(
            self._groups, before, factors, self._s_slots
        ):
            layers.append((layer, grads[iu], grads[iv], u0, s0, ops.where(finite, s.value, s0), v0,
                           [ops.copy(slot.value) for slot, _ in slots],
                           [kind for _, kind in slots]))

        mode = _integrator_mode(len(layers))

        def carried(new, u0, v0, moments, kinds):
            """S changes basis: so do its moments (only in the branches that change
            it, so that Galerkin steps pay nothing)."""
            a, b = factorization.basis_change(u0, v0, new[0], new[2])
            return list(new) + [factorization.carry_slot(m, a, b, k) for m, k in zip(moments, kinds)]

        def by_shape(one):
            """``one(layer, gu, gv, u0, s0, s_now, v0, moments, kinds)`` -> list of
            tensors, for every layer. On a GPU or TPU (JAX) layers alike in shapes and
            settings are batched (``vmap``: one batched QR / SVD per group,
            bit-identical to one layer at a time). Not on TensorFlow, whose
            ``vectorized_map`` (pfor) made DenseNet121's first call 10 % slower and
            8 % larger."""
            groups = {}
            for index, entry in enumerate(layers):
                layer, _, _, u0, _, _, v0, _, kinds = entry
                key = ((tuple(u0.shape), tuple(v0.shape), layer.max_rank, layer.tol,
                        layer.min_rank, tuple(kinds), str(u0.dtype)) if mode == "vmap" else index)
                groups.setdefault(key, []).append(index)
            results = [None] * len(layers)
            for indices in groups.values():
                if len(indices) == 1:
                    results[indices[0]] = one(*layers[indices[0]])
                    continue
                first = layers[indices[0]]
                stacked = tuple(ops.stack([layers[i][k] for i in indices]) for k in range(1, 7))
                stacked_moments = tuple(ops.stack([layers[i][7][m] for i in indices])
                                        for m in range(len(first[7])))
                mapped = ops.vectorized_map(
                    lambda e, first=first: tuple(one(first[0], *e[0], list(e[1]), first[8])),
                    (stacked, stacked_moments))
                for position, i in enumerate(indices):
                    results[i] = [t[position] for t in mapped]
            return tuple(value for result in results for value in result)

        # One cond for every layer (not one per layer): a DenseNet121 has 120
        # low-rank layers, and each cond is a traced function pair of its own.
        def augment_all():
            return by_shape(lambda layer, gu, gv, u0, s0, _, v0, moments, kinds: carried(
                factorization.augment(u0, s0, v0, gu, gv, layer.max_rank), u0, v0, moments, kinds))

        def truncate_all():
            return by_shape(lambda layer, _gu, _gv, u0, _s0, s_now, v0, moments, kinds: carried(
                factorization.truncate(u0, s_now, v0, layer.tol, layer.min_rank),
                u0, v0, moments, kinds))

        def keep_all():
            return tuple(value for _, _, _, u0, _, s_now, v0, moments, _ in layers
                         for value in (u0, s_now, v0, *moments))

        if not layers:
            flat = []
        elif mode == "host":
            flat = list(ops.cond(ops.logical_or(augmenting, truncating),
                                 lambda: _integrate_on_host(layers, augmenting), keep_all))
        else:
            flat = list(ops.cond(augmenting, augment_all,
                                 lambda: ops.cond(truncating, truncate_all, keep_all)))
        updates = []
        for (u, s, v), (u0, s0, v0), slots in zip(factors, before, self._s_slots):
            new, flat = flat[:3 + len(slots)], flat[3 + len(slots):]
            updates += [(u, new[0], u0), (s, new[1], s0), (v, new[2], v0)]
            updates += [(slot, value, None) for (slot, _), value in zip(slots, new[3:])]
        for variable, old in zip(kept, snapshot):
            variable.assign(ops.where(finite, variable.value, old))
        for variable, value, old in updates:
            if old is None:  # a slot: its pre-step value was restored above
                old = variable.value
            variable.assign(ops.where(finite, value, old))
        self.cycle_step.assign_add(ops.cast(finite, "int64"))
        self.skipped_steps.assign_add(1 - ops.cast(finite, "int64"))

    def _finite(self, grads):
        return ops.all(ops.isfinite(ops.concatenate([ops.reshape(g, (-1,)) for g in grads if g is not None])))

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            trainable_variables = built_trainable_variables(self)
        else:
            trainable_variables = list(trainable_variables)
            if not self.built:
                self.build(trainable_variables)
        grads = list(grads)
        finite = self._finite(grads)
        if backend.backend() == "tensorflow":
            import tensorflow as tf

            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                # Under tf.distribute the gradients here are per replica; the
                # wrapped optimizer all-reduces its own, the integrator needs the
                # summed gradients of U and V, and every replica must make the
                # same finiteness decision.
                factor_indices = [i for _, iu, _, iv in self._groups for i in (iu, iv)]
                if factor_indices:
                    summed = context.all_reduce(
                        tf.distribute.ReduceOp.SUM, [grads[i] for i in factor_indices]
                    )
                    for i, g in zip(factor_indices, summed):
                        grads[i] = g
                bad = context.all_reduce(
                    tf.distribute.ReduceOp.SUM, 1.0 - ops.cast(finite, "float32")
                )
                finite = ops.equal(bad, 0.0)
        self._step(grads, trainable_variables, finite)

    # -- between steps --------------------------------------------------------
    def finish_cycle(self):
        """Ends an unfinished cycle now: truncates every layer's augmented bases
        by its ``tol`` (as the cycle's last step would, here in float64 NumPy: see
        ``_low_rank.host_factorization``) and carries S's slots; the next step augments. A
        no-op at a cycle boundary. Eager; on JAX call
        ``model.jax_state_sync()`` first (``fit`` does). Returns True if it
        truncated."""
        if not self.built:
            return False
        step = int(ops.convert_to_numpy(self.cycle_step))
        if step % self.steps_per_cycle == 0:
            return False
        variables = built_trainable_variables(self)
        for (layer, iu, i_s, iv), slots in zip(self._groups, self._s_slots):
            u, s, v = (variables[i] for i in (iu, i_s, iv))
            u0, s0, v0 = (ops.convert_to_numpy(t) for t in (u, s, v))
            new = host.truncate(u0, s0, v0, layer.tol, layer.min_rank)
            a, b = host.basis_change(u0, v0, new[0], new[2])
            for slot, kind in slots:
                host.assign(slot, host.carry_slot(ops.convert_to_numpy(slot), a, b, kind))
            for variable, value in zip((u, s, v), new):
                host.assign(variable, value)
        self.cycle_step.assign(-(-step // self.steps_per_cycle) * self.steps_per_cycle)
        return True

    def finalize_variable_values(self, var_list):
        """Keras calls this when ``fit`` ends: the unfinished cycle is finished
        (``finish_cycle``), so that a trained model holds its truncated ranks, then
        the wrapped optimizer finalises (e.g. ``use_ema``: the moving averages,
        carried through every basis change, replace the variables). Warns about
        layers at ``max_rank``, where augmentation has no room left."""
        if not self.built:
            self.inner_optimizer.finalize_variable_values(var_list)
            return
        self.finish_cycle()
        self.inner_optimizer.finalize_variable_values(
            [built_trainable_variables(self)[i] for i in self._inner_indices])
        self._warn_saturated()

    def _warn_saturated(self):
        full = [layer.name for layer, *_ in self._groups if layer.rank >= layer.max_rank]
        if full:
            warnings.warn(
                f"DLRT: layer(s) {full} ended training at their max_rank: the augmentation "
                "cannot add directions there, so their bases stop adapting (the rank cannot "
                "grow). Give them room (a larger max_rank; to_low_rank's default is twice "
                "the rank) or truncate more (a larger tol).", stacklevel=3, category=LowRankWarning)

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.optimizers.serialize(self.inner_optimizer),
            "steps_per_cycle": self.steps_per_cycle,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["inner_optimizer"] = keras.optimizers.deserialize(
            config["inner_optimizer"], custom_objects=custom_objects
        )
        return cls(**config)
