#!/usr/bin/env python3
"""Reference NVFP4 and FP8 (per-tensor) weights produced by NVIDIA ModelOpt itself.

Run:
    pip install torch numpy nvidia-modelopt
    python3 tests/gen/gen_modelopt_fixtures.py tests/fixtures/formats        # CPU
    python3 tests/gen/gen_modelopt_fixtures.py tests/fixtures/formats cuda   # on a GPU

The CPU run writes {nvfp4,fp8}_modelopt.bin, the CUDA run {nvfp4,fp8}_modelopt_cuda.bin.
NVFP4 bytes are the same on both; FP8 bytes are not (see docs/formats.md: on CUDA torch
rounds the f32 scale to bf16 before dividing the bf16 weight by it, on the CPU it does not).

For every test tensor below we build one bf16 nn.Linear, run
modelopt.torch.quantization.quantize() with NVFP4_DEFAULT_CFG or FP8_DEFAULT_CFG
(max calibration, the defaults), then call the exporter's own per-module routine
modelopt.torch.export.unified_export_hf._export_quantized_weight(), which is what
export_hf_checkpoint() runs for every quantized linear.  We store the bf16 input
weight and exactly what the exporter registered on the module:
  NVFP4: weight (uint8 [out, in/2]), weight_scale (F8_E4M3 bits [out, in/16]),
         weight_scale_2 (f32), input_scale (f32)
  FP8:   weight (F8_E4M3 bits [out, in]), weight_scale (f32), input_scale (f32)
Versions used are written into the fixture (record "versions").
"""
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fxio import FixtureWriter  # noqa: E402

warnings.filterwarnings("ignore")

import modelopt  # noqa: E402
import modelopt.torch.quantization as mtq  # noqa: E402
from modelopt.torch.export.unified_export_hf import _export_quantized_weight  # noqa: E402

BF16 = torch.bfloat16


def bf16(x):
    return torch.as_tensor(x, dtype=torch.float32).to(BF16)


def case_gauss(g):
    return bf16(torch.randn(32, 256, generator=g) * 0.02)


def case_heavy(g):
    x = torch.randn(16, 128, generator=g) * torch.exp(torch.randn(16, 128, generator=g))
    x[3, 17] = 60.0
    x[9, 100] = -45.5
    return bf16(x * 0.01)


def case_ties(g):
    # Global amax 2.625 = 6 * 448 * 2^-10, so weight_scale_2 = 2^-10 exactly and every
    # block scale below is an exact E4M3 value (or an exact E4M3 midpoint, to test RNE).
    u = 2.0 ** -10
    t = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.0]
    x = torch.randn(8, 64, generator=g) * 0.001
    # row 0 block 0: holds the global amax; block scale 448 -> unit 448*2^-10 = 0.4375
    blk = [2.625] + [v * 0.4375 for v in t[:7]] + [-v * 0.4375 for v in t[:7]] + [-0.0]
    x[0, 0:16] = torch.tensor(blk)
    # row 0 block 1: block scale exactly 1.0 (amax 6*2^-10), every E2M1 tie, both signs
    blk = [6.0 * u] + [v * u for v in t[:7]] + [-v * u for v in t[:7]] + [-0.1 * u]
    x[0, 16:32] = torch.tensor(blk)
    # row 0 block 2: values just around the ties (one bf16 ulp each side)
    base = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0]) * u
    up = torch.nextafter(bf16(base).float(), torch.tensor(1.0)).to(BF16).float()
    lo = bf16(base).float()
    # bf16 neighbours: step the bf16 bit pattern by one
    bits = bf16(base).view(torch.int16)
    above = (bits + 1).view(BF16).float()
    below = (bits - 1).view(BF16).float()
    x[0, 32:40] = above
    x[0, 40:48] = -below
    del up, lo
    # row 0 block 3: amax/(6 gs) = 1.0625, an E4M3 tie -> RNE to 1.0, amax then saturates to 6
    x[0, 48:64] = torch.tensor([6.375 * u] + [i * 0.4 * u for i in range(15)])
    # row 1 block 0: scale 1.1875 -> tie between 1.125 and 1.25 -> 1.25
    x[1, 0:16] = torch.tensor([7.125 * u] + [i * 0.45 * u for i in range(15)])
    # row 1 block 1: scale 1.5 * 2^-9 (subnormal E4M3 tie between 2^-9 and 2^-8 -> 2^-8)
    s = 1.5 * 2.0 ** -9
    x[1, 16:32] = torch.tensor([6 * s * u] + [-(i % 7) * s * u for i in range(15)])
    # row 1 block 2: scale 2^-11 (below the E4M3 minimum) -> clamped to 2^-9
    s = 2.0 ** -11
    x[1, 32:48] = torch.tensor([6 * s * u] + [(i - 7) * s * u for i in range(15)])
    # row 1 block 3: scale 448 * 1.03 -> still rounds to 448
    x[1, 48:64] = torch.tensor([2.625 * 0.999] + [i * 0.1 for i in range(15)])
    return bf16(x)


def case_zeros(g):
    x = torch.randn(8, 64, generator=g) * 0.5
    x[0, :] = 0.0                 # a whole zero row
    x[1, 16:32] = 0.0             # one zero block
    x[2, 0:16] = -0.0             # a block of negative zeros
    x[3, 32:48] = 0.0
    x[3, 40] = 0.25               # a block with a single non-zero
    x[4, 48:64] = 0.0
    x[4, 50] = -1e-3
    return bf16(x)


def case_tiny(g):
    x = torch.randn(8, 64, generator=g)
    x[0, 0] = 1.0
    mags = torch.logspace(-9, -1, 31)
    k = 0
    for r in range(8):
        for b in range(4):
            if r == 0 and b == 0:
                continue
            blk = torch.randn(16, generator=g)
            blk = blk / blk.abs().max() * mags[k % 31]
            x[r, 16 * b:16 * b + 16] = blk
            k += 1
    x[0, 1:16] = x[0, 1:16] * 0.01
    return bf16(x)


def case_huge(g):
    x = torch.randn(4, 32, generator=g)
    x[0, :] *= 1e37
    x[0, 0] = 3.3e38
    x[1, :] *= 1e30
    x[2, :16] *= 1e20
    x[3, :] *= 1.0
    return bf16(x)


def case_denorm(g):
    # bf16 subnormals and a tiny global amax: weight_scale_2 itself is an f32 subnormal
    x = torch.randn(2, 32, generator=g) * 1e-39
    x[0, 0] = 2e-38
    return bf16(x)


def case_gscale(g):
    # amax 0.765625 is one of the bf16 values for which amax / 2688 (and / 448) in f32 differs
    # from amax * f32(1 / 2688): torch on CUDA divides by a Python scalar by multiplying with
    # its reciprocal, so the exported global scales differ between a CPU and a GPU export.
    x = torch.randn(16, 64, generator=g) * 0.2
    x = x.clamp(-0.7, 0.7)
    x[2, 5] = -0.765625
    return bf16(x)


CASES = [("gauss", case_gauss), ("gscale", case_gscale), ("heavy", case_heavy), ("ties", case_ties),
         ("zeros", case_zeros), ("tiny", case_tiny), ("huge", case_huge),
         ("denorm", case_denorm)]


class One(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.lin = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=BF16)
        with torch.no_grad():
            self.lin.weight.copy_(w)

    def forward(self, x):
        return self.lin(x)


def export_one(w, cfg, g, device):
    model = One(w).to(device)
    acts = [bf16(torch.randn(4, w.shape[1], generator=g) * (i + 1)).to(device) for i in range(3)]

    def loop(m):
        for a in acts:
            m(a)

    mtq.quantize(model, cfg, loop)
    lin = model.lin
    _export_quantized_weight(lin, BF16)
    lin.act_amax = max(a.float().abs().max().item() for a in acts)
    return lin


def u16(t):
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


def main(outdir, device):
    os.makedirs(outdir, exist_ok=True)
    nv, f8 = FixtureWriter(), FixtureWriter()
    ver = f"torch {torch.__version__}; nvidia-modelopt {modelopt.__version__}; device {device}"
    if device == "cuda":
        ver += " " + torch.cuda.get_device_name(0)
    vers = np.frombuffer(ver.encode(), dtype=np.uint8)
    nv.add("versions", vers)
    f8.add("versions", vers)
    for name, fn in CASES:
        g = torch.Generator().manual_seed(1234 + len(name))
        w = fn(g)
        assert torch.isfinite(w.float()).all(), name
        lin = export_one(w, mtq.NVFP4_DEFAULT_CFG, torch.Generator().manual_seed(7), device)
        nv.add(f"{name}.w_bf16", u16(w))
        nv.add(f"{name}.weight", lin.weight.detach().cpu().contiguous().view(torch.uint8).numpy())
        nv.add(f"{name}.weight_scale", lin.weight_scale.detach().cpu().contiguous().view(torch.uint8).numpy())
        nv.add(f"{name}.weight_scale_2", np.array([lin.weight_scale_2.item()], dtype=np.float32))
        nv.add(f"{name}.input_scale", np.array([lin.input_scale.item()], dtype=np.float32))
        nv.add(f"{name}.act_amax", np.array([lin.act_amax], dtype=np.float32))
        lin = export_one(w, mtq.FP8_DEFAULT_CFG, torch.Generator().manual_seed(7), device)
        f8.add(f"{name}.w_bf16", u16(w))
        f8.add(f"{name}.weight", lin.weight.detach().cpu().contiguous().view(torch.uint8).numpy())
        f8.add(f"{name}.weight_scale", np.array([lin.weight_scale.item()], dtype=np.float32))
        f8.add(f"{name}.input_scale", np.array([lin.input_scale.item()], dtype=np.float32))
        f8.add(f"{name}.act_amax", np.array([lin.act_amax], dtype=np.float32))
        print(name, tuple(w.shape), "ok")
    sfx = "_cuda" if device == "cuda" else ""
    nv.save(os.path.join(outdir, f"nvfp4_modelopt{sfx}.bin"))
    f8.save(os.path.join(outdir, f"fp8_modelopt{sfx}.bin"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/formats",
         sys.argv[2] if len(sys.argv) > 2 else "cpu")
