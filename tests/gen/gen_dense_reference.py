"""Generates tests/fixtures/dense/: a random NemotronH with dense MLP ('-')
layers and dimensions unlike the bundled tiny model, saved BF16 with
save_pretrained, plus float32 reference logits and hidden states computed by
transformers' own NemotronHForCausalLM (pure-PyTorch Mamba path, eager
attention, CPU, float32 from the BF16 weights).

Run (where torch + transformers are installed):
    OUT=/some/dir python3 gen_dense_reference.py
It writes OUT/dense/{config.json,generation_config.json,model.safetensors},
OUT/dense_ref.json, OUT/dense_logits.f32, OUT/dense_hidden.f32,
OUT/hf_src.tar (the transformers sources that computed the reference) and
prints versions.
"""
import inspect, io, json, math, os, sys, tarfile

import numpy as np
import torch
import transformers
from transformers import NemotronHConfig, NemotronHForCausalLM

OUT = os.environ["OUT"]
torch.manual_seed(20251122)
np.random.seed(20251122)

# M = Mamba-2, - = dense MLP, * = attention, E = MoE
PATTERN = "M-*EM*-E"
NAMES = {"M": "linear_attention", "-": "mlp", "*": "full_attention", "E": "moe"}

cfg = NemotronHConfig(
    vocab_size=512,
    hidden_size=96,
    layers_block_type=[NAMES[c] for c in PATTERN],
    tie_word_embeddings=True,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=20,                      # != hidden/heads (24)
    intermediate_size=160,
    mlp_hidden_act="relu2",
    ssm_state_size=8,
    mamba_num_heads=6,
    mamba_head_dim=16,
    n_groups=3,                       # 2 heads per group
    conv_kernel=3,
    chunk_size=16,                    # several SSD chunks per sequence
    time_step_min=0.01,               # the torch path clamps dt at this
    n_routed_experts=12,
    moe_intermediate_size=48,
    moe_shared_expert_intermediate_size=64,
    num_experts_per_tok=3,
    n_group=3,
    topk_group=2,
    routed_scaling_factor=1.7,
    norm_topk_prob=True,
    layer_norm_epsilon=1e-6,
    use_mamba_kernels=False,
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
    max_position_embeddings=512,
)
model = NemotronHForCausalLM(cfg).eval()
print("tied lm_head:", model.lm_head.weight.data_ptr() == model.model.embeddings.weight.data_ptr())

# Re-draw every parameter at O(1) scale so that each mixer moves the residual
# stream visibly (the default 0.02 init would hide mistakes under the residual).
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("embeddings.weight"):
            p.normal_(0.0, 1.0)
        elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
            p.copy_(1.0 + 0.3 * torch.randn_like(p))
        elif name.endswith("A_log"):
            p.copy_(torch.log(torch.empty_like(p).uniform_(0.5, 12.0)))
        elif name.endswith(".D"):
            p.normal_(0.0, 1.0)
        elif name.endswith("dt_bias"):
            # softplus(dt + bias) falls below time_step_min for the first heads
            p.copy_(torch.tensor([-7.0, -4.5, -2.0, -0.5, 0.3, 1.0])[: p.numel()])
        elif name.endswith("conv1d.weight"):
            p.normal_(0.0, 0.5)
        elif name.endswith("conv1d.bias"):
            p.normal_(0.0, 0.2)
        elif p.ndim == 3:  # fused experts [E, out, in]
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[2]))
        elif p.ndim == 2:
            scale = 1.0 / math.sqrt(p.shape[1])
            if name.endswith(("out_proj.weight", "o_proj.weight", "down_proj.weight")):
                scale *= 0.5
            p.normal_(0.0, scale)
        else:
            print("left as initialised:", name, tuple(p.shape))
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.normal_(0.0, 0.3)

model = model.to(torch.bfloat16)
save_dir = os.path.join(OUT, "dense")
model.save_pretrained(save_dir)

ref = NemotronHForCausalLM.from_pretrained(save_dir, dtype=torch.float32, attn_implementation="eager").eval()
print("reloaded lm_head tied:", ref.lm_head.weight.data_ptr() == ref.model.embeddings.weight.data_ptr())
import transformers.models.nemotron_h.modeling_nemotron_h as _m
print("mamba fast path:", getattr(_m, "is_fast_path_available", "n/a"), "use_mamba_kernels:", ref.config.use_mamba_kernels)

g = torch.Generator().manual_seed(7)
lengths = [40, 57, 2]
seqs = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in lengths]
logits_all, hidden_seq = [], None
with torch.no_grad():
    for i, s in enumerate(seqs):
        out = ref(torch.tensor([s]), output_hidden_states=True, use_cache=False)
        logits_all.append(out.logits[0].float().numpy())
        if i == 1:
            hidden_seq = torch.stack([h[0] for h in out.hidden_states]).float().numpy()
np.concatenate(logits_all, axis=0).astype("<f4").tofile(os.path.join(OUT, "dense_logits.f32"))
hidden_seq.astype("<f4").tofile(os.path.join(OUT, "dense_hidden.f32"))
print("hidden states:", hidden_seq.shape, "logits rows:", sum(lengths))
print("logit absmax per seq:", [float(np.abs(l).max()) for l in logits_all])
print("hidden absmax per layer:", [round(float(np.abs(h).max()), 3) for h in hidden_seq])

meta = {
    "pattern": PATTERN,
    "seqs": seqs,
    "hidden_seq_index": 1,
    "hidden_shape": list(hidden_seq.shape),
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                 "numpy": np.__version__, "python": sys.version.split()[0]},
    "compute": "CPU float32 from the BF16 checkpoint, eager attention, use_cache=False, one sequence per call",
}
with open(os.path.join(OUT, "dense_ref.json"), "w") as f:
    json.dump(meta, f)

import transformers.models.nemotron_h.modeling_nemotron_h as mod
import transformers.models.nemotron_h.configuration_nemotron_h as cmod
import transformers.models.zamba2.modeling_zamba2 as zmod
with tarfile.open(os.path.join(OUT, "hf_src.tar"), "w") as tar:
    for m in (mod, cmod, zmod):
        tar.add(inspect.getsourcefile(m), arcname=os.path.basename(inspect.getsourcefile(m)))
print(json.dumps(meta["versions"]))
