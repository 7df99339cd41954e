#!/usr/bin/env python3
"""ModelOpt's AutoQuantize scores, re-solved under nemoq's cost accounting.

ModelOpt 0.47's effective_bits is not nemoq's --auto-quantize BITS (see the
README, "The peer"): it divides by every module it inserted a quantizer in,
lm_head and conv1d included at 16 bits although disabled, and counts a
transformers fused-experts module (NemotronHExperts) by one of its two
weight tensors.  To compare at one budget this takes the per-group scores a
ModelOpt run measured (modelopt_run.json from bench/modelopt_autoq.py), keeps
ModelOpt's groups and its objective (minimise the summed score), and solves
the multiple-choice knapsack exactly under nemoq's cost: 4.5/8/16 bits per
weight plus 64 bits per quantized module, over the 188 searchable Linear
modules.  It prints nemoq --include rules that pin every module to the chosen
format, so nemoq's exporter (byte-identical weights to ModelOpt's per module)
writes the plan.

usage: python3 bench/modelopt_plan_at_budget.py MODELOPT_RUN.json MODEL_DIR BITS
"""
import json
import re
import sys

from safetensors import safe_open

BITS = {"NVFP4": 4.5, "FP8": 8.0, "NONE": 16.0}


def main():
    run, model, budget = sys.argv[1], sys.argv[2], float(sys.argv[3])
    st = safe_open(f"{model}/model.safetensors", "np")
    shapes = {k[: -len(".weight")]: st.get_slice(k).get_shape() for k in st.keys()
              if re.search(r"\.(q|k|v|o|in|out|up|down)_proj\.weight$", k)}
    total = sum(a * b for a, b in shapes.values())
    groups = []
    for g in json.load(open(run))["auto_quantize"]["groups"]:
        name = g["group"].replace(".quant_recipe", "").replace("model.layers.", "backbone.layers.")
        if name.endswith(".q_proj"):
            mods = [name[:-6] + p for p in ("q_proj", "k_proj", "v_proj")]
        elif name.endswith(".experts"):
            mods = [m for m in shapes if m.startswith(name + ".")]
        else:
            mods = [name] if name in shapes else []
        if not mods:
            continue  # lm_head, conv1d: never searched by nemoq
        n = sum(shapes[m][0] * shapes[m][1] for m in mods)
        choices = []
        for f, s in zip(g["formats"], g["scores"]):
            fmt = f.split("_")[0].split("(")[0]
            cost = BITS[fmt] * n + (64 * len(mods) if fmt != "NONE" else 0)
            choices.append((cost, s, fmt))
        groups.append((name, mods, n, choices))
    assert sum(g[2] for g in groups) == total, "groups do not cover the searchable modules"
    cap = budget * total
    # exact multiple-choice knapsack: Pareto frontier of (cost, score) per prefix
    front = [(0.0, 0.0, ())]
    for _, _, _, choices in groups:
        nxt = [(c + cc, s + sc, pick + (k,)) for c, s, pick in front
               for k, (cc, sc, _) in enumerate(choices) if c + cc <= cap]
        nxt.sort(key=lambda t: (t[0], t[1]))
        front, best = [], float("inf")
        for t in nxt:
            if t[1] < best:
                front.append(t)
                best = t[1]
    cost, score, pick = min(front, key=lambda t: (t[1], t[0]))
    rules, counts = [], {"NVFP4": 0, "FP8": 0, "NONE": 0}
    for (name, mods, _, choices), k in zip(groups, pick):
        fmt = choices[k][2]
        counts[fmt] += len(mods)
        nq = {"NVFP4": "nvfp4", "FP8": "fp8", "NONE": "bf16"}[fmt]
        rules += [f"--include {m}={nq}" for m in mods]
    print(f"# effective bits (nemoq accounting) {cost / total:.4f} of {budget}; "
          f"summed score {score:.6g}; modules nvfp4/fp8/bf16 "
          f"{counts['NVFP4']}/{counts['FP8']}/{counts['NONE']}", file=sys.stderr)
    print(" ".join(rules))


if __name__ == "__main__":
    main()
