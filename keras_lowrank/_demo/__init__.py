"""``keras-lowrank demo``: the short tour (``quick``: two small CNNs trained here, then the
compress, evaluate and analyze jobs on them) and ``--full`` (``full``: the LR-layer,
DLRT and representation experiments on offline data), with the small reference CNN
(``models``) they, the examples, tests and benchmarks share. Private: its names may
change between releases."""
