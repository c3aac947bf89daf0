"""PGD-10 robust accuracy on a GPU (JAX backend): ours vs a step-by-step loop, vs the CPU.

cleverhans' tf2 attacks need TensorFlow, which the GPU machines we can borrow do not
have, so on the GPU ours is compared with two JAX programs that compute the same attack
(L∞, no random start, ε = 0.1, step 0.025, cleverhans' order: step, clip to [0, 1],
project to the ε-ball, clip) on the same model and images:

- ``step loop``: cleverhans' ``projected_gradient_descent`` structure — a Python loop
  over the 10 steps, each a compiled input-gradient call followed by the sign, step,
  projection and clipping dispatched op by op (cleverhans runs them eagerly in TF).
- ``one jax.jit``: the whole attack and the accuracy count of a batch in one
  hand-written ``jax.jit`` function (``lax.fori_loop``), no Keras: what a compiled
  attack costs without Keras' ``evaluate`` machinery.
- ``ours``: ``PerturbedModel(model, PGD(...)).evaluate(x, y, batch_size)`` — the attack
  inside Keras' compiled test step; also with ``steps_per_execution=4``.

The same script, with ``--cpu``, times ours on the machine's CPU (JAX_PLATFORMS=cpu, in a
child process). Data: all 1797 real scikit-learn digits (8×8), so the batch sizes are
realistic but the images small; the large CNN gives the GPU more to do. Models: the
demo CNN and CNNs 29× and 250× larger, trained 3 epochs on the digits (what is timed is
the attack, not their accuracy). Compilation is excluded (one warm-up call each);
medians of repeats; every timing ends with the accuracy on the host (a sync).

With ``--steps 100`` (PGD-100, issue 21's GPU figure) the attack's cost dominates the
per-batch dispatch; ``--no-cpu`` skips the CPU row (PGD-100 on the x-large CNN takes
minutes on a CPU).

    KERAS_BACKEND=jax python benchmarks/pgd_gpu.py [--repeats 5] [--batch 256] [--models 3]
        [--steps 10] [--no-cpu]
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lowrank import data  # noqa: E402
from keras_lowrank._demo.models import small_cnn  # noqa: E402
from keras_lowrank.robustness import PGD, PerturbedModel  # noqa: E402

EPS, STEP, STEPS = 0.1, 0.025, 10
CONFIGS = (("demo CNN", (16, 32), 64), ("large CNN", (64, 128), 512), ("x-large CNN", (256, 512), 1024))


def digits():
    x_train, y_train = data.load_digits_arrays("train")
    x_test, y_test = data.load_digits_arrays("test")
    return np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]).astype("int32")


def ours(model, x, y, batch, steps_per_execution=1):
    wrapper = PerturbedModel(model, PGD(EPS, step_size=STEP, steps=STEPS, random_start=False))
    wrapper.compile(metrics=["accuracy"], steps_per_execution=steps_per_execution,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrapper.evaluate(x, y, batch_size=batch, verbose=0)  # compile (both batch shapes)
    start = time.perf_counter()
    accuracy = wrapper.evaluate(x, y, batch_size=batch, verbose=0, return_dict=True)["accuracy"]
    return time.perf_counter() - start, accuracy


def _loss(model):
    def loss(trainable, non_trainable, x, y):
        logits, _ = model.stateless_call(trainable, non_trainable, x, training=False)
        return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
    return loss


def _weights(model):
    return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]


def _step(x, x_adv, grad):
    """cleverhans' PGD step without random start: fgm step, clip, project, clip."""
    x_adv = jnp.clip(x_adv + STEP * jnp.sign(grad), 0.0, 1.0)
    return jnp.clip(x + jnp.clip(x_adv - x, -EPS, EPS), 0.0, 1.0)


def step_loop(model, x, y, batch):
    loss = _loss(model)
    grad = jax.jit(jax.grad(loss, argnums=2))
    predict = jax.jit(lambda t, n, xs: jnp.argmax(model.stateless_call(t, n, xs, training=False)[0], -1))
    trainable, non_trainable = _weights(model)

    def run():
        correct = 0
        for i in range(0, len(x), batch):
            xb, yb = jnp.asarray(x[i:i + batch]), jnp.asarray(y[i:i + batch])
            x_adv = xb
            for _ in range(STEPS):
                x_adv = _step(xb, x_adv, grad(trainable, non_trainable, x_adv, yb))  # op by op
            correct += int(jnp.sum(predict(trainable, non_trainable, x_adv) == yb))
        return correct / len(x)

    run()
    start = time.perf_counter()
    accuracy = run()
    return time.perf_counter() - start, accuracy


def one_jit(model, x, y, batch):
    loss = _loss(model)
    trainable, non_trainable = _weights(model)

    @jax.jit
    def correct_under_attack(trainable, non_trainable, xb, yb):
        body = lambda _, x_adv: _step(xb, x_adv, jax.grad(loss, argnums=2)(trainable, non_trainable, x_adv, yb))
        x_adv = jax.lax.fori_loop(0, STEPS, body, xb)
        logits, _ = model.stateless_call(trainable, non_trainable, x_adv, training=False)
        return jnp.sum(jnp.argmax(logits, -1) == yb)

    batches = [(jax.device_put(x[i:i + batch]), jax.device_put(y[i:i + batch])) for i in range(0, len(x), batch)]

    def run():
        return sum(int(correct_under_attack(trainable, non_trainable, xb, yb)) for xb, yb in batches) / len(x)

    run()
    start = time.perf_counter()
    accuracy = run()  # inputs already on the device
    return time.perf_counter() - start, accuracy


def trained(filters, dim, x, y):
    keras.utils.set_random_seed(0)
    model = small_cnn(feature_dim=dim, filters=filters)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    return model


def measure(variants, repeats):
    runs = [{label: fn() for label, fn in variants} for _ in range(repeats)]  # alternating
    return {label: (float(np.median([r[label][0] for r in runs])), runs[0][label][1]) for label in runs[0]}


def cpu_worker(path, batch, repeats):
    import keras_lowrank  # noqa: F401  (registers the custom objects)

    model = keras.saving.load_model(path)
    x, y = digits()
    print(json.dumps(measure([("ours on CPU", lambda: ours(model, x, y, batch))], repeats)))


def main():
    global STEPS
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--models", type=int, default=len(CONFIGS), help="time the first N models")
    parser.add_argument("--steps", type=int, default=STEPS, help="PGD iterations (default 10)")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU row")
    parser.add_argument("--cpu", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    STEPS = args.steps
    if args.cpu:
        return cpu_worker(args.cpu, args.batch, args.repeats)
    x, y = digits()
    device = jax.devices()[0]
    print(f"JAX {jax.__version__} on {device.platform}: {device.device_kind}; {len(x)} digits, "
          f"PGD-{STEPS} L∞ eps={EPS}, batch {args.batch}, median of {args.repeats}")
    print(f"{'model':<12} {'params':>10}  {'variant':<22} {'seconds':>8} {'images/s':>9} {'÷ ours':>8} {'accuracy':>8}")
    for name, filters, dim in CONFIGS[:args.models]:
        model = trained(filters, dim, x, y)
        b = args.batch
        results = measure([("ours", lambda m=model, b=b: ours(m, x, y, b)),
                           ("ours, 4 steps/call", lambda m=model, b=b: ours(m, x, y, b, 4)),
                           ("step loop", lambda m=model, b=b: step_loop(m, x, y, b)),
                           ("one jax.jit, no Keras", lambda m=model, b=b: one_jit(m, x, y, b))], args.repeats)
        if not args.no_cpu:
            path = f"/tmp/pgd_gpu_{filters[0]}.keras"
            model.save(path)
            env = dict(os.environ, JAX_PLATFORMS="cpu")
            out = subprocess.run([sys.executable, __file__, "--cpu", path, "--batch", str(b), "--repeats",
                                  str(max(1, args.repeats // 2)), "--steps", str(STEPS)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            results.update({k: tuple(v) for k, v in json.loads(out.strip().splitlines()[-1]).items()})
        t_ours = results["ours"][0]
        for label, (seconds, accuracy) in results.items():
            print(f"{name:<12} {model.count_params():>10,}  {label:<22} {seconds:>8.4f} {len(x) / seconds:>9.0f} "
                  f"{seconds / t_ours:>7.2f}× {accuracy:>8.4f}")


if __name__ == "__main__":
    main()
