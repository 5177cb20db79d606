"""Codes of the matmul kernels: the activation codes are shared with the other families
(``common/codes.py``)."""
from ..common.codes import (  # noqa: F401  (re-exported)
    ACT_IDENTITY,
    ACT_LEAKY_RELU,
    ACT_RELU,
    ACT_SIGMOID,
    ACT_TANH,
    ACTIVATIONS,
    activation_code,
)
