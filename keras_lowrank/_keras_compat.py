"""Everything keras_lowrank needs from Keras that has no public form, in one place.

Each function says what it relies on; ``tests/test_keras_compat.py`` checks each
against the installed Keras, so a Keras release that changes one fails there,
loudly, instead of somewhere deep in a training run.
"""

import contextlib

import keras
from keras.src.layers.core.einsum_dense import _analyze_einsum_string
from keras.src.ops.operation_utils import compute_conv_output_shape  # noqa: F401
from keras.src.utils.tracking import no_automatic_dependency_tracking  # noqa: F401

# ``compute_conv_output_shape(input_shape, filters, kernel_size, strides, padding,
# data_format, dilation_rate)``: the output shape Keras' own Conv layers compute
# (no public form: ``keras.layers.Conv2D(...).compute_output_shape`` would build a
# throwaway layer). ``no_automatic_dependency_tracking``: the decorator Keras'
# LossScaleOptimizer uses so that an optimizer may hold another's variables
# without tracking them twice.


def einsum_dense_shapes(equation, bias_axes, input_shape, output_shape):
    """(kernel shape, bias shape or None, full output shape) of
    ``keras.layers.EinsumDense(equation, output_shape, bias_axes=bias_axes)`` on
    ``input_shape``, as Keras computes them (``_analyze_einsum_string``; no public
    form: the layer's own ``compute_output_shape`` needs a layer, and its kernel shape
    a built one)."""
    kernel, bias, full = _analyze_einsum_string(equation, bias_axes, input_shape, output_shape)[:3]
    full = list(full)
    left_side, output = equation.replace(" ", "").split("->")
    inputs = left_side.split(",")[0]
    elided = len(input_shape) - len(inputs.replace("...", ""))
    left = inputs.startswith("...")
    if left and elided > 1:
        # Keras 3.15 lists the ellipsis' axes after the batch in reverse order; they
        # are the input's, in its order.
        full[1:elided] = input_shape[1:elided]
    # An output axis the input shares is the input's size (Keras keeps the None
    # that `output_shape` gives it).
    in_sizes = dict(zip(inputs.replace("...", ""), input_shape[elided:] if left else input_shape))
    first = elided if left else 0
    for i, letter in enumerate(output.replace("...", "")):
        if full[first + i] is None and in_sizes.get(letter) is not None:
            full[first + i] = in_sizes[letter]
    return tuple(kernel), None if bias is None else tuple(bias), tuple(full)


def all_sublayers(model):
    """Every layer inside ``model``, at any depth (nested models and layers held
    by custom layers). Relies on ``Layer._flatten_layers`` (no public form:
    ``Model.layers`` lists the direct children only)."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def build_input_shape(layer):
    """The input shape ``layer`` was built with, or None (``_build_shapes_dict``:
    Keras records it for ``build_from_config``; there is no public accessor)."""
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    return next(iter(shapes.values())) if shapes else None


@contextlib.contextmanager
def replaced_attribute(layer, name, value):
    """``layer.<name>`` is ``value`` inside the block. Set with
    ``object.__setattr__`` because Keras' ``Layer.__setattr__`` would track a
    callable or a layer as a new dependency; removed or restored after."""
    had = name in vars(layer)
    old = vars(layer).get(name)
    object.__setattr__(layer, name, value)
    try:
        yield
    finally:
        if had:
            object.__setattr__(layer, name, old)
        else:
            object.__delattr__(layer, name)


def slot_name_prefix(variable):
    """The prefix of the names Keras gives an optimizer's slots of ``variable``
    (``Optimizer.add_variable_from_reference``: ``{path with _}_{slot}``, e.g.
    ``dense_kernel_momentum``). Optimizers expose no public variable → slots map."""
    return variable.path.replace("/", "_") + "_"


def own_optimizer_variables(optimizer):
    """The variables an optimizer wrapper creates itself (its iteration counter, its own
    state), without its inner optimizer's: ``Optimizer._variables``, as Keras'
    ``LossScaleOptimizer.variables`` reads them. Keras has no public accessor."""
    return list(optimizer._variables)


def built_trainable_variables(optimizer):
    """The trainable variables ``optimizer.build`` was given, in that order
    (``Optimizer._trainable_variables``, as Keras' ``LossScaleOptimizer.apply`` reads them
    when ``apply`` gets gradients alone)."""
    return optimizer._trainable_variables


def layer_paths(model):
    """[(path, layer)] for every layer under ``model`` at any depth, depth first, each
    layer once (a shared layer under its first path); a path joins the layers' names
    from ``model`` down with "/" (``Layer._layers``: Keras' tracked sublayers in the
    order they were set, which has no public form)."""
    found, seen = [], {id(model)}

    def visit(layer, prefix):
        for sub in getattr(layer, "_layers", ()):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            path = f"{prefix}/{sub.name}" if prefix else sub.name
            found.append((path, sub))
            visit(sub, path)

    visit(model, "")
    return found


def replace_layer(root, old, new):
    """Puts ``new`` wherever ``old`` sits under ``root``: the attributes and tracked
    lists and dicts of every layer (``Layer._layers`` included, and the Tracker's record
    of what it tracks), and the graph of functional models (``Function._nodes``, ``Node.operation``,
    ``Operation._inbound_nodes`` / ``_outbound_nodes``, ``KerasTensor._keras_history``).
    Keras has no public way to swap a layer inside a built model: ``clone_model``
    rebuilds graph models only, and rebuilds custom layers whole.

    ``new`` must compute what ``old`` computes on the same inputs (built already)."""
    from keras.src.utils.tracking import Tracker

    seen = {id(new)}  # ``new`` may hold ``old`` (a wrapper): its own references stay

    def swap(container):
        # Keras' TrackedList/TrackedDict track what is set (it is tracked already): set
        # past them. TensorFlow's wrappers of a layer's lists and dicts keep their items
        # elsewhere: set through a dict's; in a list's storage, its snapshot renewed (a
        # ListWrapper set through refuses to be saved: TensorFlow's
        # ``trackable.data_structures.ListWrapper._storage`` / ``_last_wrapped_list_snapshot``).
        plain = type(container).__module__.startswith("keras.") or type(container) in (list, dict)
        items = list(container.items()) if isinstance(container, dict) else enumerate(list(container))
        for key, item in items:
            if isinstance(item, (list, dict)) and not isinstance(item, keras.layers.Layer):
                swap(item)  # e.g. a functional model's {depth: [operations]}
            elif item is old:
                if not plain and hasattr(container, "_storage") and isinstance(container, list):
                    container._storage[key] = new
                    container._last_wrapped_list_snapshot = list(container._storage)
                elif not plain:
                    container[key] = new
                elif isinstance(container, dict):
                    dict.__setitem__(container, key, new)
                else:
                    list.__setitem__(container, key, new)

    def visit(obj):
        if id(obj) in seen or not hasattr(obj, "__dict__"):
            return
        seen.add(id(obj))
        children = []
        for key, value in list(vars(obj).items()):
            if value is old:
                object.__setattr__(obj, key, new)
                children.append(new)
            elif isinstance(value, (list, dict)):
                swap(value)
                items = value.values() if isinstance(value, dict) else value
                children.extend(item for item in items if isinstance(item, keras.layers.Layer))
            elif (isinstance(value, tuple) and not hasattr(value, "_fields")
                  and any(item is old for item in value)):
                object.__setattr__(obj, key, tuple(new if item is old else item for item in value))
            elif key == "_nodes" and isinstance(value, set):
                # a functional model's node keys name each node's operation by its id
                # (``keras.src.ops.function.make_node_key``)
                prefix = f"{id(old)}_ib-"
                renamed = {f"{id(new)}_ib-{k[len(prefix):]}" for k in value if k.startswith(prefix)}
                value.difference_update({k for k in value if k.startswith(prefix)})
                value.update(renamed)
            elif isinstance(value, Tracker):
                for ids in value.stored_ids.values():
                    if id(old) in ids:
                        ids.discard(id(old))
                        ids.add(id(new))
            elif isinstance(value, keras.layers.Layer):
                children.append(value)
        for child in children:
            if child is not new:
                visit(child)

    visit(root)
    new._inbound_nodes = list(old._inbound_nodes)
    new._outbound_nodes = list(old._outbound_nodes)
    for node in new._inbound_nodes:
        node.operation = new
        for tensor in node.outputs:
            history = getattr(tensor, "_keras_history", None)
            if history is not None and history.operation is old:
                tensor._keras_history = history._replace(operation=new)
    _retrack_torch_parameters(root)


def _retrack_torch_parameters(root):
    """On torch a Keras layer is a ``torch.nn.Module`` whose parameters are a
    ``ParameterDict`` of its variables, made when it is built
    (``TorchLayer._track_variables``): after a swap, ``root`` and the layers above
    ``new`` would still list ``old``'s (``model.parameters()``, ``state_dict()``,
    ``model.to(device)`` and ``torch.onnx`` would see the old weights). Made again from
    the layers' variables."""
    if keras.backend.backend() != "torch":
        return
    # the torch modules under ``root`` (a Sequential's inner ``_functional`` model among
    # them, which Keras does not list as a layer) and every Keras sublayer
    layers = {id(m): m for m in root.modules() if isinstance(m, keras.layers.Layer)}
    layers.update({id(layer): layer for layer in all_sublayers(root)})
    for layer in layers.values():
        if "_torch_params" in getattr(layer, "_modules", {}):
            layer._track_variables()


def set_untracked(layer, name, value):
    """``layer.<name> = value`` without Keras' tracking (``Layer.__setattr__`` would wrap
    a list in a TrackedList and track any layer in it as a dependency)."""
    object.__setattr__(layer, name, value)


def seed_states(model):
    """The state variables of the seed generators ``model``'s layers draw from
    (``Layer._seed_generators``: Keras lists them among ``model.variables`` but says
    nowhere which they are), and of Keras' global generator (``keras.random`` ops
    with ``seed=None``) where one exists (kept in Keras' global state under
    "global_seed_generator")."""
    from keras.src.backend.common import global_state

    layers = [model] + (all_sublayers(model) if isinstance(model, keras.layers.Layer) else [])
    states = {id(g.state): g.state for layer in layers for g in getattr(layer, "_seed_generators", [])}
    shared = global_state.get_global_attribute("global_seed_generator")
    if shared is not None:
        states[id(shared.state)] = shared.state
    return list(states.values())


def tensorflow_host_callbacks_allowed():
    """Whether a TensorFlow graph being traced now may call back into Python
    (``tf.numpy_function``): not under XLA (``jit_compile=True``, which cannot compile
    the callback) and not where TensorFlow sees a GPU or TPU (whose step Keras compiles
    with XLA by default). TensorFlow's XLA check (``control_flow_util``) has no public
    form; where it is missing, False (the caller keeps to graph ops)."""
    import tensorflow as tf

    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:
        return False
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return False
    return not control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())
