"""The machinery of low-rank training, behind the public layers, ``optimizers.DLRT``,
``callbacks`` and ``compression``: the maths of W = U S Vᵀ at a fixed storage rank
(``factorization``; its float64 NumPy twin for the host, ``host_factorization``), the
wrapped optimizer's slots as factors change basis (``optimizer_slots``), singular value
decompositions of concrete kernels (``svd``), and what several modules ask of a model's
low-rank layers (``model``)."""
