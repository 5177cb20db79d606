"""CPU time the same interleaved NumPy + fastreg work costs with fr.set_blas_interop "off" / "auto".

    python benchmarks/interop_cpu_time.py off; python benchmarks/interop_cpu_time.py auto

100 iterations of: NumPy matmul 256x784x512, fastreg fused Linear+ReLU, 2 ms of other work (a
training loop's Python and data loading). Prints wall time, the process's CPU time and the CPU time
of its busiest threads (from /proc, Linux). Spinning idle pools show up as CPU time burnt for the
same work, which a busy shared machine does not hide the way it hides wall-clock differences.
"""
import os
import sys
import time

import numpy as np

import fastreg as fr
from fastreg._kernels import matmul as mm


def threads():
    out = {}
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{t}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[t] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def main(mode: str) -> None:
    fr.set_blas_interop(mode)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 784)).astype(np.float32)
    w = rng.standard_normal((512, 784)).astype(np.float32)
    y, y2 = np.empty((256, 512), np.float32), np.empty((256, 512), np.float32)
    for _ in range(3):
        mm.linear_forward(x, w, None, y, "relu", backend="cython")
        np.matmul(x, w.T, out=y2)
    a = threads()
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(100):
        np.matmul(x, w.T, out=y2)
        mm.linear_forward(x, w, None, y, "relu", backend="cython")
        time.sleep(0.002)  # the rest of a training loop (Python work, data loading)
    c1, w1 = time.process_time(), time.perf_counter()
    b = threads()
    per = sorted((b[t] - a.get(t, 0) for t in b), reverse=True)
    print(f"{mode}: wall {w1 - w0:.2f} s, CPU {c1 - c0:.2f} s, busiest threads' CPU "
          f"{[round(v, 2) for v in per[:4]]} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "auto")
