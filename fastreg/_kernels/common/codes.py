"""Integer codes shared by the Python layer and every backend (one place for each)."""
import numpy as np

# Activations (fused into linear_forward, and elementwise activation_forward/backward).
ACT_IDENTITY = 0
ACT_RELU = 1
ACT_LEAKY_RELU = 2
ACT_SIGMOID = 3
ACT_TANH = 4
ACTIVATIONS = {"identity": ACT_IDENTITY, "relu": ACT_RELU, "leaky_relu": ACT_LEAKY_RELU,
               "sigmoid": ACT_SIGMOID, "tanh": ACT_TANH}

_ACT_CODES = frozenset(ACTIVATIONS.values())


def activation_code(activation) -> int:
    """The integer code of an activation given by name (case-insensitive) or by code."""
    if isinstance(activation, str):
        code = ACTIVATIONS.get(activation.lower())
        if code is None:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {activation!r}")
        return code
    if isinstance(activation, (int, np.integer)) and not isinstance(activation, bool):
        if int(activation) not in _ACT_CODES:
            raise ValueError(f"activation code must be one of {sorted(_ACT_CODES)}, "
                             f"got {activation!r}")
        return int(activation)
    raise TypeError(f"activation must be a name or an integer code, got {activation!r}")
