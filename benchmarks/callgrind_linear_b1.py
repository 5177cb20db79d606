"""Instructions per batch-1 ``Linear(784, 512)`` float32 call, at four levels (deterministic).

Run it under callgrind twice and subtract, so import and warm-up cancel out::

    PY=$(python -c 'import sys; print(sys.executable)')
    for mode in backend public forward module; do
      a=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null $PY \\
            benchmarks/callgrind_linear_b1.py $mode 10 2>&1 | awk '/Collected/ {print $4}')
      b=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null $PY \\
            benchmarks/callgrind_linear_b1.py $mode 1010 2>&1 | awk '/Collected/ {print $4}')
      echo "$mode $(( (b - a) / 1000 ))"
    done

(``PYTHONPATH=<tree>`` measures another checkout.) Modes: ``backend`` the resolved kernel
function, ``public`` the checked ``matmul.linear_forward``, ``forward`` ``Linear.forward``,
``module`` a module call ``lin(x)`` (eval mode, the outermost call's copy included). Instruction
counts are not time, but they are the same on a loaded machine, where timings swing ±15%.
"""
import sys

import numpy as np

import fastreg as fr
from fastreg import nn
from fastreg._kernels import _dispatch, matmul

mode, n = sys.argv[1], int(sys.argv[2])
fr.set_num_threads(1)
lin = nn.Linear(784, 512).eval()
x = np.random.default_rng(0).standard_normal((1, 784)).astype(np.float32)
out = np.empty((1, 512), np.float32)
be = _dispatch.kernel("matmul", "linear_forward")
W, b = lin.weight.data, lin.bias.data
fn = {"backend": lambda: be(x, W, b, out, 0, 0.01),
      "public": lambda: matmul.linear_forward(x, W, b, out),
      "forward": lambda: lin.forward(x),
      "module": lambda: lin(x)}[mode]
for _ in range(50):
    fn()
for _ in range(n):
    fn()
