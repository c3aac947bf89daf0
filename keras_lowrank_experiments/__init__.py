"""keras_lowrank_experiments: the demo behind ``keras-lowrank demo`` and the reference
models of the examples, tests and benchmarks.

Not part of the library (``keras_lowrank``): it is installed with it but needs the
``experiments`` extra (scikit-learn, mnist1d, matplotlib) and may change between
releases without notice.
"""
