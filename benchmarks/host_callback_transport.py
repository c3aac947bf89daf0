"""What crossing the host boundary costs DLRT's callback on a CPU, by how its arrays cross.

DLRT integrates a CPU model's low-rank layers in one host callback (``_low_rank.
host_integrator``): per layer the gradients of U and V, U, S before and after the inner
step, V and S's slots go in; U, S, V and the slots come out. This script builds the arrays
of DenseNet121's 120 low-rank layers (``to_low_rank(rank=8)``; random values, their
shapes), and times a compiled function whose callback does no work (it returns the
arrays it is given), four ways:

- ``apart``: every array its own argument and result (DLRT until this script's commit);
- ``flat_in``: the arguments as one flat array per dtype, concatenated in the step and
  split by NumPy in the callback; results apart (DLRT since);
- ``flat_both``: results flat too, sliced apart in the step;
- ``none``: no callback (the same function's copies in the step): the floor.

Medians of 20 calls after the first, and the first call (compile); JAX (``jax.pure_callback``)
or TensorFlow (``tf.numpy_function`` in a ``tf.function``), by KERAS_BACKEND.

    KERAS_BACKEND=jax python benchmarks/host_callback_transport.py
"""

import json
import math
import time
import warnings

import keras
import numpy as np
from keras import ops

from keras_lowrank import compression
from keras_lowrank._host import on_host
from keras_lowrank._low_rank.model import low_rank_layers


def callback_arrays():
    """(inputs, outputs): NumPy arrays shaped as DLRT's callback's on DenseNet121 with Adam."""
    model = keras.applications.DenseNet121(weights=None, input_shape=(32, 32, 3), classes=10,
                                           classifier_activation=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = compression.to_low_rank(model, rank=8)
    rng = np.random.default_rng(0)
    inputs, outputs = [], []
    for layer in low_rank_layers(model):
        u, s, v = (tuple(w.shape) for w in (layer.u, layer.s, layer.v))
        shapes_in = (u, v, u, s, s, v, s, s)  # grads of U, V; U, S, S after the step, V; Adam's 2 slots
        inputs += [rng.normal(size=shape).astype("float32") for shape in shapes_in]
        outputs += [len(inputs) - 8 + k for k in (2, 4, 5, 6, 7)]
    return inputs, outputs


def compiled(function):
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(function)
    import jax

    return jax.jit(function)


def ways(inputs, outputs):
    shapes = [a.shape for a in inputs]
    sizes = [math.prod(shape) for shape in shapes]
    starts = np.cumsum([0, *sizes])
    result_specs = [(shapes[i], "float32") for i in outputs]

    def unpack(flat):
        return [flat[starts[i]:starts[i + 1]].reshape(shapes[i]) for i in range(len(shapes))]

    def pick(arrays):
        return [arrays[i] for i in outputs]

    def apart(*x):
        return on_host(lambda *a: pick(a), list(x), result_specs)

    def flat_in(*x):
        flat = ops.concatenate([ops.reshape(t, (-1,)) for t in x])
        return on_host(lambda f: pick(unpack(f)), [flat], result_specs)

    def flat_both(*x):
        flat = ops.concatenate([ops.reshape(t, (-1,)) for t in x])
        total = sum(sizes[i] for i in outputs)
        (out,) = on_host(lambda f: [np.concatenate([a.ravel() for a in pick(unpack(f))])], [flat],
                         [((total,), "float32")])
        results, start = [], 0
        for i in outputs:
            results.append(ops.reshape(out[start:start + sizes[i]], shapes[i]))
            start += sizes[i]
        return results

    def none(*x):
        return [x[i] * 1.0 for i in outputs]

    return {"apart": apart, "flat_in": flat_in, "flat_both": flat_both, "none": none}


def main():
    inputs, outputs = callback_arrays()
    tensors = [ops.convert_to_tensor(a) for a in inputs]
    report = {"backend": keras.backend.backend(), "arguments": len(inputs), "results": len(outputs)}
    for name, function in ways(inputs, outputs).items():
        step = compiled(function)
        start = time.perf_counter()
        ops.convert_to_numpy(step(*tensors)[-1])
        first = time.perf_counter() - start
        seconds = []
        for _ in range(20):
            start = time.perf_counter()
            ops.convert_to_numpy(step(*tensors)[-1])
            seconds.append(time.perf_counter() - start)
        report[name] = {"first_s": round(first, 2), "median_ms": round(float(np.median(seconds)) * 1e3, 1)}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
