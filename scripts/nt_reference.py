#!/usr/bin/env python3
"""Compare `ntk kernel --method infinite` with neural-tangents' kernel_fn (float64).

Usage: python3 scripts/nt_reference.py [path/to/ntk]   (needs neural-tangents and jax)

For each configuration the equivalent neural-tangents stack is
    stax.serial(*[stax.Dense(w, W_std=sqrt(sigma_w2), b_std=sqrt(sigma_b2),
                             parameterization=P), ACT] * depth,
                stax.Dense(1, W_std=sqrt(sigma_w2), b_std=sqrt(sigma_b2), parameterization=P))
with ACT = stax.Relu(), stax.ABRelu(a, b), stax.LeakyRelu(alpha), stax.Erf() or stax.Identity().
Prints the largest relative error off and on the diagonal, for NNGP and NTK.
"""
import json
import os
import subprocess
import sys
import tempfile

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

NTK = sys.argv[1] if len(sys.argv) > 1 else "target/release/ntk"
ACTS = {
    "relu": stax.Relu(),
    "abrelu:-0.5,1.5": stax.ABRelu(-0.5, 1.5),
    "leaky-relu:0.1": stax.LeakyRelu(0.1),
    "erf": stax.Erf(),
    "linear": stax.Identity(),
    "gelu": stax.Gelu(approximate=False),
}
depth, width, sw2, sb2 = 3, 512, 1.7, 0.3
rng = np.random.default_rng(0)
x = rng.standard_normal((24, 8))
x[3] = 2.0 * x[1]  # collinear pair (c = 1 off the diagonal)
worst = {}
with tempfile.TemporaryDirectory() as d:
    xp = os.path.join(d, "x.npy")
    np.save(xp, x)
    for param in ["ntk", "standard"]:
        for name, act in ACTS.items():
            layers = []
            for _ in range(depth):
                layers += [stax.Dense(width, W_std=np.sqrt(sw2), b_std=np.sqrt(sb2),
                                      parameterization=param), act]
            layers += [stax.Dense(1, W_std=np.sqrt(sw2), b_std=np.sqrt(sb2),
                                  parameterization=param)]
            _, _, kernel_fn = stax.serial(*layers)
            ref = kernel_fn(x, None, ("nngp", "ntk"))
            out, nngp_out = os.path.join(d, "ntk.npy"), os.path.join(d, "nngp.npy")
            subprocess.run([NTK, "kernel", "--method", "infinite", "--x1", xp, "--out", out,
                            "--nngp-out", nngp_out, "--activation", name, "--depth", str(depth),
                            "--width", str(width), "--sigma-w2", str(sw2), "--sigma-b2",
                            str(sb2), "--parameterization", param, "--quiet"], check=True)
            for kind, ours, theirs in [("nngp", np.load(nngp_out), np.asarray(ref.nngp)),
                                       ("ntk", np.load(out), np.asarray(ref.ntk))]:
                rel = np.abs(ours - theirs) / np.abs(theirs).max()
                off = rel[~np.eye(len(x), dtype=bool)].max()
                diag = np.diag(rel).max()
                print(f"{param:8s} {name:16s} {kind:4s} off-diagonal {off:.2e} diagonal {diag:.2e}")
                worst[f"{param} {name} {kind}"] = {"off_diagonal": off, "diagonal": diag}
print(json.dumps({"max_off_diagonal": max(v["off_diagonal"] for v in worst.values()),
                  "max_diagonal": max(v["diagonal"] for v in worst.values())}))
