"""PEFT LoRA adapters on the bundled tiny Nemotron-H and PEFT's own merged
weights, for tests/test_lora.c and tests/cli_lora.sh.

Two namings of the same model are covered:
  * transformers 5's native NemotronHForCausalLM (`model.*`, `embeddings`,
    routed experts fused into 3-D parameters reached through
    `target_parameters`), loaded from models/tiny-nemotron-h;
  * the remote-code naming (`backbone.*`, one nn.Linear per expert
    `experts.J.up_proj`), built here as a skeleton of plain torch modules
    whose module names are exactly the checkpoint's tensor names (PEFT only
    sees module names and types, so its matching and merging are the same
    as on the remote-code model).

Every adapter gets random non-zero A and B (PEFT initializes B to zero),
is saved with PeftModel.save_pretrained, and is merged with
merge_and_unload(); the merged state dict is compared with the base and the
tensors that changed are stored, renamed to the checkpoint's names (the
fused experts split per expert), as:
  reference.safetensors  rows r % 8 == 0 of every changed tensor (bf16)
  reference.json         per changed tensor: FNV-1a 64 of the whole tensor,
                         its shape, "exact" (whether nemoq must reproduce
                         PEFT bit for bit); per case the "bound" the others
                         must meet and a note saying why they differ
so the fixtures stay small while a layout or rounding mistake anywhere in a
tensor still shows (the hash), and the sampled rows give a readable diff.

Error-case adapters (err_*) are small hand edits of the valid ones.

Run from the repository root:  python3 tests/gen/gen_lora_reference.py
Needs torch, transformers >= 5, peft, safetensors (CPU is enough).
"""
import copy
import json
import os
import shutil
import sys

import numpy as np
import torch
from torch import nn
from safetensors.torch import load_file, save_file

import peft
import transformers
from peft import LoraConfig, get_peft_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "tiny-nemotron-h")
OUT = os.path.join(ROOT, "tests", "fixtures", "lora")

torch.set_num_threads(1)


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    arr = np.frombuffer(data, dtype=np.uint8)
    # vectorized in chunks would reorder; plain loop over bytes is the spec
    for b in arr.tobytes():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


# ---- the two models --------------------------------------------------------

class Node(nn.Module):
    pass


def skeleton(base_sd):
    """A module tree whose module names are the checkpoint's tensor names."""
    root = Node()
    groups = {}
    for name, t in base_sd.items():
        mod, _, p = name.rpartition(".")
        groups.setdefault(mod, {})[p] = t
    for mod, params in groups.items():
        parts = mod.split(".")
        parent = root
        for part in parts[:-1]:
            if not hasattr(parent, part) or getattr(parent, part) is None:
                parent.add_module(part, Node())
            parent = getattr(parent, part)
        leaf = parts[-1]
        w = params.get("weight")
        if w is not None and w.ndim == 2 and leaf == "embeddings":
            m = nn.Embedding(w.shape[0], w.shape[1])
        elif w is not None and w.ndim == 2 and set(params) == {"weight"} and "norm" not in leaf:
            m = nn.Linear(w.shape[1], w.shape[0], bias=False)
        elif w is not None and w.ndim == 3:
            m = nn.Conv1d(w.shape[0], w.shape[0], w.shape[2], groups=w.shape[0],
                          bias="bias" in params)
        else:
            m = getattr(parent, leaf, None) or Node()
            for p, t in params.items():
                m.register_parameter(p, nn.Parameter(t.clone()))
            if not hasattr(parent, leaf):
                parent.add_module(leaf, m)
            continue
        with torch.no_grad():
            m.weight.copy_(w)
            if "bias" in params:
                m.bias.copy_(params["bias"])
        m.to(torch.bfloat16)
        if hasattr(parent, leaf) and isinstance(getattr(parent, leaf), Node):
            # a Node was created first for a child path: move its children
            old = getattr(parent, leaf)
            for cn, c in old.named_children():
                m.add_module(cn, c)
        parent.add_module(leaf, m)
    return root


def native():
    from transformers import NemotronHForCausalLM
    return NemotronHForCausalLM.from_pretrained(MODEL, dtype=torch.bfloat16)


def base_state():
    return load_file(os.path.join(MODEL, "model.safetensors"))


def native_to_checkpoint(sd, E):
    """transformers 5 names -> the checkpoint's (NVIDIA) names, experts split."""
    out = {}
    for k, v in sd.items():
        n = "backbone." + k[6:] if k.startswith("model.") else k
        if n.endswith(".experts.up_proj") or n.endswith(".experts.down_proj"):
            which = n.rsplit(".", 1)[1]
            for e in range(E):
                out[f"{n[:-len(which)]}{e}.{which}.weight"] = v[e]
            continue
        out[n] = v
    return out


# ---- adapters --------------------------------------------------------------

def randomize(model, seed, zero_b=()):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" not in n:
                continue
            if "magnitude" in n:
                # a trained magnitude differs from the initial row norms
                p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=g).to(p.dtype))
                continue
            std = 0.05 if ("lora_B" in n or "lora_embedding_B" in n) else 0.1
            p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))
            if any(z in n for z in zero_b) and "lora_B" in n:
                p.zero_()
        # modules_to_save copies: make them differ from the base
        for n, p in model.named_parameters():
            if "modules_to_save" in n:
                p.add_((torch.randn(p.shape, generator=g) * 0.1).to(p.dtype))


def save_case(name, peft_model, base_ck, merged_ck, inexact, bound, note):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    peft_model.save_pretrained(d, safe_serialization=True)
    # save_pretrained may write a README.md: not part of the fixture
    for extra in ("README.md",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    # the generating machine's absolute path means nothing elsewhere
    cp = os.path.join(d, "adapter_config.json")
    with open(cp) as f:
        cfg = json.load(f)
    if cfg.get("base_model_name_or_path"):
        cfg["base_model_name_or_path"] = os.path.basename(cfg["base_model_name_or_path"])
    with open(cp, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    changed = {}
    for k, v in merged_ck.items():
        b = base_ck[k]
        v = v.to(b.dtype)
        if v.shape != b.shape:
            raise SystemExit(f"{name}: {k}: merged shape {tuple(v.shape)} != base {tuple(b.shape)}")
        if not torch.equal(v, b):
            changed[k] = v.contiguous()
    if not changed:
        raise SystemExit(f"{name}: nothing changed")
    sample = {}
    meta = {}
    for k, v in sorted(changed.items()):
        rows = v[::8] if v.ndim >= 1 else v
        sample[k] = rows.contiguous().clone()
        meta[k] = {"shape": list(v.shape), "fnv1a64": fnv1a64(tensor_bytes(v)),
                   "exact": not inexact(k)}
    save_file(sample, os.path.join(d, "reference.safetensors"))
    doc = {"generator": "tests/gen/gen_lora_reference.py", "peft": peft.__version__,
           "transformers": transformers.__version__, "torch": torch.__version__,
           "bound": bound, "note": note, "rows": "r % 8 == 0",
           "tensors": meta}
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{name}: {len(changed)} tensors changed")
    return changed


def run_case(name, kind, cfg, seed, inexact=lambda k: False, bound="exact", note="", zero_b=(),
             post=None):
    base_sd = base_state()
    if kind == "backbone":
        model = skeleton(base_sd)
    else:
        model = native()
    pm = get_peft_model(model, cfg)
    randomize(pm, seed, zero_b)
    if post:
        post(pm)
    pm.eval()
    saved = copy.deepcopy(pm)
    merged = pm.merge_and_unload()
    sd = {k: v for k, v in merged.state_dict().items()}
    if kind == "native":
        E = merged.config.n_routed_experts
        sd = native_to_checkpoint(sd, E)
    sd = {k: v for k, v in sd.items() if k in base_sd}
    return save_case(name, saved, base_sd, sd, inexact, bound, note), saved


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj", "out_proj", "up_proj", "down_proj"]


def main():
    os.makedirs(OUT, exist_ok=True)
    # 1. plain LoRA, remote-code naming, per-expert Linear LoRA; out_proj's B
    #    left at zero (what training usually leaves there)
    run_case("plain_backbone", "backbone",
             LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, layers_to_transform=[0, 1, 3],
                        layers_pattern="layers"), seed=1, zero_b=("out_proj",))
    # 2. rsLoRA, native naming
    run_case("rslora_native", "native",
             LoraConfig(r=16, lora_alpha=8, use_rslora=True,
                        target_modules=["in_proj", "q_proj", "o_proj"],
                        layers_to_transform=[2, 3], layers_pattern="layers"), seed=2)
    # 3. target_modules as a regex (full match), rank and alpha patterns
    run_case("patterns_backbone", "backbone",
             LoraConfig(r=4, lora_alpha=8,
                        target_modules=r".*\.layers\.(0|3)\.mixer\.(in_proj|q_proj|k_proj|v_proj)",
                        rank_pattern={"q_proj": 8, "layers.0.mixer.in_proj": 2},
                        alpha_pattern={"k_proj": 32, "v_.*": 3}), seed=3)
    # 4. DoRA (per output row magnitude), including per-expert Linears
    run_case("dora_backbone", "backbone",
             LoraConfig(r=8, lora_alpha=16, use_dora=True,
                        target_modules=["q_proj", "v_proj", "in_proj", "down_proj"],
                        layers_to_transform=[0, 3, 4], layers_pattern="layers"), seed=4,
             inexact=lambda k: True, bound="ulp",
             note="DoRA: bound one bf16 ulp of the result. PEFT's row norm is torch.linalg.norm in f32 (its own summation order); "
                  "nemoq sums squares in f64. The factor m/||W+dW|| can differ in the last f32 bit, "
                  "which moves a product across a bf16 rounding boundary now and then.")
    # 5. embedding LoRA and modules_to_save, native naming
    run_case("embed_native", "native",
             LoraConfig(r=8, lora_alpha=8, target_modules=["embeddings", "q_proj"],
                        modules_to_save=["norm_f"], layers_to_transform=None), seed=5,
             inexact=lambda k: "embeddings" in k, bound="delta_rounding",
             note="PEFT's Embedding merge rounds dW to bf16 before adding it (W + bf16(dW), two "
                  "roundings); nemoq rounds W + dW once from f32. q_proj and norm_f are exact.")
    # 6. routed experts through target_parameters (fused 3-D), native naming,
    #    plus the shared expert as a module
    changed, pm = run_case(
        "experts_native", "native",
        LoraConfig(r=4, lora_alpha=8, target_modules=["shared_experts.up_proj"],
                   target_parameters=["layers.1.mixer.experts.up_proj",
                                      "layers.1.mixer.experts.down_proj"]), seed=6,
        inexact=lambda k: ".experts." in k and "shared" not in k, bound="delta_rounding",
        note="PEFT's ParamWrapper.get_delta_weight casts dW to the parameter dtype (bf16) before "
             "adding it (W + bf16(dW), two roundings); nemoq rounds W + dW once from f32. The "
             "layout (A rows e*r+k, B columns k*E+e) is exact: W + bf16(dW) from nemoq's dW "
             "reproduces PEFT bit for bit. Shared-expert (Linear) tensors are exact.")
    # 7. the same expert adapter in the remote-code naming: per-expert keys
    #    (A_e = A[e*r:(e+1)*r], B_e = B[:, e::E]) merged by PEFT's Linear path
    experts_backbone(pm)
    errors()


def experts_backbone(native_pm):
    sd = native_pm.state_dict()
    E, r = 16, 4
    fused = {}
    for k, v in sd.items():
        if "lora_" in k and "experts." in k and "shared" not in k:
            fused[k] = v
    # nesting: the inner wrapper (experts.base_layer.*) is the parameter
    # registered first (up_proj), the outer one (experts.*) down_proj
    def get(part, which):
        for k, v in fused.items():
            if k.endswith(f"experts.{part}lora_{which}.default.weight"):
                return v.float()
        raise SystemExit(f"no experts.{part}lora_{which}")
    up_A, up_B = get("base_layer.", "A"), get("base_layer.", "B")
    dn_A, dn_B = get("", "A"), get("", "B")
    assert up_A.shape == (r * E, 256) and up_B.shape == (192, r * E), (up_A.shape, up_B.shape)
    assert dn_A.shape == (r * E, 192) and dn_B.shape == (256, r * E), (dn_A.shape, dn_B.shape)
    shared = {k: v for k, v in sd.items() if "shared_experts" in k and "lora_" in k}

    def post(pm):
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_" not in n:
                    continue
                if ".mixer.experts." in n:
                    e = int(n.split(".mixer.experts.")[1].split(".")[0])
                    A, B = (up_A, up_B) if ".up_proj." in n else (dn_A, dn_B)
                    p.copy_(A[e * r:(e + 1) * r] if "lora_A" in n else B[:, e::E])
                else:
                    src = n.replace("base_model.model.backbone.", "base_model.model.model.")
                    p.copy_(shared[src])

    run_case("experts_backbone", "backbone",
             LoraConfig(r=4, lora_alpha=8,
                        target_modules=r".*\.layers\.1\.mixer\.(experts\.\d+\.(up|down)_proj|shared_experts\.up_proj)"),
             seed=7, post=post)


def edit(src, dst, cfg_edit=None, tensors_edit=None):
    s = os.path.join(OUT, src)
    d = os.path.join(OUT, dst)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    with open(os.path.join(s, "adapter_config.json")) as f:
        cfg = json.load(f)
    if cfg_edit:
        cfg_edit(cfg)
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=1, sort_keys=True)
    t = load_file(os.path.join(s, "adapter_model.safetensors"))
    if tensors_edit:
        t = tensors_edit(t)
    if t is not None:
        save_file(t, os.path.join(d, "adapter_model.safetensors"))


def small(src_keys_filter):
    def f(t):
        return {k: v for k, v in t.items() if src_keys_filter(k)}
    return f


def errors():
    keep_q = small(lambda k: ".layers.3.mixer.q_proj." in k)

    # a LoRA on the depthwise conv1d: not a Linear, unsupported
    def conv(t):
        t = keep_q(t)
        t["base_model.model.backbone.layers.0.mixer.conv1d.lora_A.weight"] = torch.zeros(8, 640, 4)
        t["base_model.model.backbone.layers.0.mixer.conv1d.lora_B.weight"] = torch.zeros(640, 8, 1)
        return t
    edit("plain_backbone", "err_conv1d",
         lambda c: c.update(target_modules=["q_proj", "conv1d"], layers_to_transform=None), conv)

    # lora_bias on a bias-free Linear
    def bias(t):
        t = keep_q(t)
        t["base_model.model.backbone.layers.3.mixer.q_proj.lora_B.bias"] = torch.ones(256)
        return t
    edit("plain_backbone", "err_lora_bias", lambda c: c.update(lora_bias=True), bias)

    # a module the checkpoint does not have
    def unmatched(t):
        t = keep_q(t)
        t["base_model.model.backbone.layers.3.mixer.qkv_proj.lora_A.weight"] = torch.zeros(8, 256)
        t["base_model.model.backbone.layers.3.mixer.qkv_proj.lora_B.weight"] = torch.zeros(384, 8)
        return t
    edit("plain_backbone", "err_unmatched",
         lambda c: c.update(target_modules=["q_proj", "qkv_proj"]), unmatched)

    # A's input width does not fit the base
    def shape(t):
        t = keep_q(t)
        t["base_model.model.backbone.layers.3.mixer.q_proj.lora_A.weight"] = torch.zeros(8, 255)
        return t
    edit("plain_backbone", "err_shape", None, shape)

    # rank_pattern says 4 but the tensors have rank 8
    edit("plain_backbone", "err_rank", lambda c: c.update(rank_pattern={"q_proj": 4}), keep_q)

    # a key for a module that target_modules does not name
    edit("plain_backbone", "err_not_targeted", lambda c: c.update(target_modules=["k_proj"]), keep_q)

    # a layer outside layers_to_transform
    edit("plain_backbone", "err_layer", lambda c: c.update(layers_to_transform=[0]), keep_q)

    # B without its A
    edit("plain_backbone", "err_missing_a", None,
         small(lambda k: ".layers.3.mixer.q_proj.lora_B." in k))

    # the pickle format: refused with a conversion hint
    d = os.path.join(OUT, "err_bin")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    shutil.copy(os.path.join(OUT, "plain_backbone", "adapter_config.json"), d)
    with open(os.path.join(d, "adapter_model.bin"), "wb") as f:
        f.write(b"PK\x03\x04 not a real pickle: nemoq must not open it\n")



if __name__ == "__main__":
    sys.exit(main())
