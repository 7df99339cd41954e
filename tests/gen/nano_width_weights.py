"""The Nano-width random checkpoint: every weight a pure function of
(seed, tensor name, element index), so that C (tests/nano_width_gen.c) and
numpy produce the same bits and the test never stores gigabytes.

Value of element i of tensor NAME (all integer arithmetic mod 2^64):
    key = fnv1a64(NAME) ^ seed
    z   = splitmix64_mix(key + (i + 1) * 0x9E3779B97F4A7C15)
  'n' (normal-like, std s, mean m): the four 16-bit fields of z summed
      (Irwin-Hall, exact in integers) minus 131070, times
      float32(s / STD16) in float32, plus float32(m) in float32;
  'u' (uniform on [lo, hi)): u = float32(z >> 40) * 2^-24 (exact), then
      u * (float32(hi) - float32(lo)) + float32(lo), each operation one
      float32 rounding;
then rounded to BF16 (round to nearest, ties to even), as a real BF16
checkpoint holds.  Only exact integer operations and single IEEE float32
operations are used, so any conforming implementation gives the same bits
(C must not contract a*b+c into an FMA).

Checksum of a tensor (to compare implementations): sum over i of
bf16_bits[i] * (2 i + 1) mod 2^64.
"""
import math

import numpy as np

SEED = 0x4E414E4F57494454  # "NANOWIDT"
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
STD16 = math.sqrt(4.0 * (65536.0 ** 2 - 1.0) / 12.0)  # std of a sum of four U{0..65535}


def fnv1a64(name):
    h = 0xCBF29CE484222325
    for b in name.encode("ascii"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def tensor_specs(cfg):
    """(name, shape, dtype, kind, a, b) in checkpoint order; kind 'n': std a,
    mean b; 'u': uniform [a, b).  Mirrors nano_width_specs() in C."""
    H = cfg["hidden_size"]
    V = cfg["vocab_size"]
    pattern = cfg["hybrid_override_pattern"]
    nh, hd, ns, ng = cfg["mamba_num_heads"], cfg["mamba_head_dim"], cfg["ssm_state_size"], cfg["n_groups"]
    inter = nh * hd
    conv_dim = inter + 2 * ng * ns
    proj = inter + conv_dim + nh
    K = cfg["conv_kernel"]
    qd = cfg["num_attention_heads"] * cfg["head_dim"]
    kvd = cfg["num_key_value_heads"] * cfg["head_dim"]
    E, mi, si = cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["moe_shared_expert_intermediate_size"]
    lin = lambda fan_in, gain=1.0: gain / math.sqrt(fan_in)
    s = [("backbone.embeddings.weight", (V, H), "BF16", "n", 1.0, 0.0)]
    for l, kind in enumerate(pattern):
        p = f"backbone.layers.{l}."
        s.append((p + "norm.weight", (H,), "BF16", "n", 0.2, 1.0))
        if kind == "M":
            s += [
                (p + "mixer.A_log", (nh,), "BF16", "u", -0.6931471805599453, 2.4849066497880004),  # log 0.5, log 12
                (p + "mixer.D", (nh,), "BF16", "n", 1.0, 0.0),
                (p + "mixer.conv1d.bias", (conv_dim,), "BF16", "n", 0.2, 0.0),
                (p + "mixer.conv1d.weight", (conv_dim, 1, K), "BF16", "n", 0.5, 0.0),
                # softplus(dt + dt_bias) falls below time_step_min for some heads/tokens
                (p + "mixer.dt_bias", (nh,), "BF16", "u", -7.0, 1.5),
                (p + "mixer.in_proj.weight", (proj, H), "BF16", "n", lin(H), 0.0),
                (p + "mixer.norm.weight", (inter,), "BF16", "n", 0.2, 1.0),
                (p + "mixer.out_proj.weight", (H, inter), "BF16", "n", lin(inter, 0.5), 0.0),
            ]
        elif kind == "*":
            s += [
                (p + "mixer.k_proj.weight", (kvd, H), "BF16", "n", lin(H), 0.0),
                (p + "mixer.o_proj.weight", (H, qd), "BF16", "n", lin(qd, 0.5), 0.0),
                (p + "mixer.q_proj.weight", (qd, H), "BF16", "n", lin(H), 0.0),
                (p + "mixer.v_proj.weight", (kvd, H), "BF16", "n", lin(H), 0.0),
            ]
        elif kind == "E":
            for e in range(E):
                s.append((p + f"mixer.experts.{e}.down_proj.weight", (H, mi), "BF16", "n", lin(mi, 0.5), 0.0))
                s.append((p + f"mixer.experts.{e}.up_proj.weight", (mi, H), "BF16", "n", lin(H), 0.0))
            s += [
                # moves the choice away from the plain top-6 of the sigmoid scores
                (p + "mixer.gate.e_score_correction_bias", (E,), "F32", "n", 0.1, 0.0),
                (p + "mixer.gate.weight", (E, H), "BF16", "n", lin(H), 0.0),
                (p + "mixer.shared_experts.down_proj.weight", (H, si), "BF16", "n", lin(si, 0.5), 0.0),
                (p + "mixer.shared_experts.up_proj.weight", (si, H), "BF16", "n", lin(H), 0.0),
            ]
        else:
            raise ValueError(f"block kind {kind!r} not generated")
    s.append(("backbone.norm_f.weight", (H,), "BF16", "n", 0.2, 1.0))
    s.append(("lm_head.weight", (V, H), "BF16", "n", lin(H, 2.0), 0.0))
    return s


def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * M1
    z = (z ^ (z >> np.uint64(27))) * M2
    return z ^ (z >> np.uint64(31))


def generate_bits(name, numel, kind, a, b, seed=SEED):
    """BF16 bit patterns (uint16) of the tensor, flattened."""
    key = np.uint64(fnv1a64(name) ^ seed)
    with np.errstate(over="ignore"):
        i = np.arange(1, numel + 1, dtype=np.uint64)
        z = _mix(key + i * GOLDEN)
    del i
    if kind == "n":
        m16 = np.uint64(0xFFFF)
        s = ((z & m16) + ((z >> np.uint64(16)) & m16) + ((z >> np.uint64(32)) & m16)
             + (z >> np.uint64(48))).astype(np.int64) - 131070
        v = s.astype(np.float32) * np.float32(a / STD16)
        if b != 0.0:
            v = v + np.float32(b)
    else:
        u = (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)
        v = u * (np.float32(b) - np.float32(a)) + np.float32(a)
    bits = v.view(np.uint32).astype(np.uint64)
    bits = (bits + np.uint64(0x7FFF) + ((bits >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    return bits.astype(np.uint16)


def bf16_to_f32(bits):
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def checksum(bits):
    with np.errstate(over="ignore"):
        i = np.arange(bits.size, dtype=np.uint64)
        return int(np.sum(bits.astype(np.uint64) * (np.uint64(2) * i + np.uint64(1)), dtype=np.uint64))
