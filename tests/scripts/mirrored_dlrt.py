"""DLRT training under tf.distribute.MirroredStrategy on two logical CPUs, against
the same training on one device (gradients are all-reduced means, so the steps
must agree). Run as a script: logical devices must exist before TF initialises.
Prints "replicas=<n> max_diff=<d> rounding=<e> ranks_single=<..> ranks_mirrored=<..> ortho=<e>".
"""

import two_cpus  # noqa: F401  (first: backend and devices before TensorFlow starts)
import tensorflow as tf  # noqa: E402

import numpy as np  # noqa: E402

from dlrt_case import build, max_diff, ranks, rounding, train, x, y  # noqa: E402

single = train(x, y, 3)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    mirrored = build()
mirrored.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0)
diff = max_diff(single.get_weights(), mirrored.get_weights())
# The yardstick (dlrt_case.rounding): one-device runs with the examples of each batch
# in other orders; two replicas change only the order of the sums.
yardstick = rounding(single.get_weights(), 3)
ortho = max(float(np.abs(u.T @ u - np.eye(u.shape[1])).max())
            for l in mirrored.layers if hasattr(l, "factors") for u in (l.factors()[0],))
ranks_of = lambda m: ",".join(str(r) for r in ranks(m))  # noqa: E731
print(f"replicas={strategy.num_replicas_in_sync} max_diff={diff:.3g} rounding={yardstick:.3g} "
      f"ranks_single={ranks_of(single)} ranks_mirrored={ranks_of(mirrored)} ortho={ortho:.3g}")
