"""Integer codes shared by the Python layer and every backend (one place for each)."""

# Activations (fused into linear_forward, and elementwise activation_forward/backward).
ACT_IDENTITY = 0
ACT_RELU = 1
ACT_LEAKY_RELU = 2
ACT_SIGMOID = 3
ACT_TANH = 4
ACTIVATIONS = {"identity": ACT_IDENTITY, "relu": ACT_RELU, "leaky_relu": ACT_LEAKY_RELU,
               "sigmoid": ACT_SIGMOID, "tanh": ACT_TANH}
