"""Generates tests/fixtures/nano_width/: the reference outputs of a random
NemotronH with Nemotron 3 Nano 30B-A3B's exact widths and routing config
(tests/fixtures/nemotron-3-nano-30b-a3b.config.json) but 3 layers "M*E" and
a 512-token vocabulary.  The weights are NOT stored: they are a function of
a seed (tests/gen/nano_width_weights.py, mirrored bit for bit in C by
tests/nano_width_gen.c, checked through per-tensor checksums).

Reference: transformers' NemotronHForCausalLM built from the config, every
parameter set from the generator (BF16 values, computed in float32), pure
PyTorch Mamba path (use_mamba_kernels false), eager attention, CPU.

Run (numpy + torch + transformers; ~8 GB of memory, a few minutes):
    python3 tests/gen/gen_nano_width.py [OUT_DIR]   (default tests/fixtures/nano_width)
Writes OUT/config.json, OUT/ref.json (sequences, checksums, routing and
calibration statistics, versions), OUT/logits.f32 (full-forward logits of
sequences 0..2, concatenated), OUT/hidden_short.f32 (every hidden state of
sequence 2), OUT/hidden_long_l2.f32 (sequence 3, 200 tokens: the residual
stream after blocks 0 and 1, i.e. hidden_states[2]), OUT/generator_log.txt.
"""
import json
import os
import sys
import time

import numpy as np
import torch
import transformers
from transformers import NemotronHConfig, NemotronHForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nano_width_weights as W  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests/fixtures/nano_width")
os.makedirs(OUT, exist_ok=True)
log_lines = []


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    log_lines.append(s)


torch.set_num_threads(max(1, os.cpu_count() or 1))
t0 = time.time()

# ---- config: Nano's, with 3 layers and a small vocabulary -----------------
with open(os.path.join(ROOT, "tests/fixtures/nemotron-3-nano-30b-a3b.config.json")) as f:
    cfg = json.load(f)
cfg.pop("auto_map", None)  # transformers' own NemotronH, not remote code
cfg.update({
    "hybrid_override_pattern": "M*E",
    "num_hidden_layers": 3,
    "vocab_size": 512,
    "use_mamba_kernels": False,
    "max_position_embeddings": 4096,
    "torch_dtype": "bfloat16",
})
with open(os.path.join(OUT, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2)
    f.write("\n")

hf_cfg = NemotronHConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "torch_dtype", "transformers_version")})
hf_cfg._attn_implementation = "eager"
assert list(hf_cfg.layers_block_type) == ["linear_attention", "full_attention", "moe"], hf_cfg.layers_block_type
log("config:", {k: cfg[k] for k in ("hidden_size", "mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups",
                                     "conv_kernel", "chunk_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                                     "n_routed_experts", "moe_intermediate_size", "num_experts_per_tok", "n_group",
                                     "topk_group", "routed_scaling_factor", "norm_topk_prob",
                                     "moe_shared_expert_intermediate_size", "vocab_size", "hybrid_override_pattern")})

# ---- model with the generated weights --------------------------------------
with torch.device("meta"):
    model = NemotronHForCausalLM(hf_cfg)
model = model.to_empty(device="cpu").to(torch.float32).eval()
params = dict(model.named_parameters())
buffers = dict(model.named_buffers())
filled = set()
specs = W.tensor_specs(cfg)
checksums = {}
nparams = 0
for name, shape, dtype, kind, a, b in specs:
    numel = int(np.prod(shape))
    bits = W.generate_bits(name, numel, kind, a, b)
    checksums[name] = str(W.checksum(bits))
    vals = torch.from_numpy(W.bf16_to_f32(bits).reshape(shape))
    hf = "model." + name[len("backbone."):] if name.startswith("backbone.") else name
    parts = hf.split(".")
    if ".experts." in hf and parts[-2] in ("up_proj", "down_proj"):
        # per-expert checkpoint tensor -> slice of the fused [E, out, in] parameter
        e = int(parts[-3])
        target = ".".join(parts[:-3] + [parts[-2]])
        with torch.no_grad():
            params[target][e].copy_(vals)
        filled.add((target, e))
    else:
        t = params.get(hf)
        if t is None:
            t = buffers[hf]
        assert tuple(t.shape) == tuple(shape), (hf, t.shape, shape)
        with torch.no_grad():
            t.copy_(vals)
        filled.add(hf)
    nparams += numel
# every parameter and buffer must come from the generator
missing = []
for n, p in params.items():
    if n.endswith("experts.up_proj") or n.endswith("experts.down_proj"):
        missing += [f"{n}[{e}]" for e in range(p.shape[0]) if (n, e) not in filled]
    elif n not in filled:
        missing.append(n)
missing += [n for n in buffers if n not in filled]
assert not missing, f"not generated: {missing[:10]}"
log(f"weights: {len(specs)} checkpoint tensors, {nparams/1e9:.3f} G values, generated in {time.time()-t0:.0f} s")

# ---- hooks: calibration statistics -----------------------------------------
stats = {}
cur = {}


def amax_pre(name):
    def hook(mod, args):
        x = args[0]
        cur.setdefault(name, {"amax": 0.0, "rows": 0})
        cur[name]["amax"] = max(cur[name]["amax"], float(x.abs().max()))
        cur[name]["rows"] += int(x.numel() // x.shape[-1])
    return hook


def out_amax(name):
    def hook(mod, args, out):
        cur[name] = max(cur.get(name, 0.0), float(out.abs().max()))
    return hook


def experts_pre(layer):
    def hook(mod, args):
        hs, idx, wts = args[0], args[1], args[2]
        ex = {}
        for e in torch.unique(idx).tolist():
            tok = (idx == e).any(dim=-1).nonzero().squeeze(-1)
            x = hs[tok]
            h = mod.act_fn(torch.nn.functional.linear(x, mod.up_proj[e]))
            ex[str(e)] = {"rows": int(tok.numel()), "up_amax": float(x.abs().max()),
                          "down_amax": float(h.abs().max())}
        cur[f"backbone.layers.{layer}.mixer.experts"] = ex
    return hook


def gate_fwd(layer):
    def hook(mod, args, out):
        logits, wts, idx = out
        scores = logits.sigmoid()
        choice = scores + mod.e_score_correction_bias
        srt = torch.sort(choice, dim=-1, descending=True).values
        k = mod.top_k
        plain = torch.topk(scores, k, dim=-1).indices.sort(dim=-1).values
        chosen = idx.sort(dim=-1).values
        cur[f"backbone.layers.{layer}.mixer.gate"] = {
            "experts": chosen.tolist(),
            # gap between the k-th and (k+1)-th biased score: a tie would make the choice fragile
            "min_margin": float((srt[:, k - 1] - srt[:, k]).min()),
            "tokens_bias_changed_choice": int((plain != chosen).any(dim=-1).sum()),
            "weights_sum": [float(x) for x in wts.sum(dim=-1)],
        }
    return hook


for l, kind in enumerate(cfg["hybrid_override_pattern"]):
    mix = model.model.layers[l].mixer
    p = f"backbone.layers.{l}.mixer."
    if kind == "M":
        mix.in_proj.register_forward_pre_hook(amax_pre(p + "in_proj"))
        mix.out_proj.register_forward_pre_hook(amax_pre(p + "out_proj"))
    elif kind == "*":
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            getattr(mix, n).register_forward_pre_hook(amax_pre(p + n))
        mix.k_proj.register_forward_hook(out_amax(p + "k_amax"))
        mix.v_proj.register_forward_hook(out_amax(p + "v_amax"))
    elif kind == "E":
        mix.shared_experts.up_proj.register_forward_pre_hook(amax_pre(p + "shared_experts.up_proj"))
        mix.shared_experts.down_proj.register_forward_pre_hook(amax_pre(p + "shared_experts.down_proj"))
        mix.experts.register_forward_pre_hook(experts_pre(l))
        mix.gate.register_forward_hook(gate_fwd(l))

# ---- sequences --------------------------------------------------------------
rng = np.random.default_rng(20261201)
lengths = [32, 32, 5, 200]
seqs = [rng.integers(3, cfg["vocab_size"], size=n).tolist() for n in lengths]
logits_all = []
per_seq = []
with torch.no_grad():
    for i, s in enumerate(seqs):
        cur = {}
        t1 = time.time()
        out = model(torch.tensor([s]), output_hidden_states=True, use_cache=False)
        lg = out.logits[0].float().numpy()
        hs = [h[0].float().numpy() for h in out.hidden_states]
        log(f"seq {i} ({len(s)} tokens): {time.time()-t1:.1f} s; logit absmax {np.abs(lg).max():.3f} "
            f"std {lg.std():.3f}; hidden absmax per entry {[round(float(np.abs(h).max()), 2) for h in hs]}; "
            f"rms {[round(float(np.sqrt((h**2).mean())), 3) for h in hs]}")
        if i < 3:
            logits_all.append(lg)
        if i == 2:
            np.stack(hs).astype("<f4").tofile(os.path.join(OUT, "hidden_short.f32"))
            short_hidden_shape = [len(hs), len(s), cfg["hidden_size"]]
        if i == 3:
            hs[2].astype("<f4").tofile(os.path.join(OUT, "hidden_long_l2.f32"))
        g = cur.get("backbone.layers.2.mixer.gate")
        if g:
            used = sorted({e for row in g["experts"] for e in row})
            log(f"  routing: {len(used)} distinct experts, min margin {g['min_margin']:.3g}, "
                f"bias changed the choice for {g['tokens_bias_changed_choice']}/{len(s)} tokens")
        per_seq.append(cur)
np.concatenate(logits_all, axis=0).astype("<f4").tofile(os.path.join(OUT, "logits.f32"))

ref = {
    "seed": str(W.SEED),
    "pattern": cfg["hybrid_override_pattern"],
    "seqs": seqs,
    "logit_seqs": [0, 1, 2],
    "short_seq": 2,
    "short_hidden_shape": short_hidden_shape,
    "long_seq": 3,
    "long_hidden_entry": 2,
    "checksums": checksums,
    "stats": per_seq,
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                 "numpy": np.__version__, "python": sys.version.split()[0]},
    "compute": "CPU float32 from BF16-valued weights, eager attention, use_cache=False, "
               "one sequence per call, pure-PyTorch Mamba path",
}
with open(os.path.join(OUT, "ref.json"), "w") as f:
    json.dump(ref, f, separators=(",", ":"))
log(f"done in {time.time()-t0:.0f} s;", json.dumps(ref["versions"]))
with open(os.path.join(OUT, "generator_log.txt"), "w") as f:
    f.write("\n".join(log_lines) + "\n")
