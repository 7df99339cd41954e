"""Reference for nemoq's f32 -> f16 stochastic rounding and the SSM-cache
stream (src/formats/f16_stochastic.c, src/eval/ssm_cache.c), written in numpy
from the rule as FlashInfer states it (include/flashinfer/mamba/conversion.cuh,
cvt_rs_f16_sw; kernel_selective_state_update_stp.cuh for the Philox stream),
but computed differently: the noisy value is truncated as an f32 *value* and
converted with numpy's own f32 -> f16 cast (exact for a value that already
fits f16's 10 mantissa bits), and the range rules are applied by comparing
values, not by assembling bit fields.

Writes tests/fixtures/formats/f16_sr.bin (tests/gen/fxio.py container):
  x       f32 [N]   inputs: random magnitudes over the whole f16 range and
                    beyond, values exactly on f16 grid points and halfway,
                    the subnormal boundary, 65504/65520/65536, +-0, +-inf, NaN
  r       u32 [N]   random words (only bits 12..0 matter; the rest are random
                    to prove they are ignored)
  h       u16 [N]   expected f16 bits
  state   f32 [M]   one SSM state (M not a multiple of 4)
  seed    u32 [2]   the 64-bit Philox seed (low, high), rounds in `rounds`
  rounds  u32 [1]
  state_h u16 [M]   expected f16 bits of the state after stochastic rounding
                    with Philox4x32-rounds(key=seed, ctr=(e & ~3, 0, 0, 0))
                    word e & 3

Run: python3 tests/gen/gen_f16_sr_reference.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from fxio import FixtureWriter  # noqa: E402


def sr_reference(x, r):
    x = np.asarray(x, np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    sign = (bits >> 31).astype(bool)
    mag = bits & 0x7FFFFFFF
    noisy = mag + (r.astype(np.uint64) & 0x1FFF)
    trunc = (noisy & ~np.uint64(0x1FFF)).astype(np.uint32)
    noisy32 = noisy.astype(np.uint32)
    v = trunc.view(np.float32).astype(np.float64)
    out = np.zeros(x.shape, np.uint16)
    with np.errstate(over="ignore", invalid="ignore"):
        is_special = (noisy32 >> 23) == 0xFF       # exponent field all ones after the add
        nan = is_special & ((noisy32 & 0x7FFFFF) != 0)
        inf = (is_special & ~nan) | (~is_special & (v >= 65536.0))
        zero = ~is_special & (v < 2.0 ** -14)
        normal = ~(nan | inf | zero)
        out[normal] = v[normal].astype(np.float16).view(np.uint16)
        # the cast must have been exact: the value already had f16 precision
        assert np.all(out[normal].view(np.float16).astype(np.float64) == v[normal])
    out[inf] = 0x7C00
    out[nan] = 0x7E00
    out[sign] |= 0x8000
    return out


M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF


def philox4x32(ctr, key, rounds):
    """ctr: uint64 array [4, n] of 32-bit words; key: two ints."""
    c = [ctr[i].astype(np.uint64) for i in range(4)]
    k0, k1 = key
    for _ in range(rounds):
        p0 = np.uint64(M0) * c[0]
        p1 = np.uint64(M1) * c[2]
        c = [((p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0)) & np.uint64(MASK),
             p1 & np.uint64(MASK),
             ((p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1)) & np.uint64(MASK),
             p0 & np.uint64(MASK)]
        k0 = (k0 + W0) & MASK
        k1 = (k1 + W1) & MASK
    return np.stack(c).astype(np.uint32)


def main():
    rng = np.random.default_rng(20261201)
    parts = []
    # random magnitudes from 2^-30 to 2^18, both signs
    e = rng.uniform(-30, 18, 6000)
    parts.append((rng.choice([-1.0, 1.0], e.size) * 2.0 ** e).astype(np.float32))
    # state-like values
    parts.append(rng.standard_normal(2000).astype(np.float32) * np.float32(0.05))
    # f16 grid points and halfway points (ties), with low f32 bits varied
    g = rng.integers(0x0400, 0x7BFF, 1000, dtype=np.uint16).view(np.float16).astype(np.float32)
    parts.append(g)
    gb = g.view(np.uint32) | np.uint32(0x1000)           # exactly halfway to the next f16
    parts.append(gb.view(np.float32))
    gc = g.view(np.uint32) | np.uint32(0x1FFF)           # just below the next f16
    parts.append(gc.view(np.float32))
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65519.0, 65520.0, 65535.9,
                        65536.0, -65504.0, 2.0 ** -14, -2.0 ** -14, 2.0 ** -14 * 0.9999,
                        2.0 ** -15, 2.0 ** -24, 1e-30, 1.4e-45, 3.4e38, -3.4e38, 1.0, -1.0],
                       np.float32)
    parts.append(np.repeat(special, 8))
    # the largest finite f32 (exponent 254, mantissa all ones): noise carries into exponent 255
    parts.append(np.repeat(np.array([0x7F7FFFFF], np.uint32).view(np.float32), 8))
    x = np.concatenate(parts).astype(np.float32)
    r = rng.integers(0, 2 ** 32, x.size, dtype=np.uint64).astype(np.uint32)
    # a few words with all 13 low bits set / clear
    r[:64] = (r[:64] & ~np.uint32(0x1FFF)) | np.uint32(0x1FFF)
    r[64:128] = r[64:128] & ~np.uint32(0x1FFF)
    h = sr_reference(x, r)

    m = 1027
    state = (rng.standard_normal(m) * 0.3).astype(np.float32)
    seed = 0x1234567890ABCDEF
    rounds = 5
    e = np.arange(m, dtype=np.uint64)
    base = e & ~np.uint64(3)
    words = philox4x32(np.stack([base & np.uint64(MASK), base >> np.uint64(32),
                                 np.zeros(m, np.uint64), np.zeros(m, np.uint64)]),
                       (seed & MASK, seed >> 32), rounds)
    rs = words[(e & np.uint64(3)).astype(np.int64), np.arange(m)]
    state_h = sr_reference(state, rs)

    fw = FixtureWriter()
    fw.add("x", x)
    fw.add("r", r)
    fw.add("h", h)
    fw.add("state", state)
    fw.add("seed", np.array([seed & MASK, seed >> 32], np.uint32))
    fw.add("rounds", np.array([rounds], np.uint32))
    fw.add("state_h", state_h)
    out = os.path.join(os.path.dirname(__file__), "..", "fixtures", "formats", "f16_sr.bin")
    fw.save(out)
    print(f"wrote {out}: {x.size} inputs, state of {m}")


if __name__ == "__main__":
    main()
