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


def direct_sublayers(model):
    """The layers ``model`` holds directly, in the order ``clone_model`` rebuilds
    them (``Layer._flatten_layers(recursive=False)``)."""
    return list(model._flatten_layers(include_self=False, recursive=False))


def is_graph_model(model):
    """Sequential or functional (rebuildable layer by layer with ``clone_model``).
    Keras exports no functional class: it is recognised by its name in the
    model's class hierarchy (``keras.src.models.functional.Functional``)."""
    return isinstance(model, keras.Model) and (
        isinstance(model, keras.Sequential)
        or any(cls.__name__ == "Functional" for cls in type(model).__mro__))


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
