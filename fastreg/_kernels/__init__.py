"""Hot loops. The public functions here validate their arguments and dispatch to a backend
(``_<op>_numba.py`` / ``_<op>_cy.pyx``) through :mod:`fastreg._kernels._dispatch`."""
