"""DLRT training and robust evaluation under tf.distribute.MultiWorkerMirroredStrategy:
one of two worker processes on localhost (``TF_CONFIG``), or the one-device reference.

    python multi_worker.py worker INDEX PORT0 PORT1 OUT   # one worker of the cluster
    python multi_worker.py single OUT                     # the same work on one device

Each run writes OUT/<role>.npz: the trained weights, the layers' ranks, and the clean
and robust (PGD-3, no random start) test accuracies of the trained model evaluated by
the cluster (worker) or by one device (single), then by this process alone on the same
weights; the single run also writes the float32 yardstick (see ``mirrored_dlrt.py``):
the largest weight distance between one-device runs that differ only in the order of
each batch's sums.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
role = sys.argv[1]
if role == "worker":
    index, port0, port1, out = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{port0}", f"localhost:{port1}"]},
        "task": {"type": "worker", "index": index}})
    name = f"worker{index}"
else:
    out, name = sys.argv[2], "single"

import tensorflow as tf  # noqa: E402


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """Works around two Keras 3 bugs with more than one worker (keras-team/keras#20585):
    ``fit``/``evaluate`` reduce the first (x, y, sample_weight) batch, a tuple, which
    this strategy's ``reduce`` cannot take whole; and they reduce each step's scalar
    logs with ``axis=0``, which a scalar does not have. Reduce leaf by leaf, scalars
    without an axis (the mean over replicas either way)."""

    def reduce(self, reduce_op, value, axis):
        def one(v):
            if v is None:
                return None
            local = self.experimental_local_results(v)[0]
            return super(MultiWorkerMirroredStrategy, self).reduce(
                reduce_op, v, None if local.shape.rank == 0 else axis)
        return tf.nest.map_structure(one, value)


if role == "worker":
    # Under load (a busy 2-core CI machine) a worker can miss the coordination
    # service's default 10 s heartbeat window and the cluster aborts ("heartbeat
    # timeout"): configure the service the strategy would configure, with timeouts
    # that hold under load. No public API sets them (TensorFlow's own strategy
    # calls this context method; it skips its call when a service is configured).
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    context.context().configure_coordination_service(
        service_type="standalone", service_leader="/job:worker/replica:0/task:0",
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=2)],
        heartbeat_timeout_in_ms=300_000, cluster_register_timeout_in_ms=300_000,
        shutdown_barrier_timeout_in_ms=300_000)

# The strategy must exist before any other TensorFlow work (it sets up the
# collective runtime); the one-device run uses the default strategy.
strategy = (MultiWorkerMirroredStrategy() if role == "worker" else tf.distribute.get_strategy())

import numpy as np  # noqa: E402

from dlrt_case import accuracies, build, ranks, rounding, train, x, y  # noqa: E402

with strategy.scope():
    model = train(x, y, 3)
    clean, robust = accuracies(model)
# The same weights evaluated by this process alone (the default strategy): the
# cluster's evaluation must give the same accuracies.
local = build()
local.set_weights(model.get_weights())
local_clean, local_robust = accuracies(local)
record = {"replicas": np.array(strategy.num_replicas_in_sync),
          "accuracies": np.array([clean, robust, local_clean, local_robust]),
          "ranks": np.array(ranks(model))}
record.update({f"w{i}": w for i, w in enumerate(model.get_weights())})
if role == "single":
    record["rounding"] = np.array(rounding(model.get_weights(), 3))
np.savez(os.path.join(out, name + ".npz"), **record)
print("done", name)
