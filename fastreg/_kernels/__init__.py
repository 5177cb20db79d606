"""Hot loops, one package per op family: ``matmul``, ``norm``, ``dropout``, ``optim``,
``elementwise``, ``embedding``.

Inside a family package: ``__init__.py`` holds the public (checked) functions, ``codes.py`` the
constants the backends share, and one file per backend with the same signature per kernel:
``numba.py``, ``cy.pyx`` (+ its C headers), ``cuda.py`` (numba.cuda, for device arrays) and, for
matmul, ``blas.py``. Shared pieces live beside them: ``common/`` (activation codes, the C prelude,
Philox) and ``runtime/`` (thread count, thread pools, CUDA runtime). The public functions dispatch
through :mod:`fastreg._kernels._dispatch`. A backend imports only its family's ``codes.py``,
``common/`` and ``runtime/``.

Callers above this package (``nn``, ``optim``, the losses, ``inference``) check their own inputs
once and then use each family's trusted ``run_*`` entry points; where their arrays live and the
array utilities they need come from the device seam, :mod:`fastreg._kernels.placement`.
"""
