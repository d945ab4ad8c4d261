#!/usr/bin/env python3
"""Time neural-tangents' kernel_fn (jitted, float64) on the `ntk bench --infinite` workload:
ReLU and erf, 10 hidden layers, sigma_w2 = 2, sigma_b2 = 0.1, d = 64, N x N NNGP + NTK.

Usage: nt_bench_infinite.py [N]. XLA uses every core it is given: pin it to compare thread
counts, e.g. `taskset -c 0 python3 scripts/nt_bench_infinite.py` (1 thread) against
`ntk bench --infinite --threads 1`. The ns/entry/layer column is median / (N^2 * 11), the
definition of `ntk bench --infinite`."""
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
x = np.random.default_rng(1).standard_normal((n, 64))
for name, act in [("relu", stax.Relu()), ("erf", stax.Erf())]:
    layers = []
    for _ in range(10):
        layers += [stax.Dense(512, W_std=np.sqrt(2.0), b_std=np.sqrt(0.1)), act]
    layers += [stax.Dense(1, W_std=np.sqrt(2.0), b_std=np.sqrt(0.1))]
    kernel_fn = jax.jit(stax.serial(*layers)[2], static_argnames="get")
    t = time.perf_counter()
    kernel_fn(x, None, get=("nngp", "ntk")).ntk.block_until_ready()
    first = time.perf_counter() - t
    times = []
    for _ in range(5):
        t = time.perf_counter()
        kernel_fn(x, None, get=("nngp", "ntk")).ntk.block_until_ready()
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    print(f"neural-tangents {name:5s} N={n} depth=10 median={med:.3f} s first={first:.3f} s "
          f"{med * 1e9 / (n * n * 11):.2f} ns/entry/layer")
