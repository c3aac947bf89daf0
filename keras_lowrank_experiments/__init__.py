"""keras_lowrank_experiments: the networks, data and run helpers of the CIFAR-10
examples (``cifar``). The demo behind ``keras-lowrank demo`` and the small reference CNN
live in the library (``keras_lowrank._demo``).

Not part of the library (``keras_lowrank``): it is installed with it but needs the
``experiments`` extra (scikit-learn, mnist1d, matplotlib) and may change between
releases without notice.
"""
