#!/usr/bin/env python3
"""NVIDIA ModelOpt itself on the bundled model: its own AutoQuantize (the peer
nemoq's --auto-quantize is compared with in the README) and its uniform NVFP4
and FP8 PTQ (the reference for `quantize --modelopt-gpu-rounding`).

usage: python3 bench/modelopt_autoq.py MODE MODEL_DIR CALIB_TXT OUT_DIR [options]
  MODE: autoq-gradient | autoq-kl_div | ptq-nvfp4 | ptq-fp8
  --bits B          ModelOpt effective_bits for autoq (see bench/modelopt_autoq.sh
                    for how nemoq's budget is translated)
  --device cuda|cpu
  --calib-bytes N   calibration text = the first N bytes of CALIB_TXT (375000)
  --samples S --len L --score-windows W   (64, 256, 4)

The token windows are nemoq's: the text is tokenized as one string without
BOS (the bundled tokenizer.json through `tokenizers`), window i of S starts
at token i * floor(n / S); calibration runs over all S windows, AutoQuantize
scores on W of them, windows w * S / W (nemoq's --auto-score-samples W
choice), which are put first in the data loader because ModelOpt scores on
the first num_score_steps batches (max calibration does not depend on the
order).  Every mode also calibrates an FP8 KV cache as ModelOpt's
examples/llm_ptq/hf_ptq.py does (--kv_cache_qformat fp8), exports with
export_hf_checkpoint, and copies tokenizer.json next to the export.
"""
import argparse
import copy
import json
import os
import shutil
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def windows(tok_path, text, samples, length):
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(tok_path).encode(text, add_special_tokens=False).ids
    n = len(ids)
    step = n // samples
    if step < length:
        sys.exit(f"{n} tokens: too few for {samples} windows of {length}")
    return n, [ids[i * step:i * step + length] for i in range(samples)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["autoq-gradient", "autoq-kl_div", "ptq-nvfp4", "ptq-fp8"])
    ap.add_argument("model")
    ap.add_argument("calib")
    ap.add_argument("out")
    ap.add_argument("--bits", type=float, default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--calib-bytes", type=int, default=375000)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--len", type=int, default=256)
    ap.add_argument("--score-windows", type=int, default=4)
    a = ap.parse_args()

    import modelopt
    import modelopt.torch.quantization as mtq
    import transformers
    from modelopt.torch.export import export_hf_checkpoint
    from modelopt.torch.quantization.config import _default_disabled_quantizer_cfg
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    dev = torch.device(a.device)
    with open(a.calib, "rb") as f:
        text = f.read()[: a.calib_bytes].decode("utf-8")
    n, wins = windows(os.path.join(a.model, "tokenizer.json"), text, a.samples, a.len)
    W = min(a.score_windows, a.samples)
    score_idx = [w * a.samples // W for w in range(W)]
    order = score_idx + [i for i in range(a.samples) if i not in score_idx]
    batches = []
    for i in order:
        ids = torch.tensor([wins[i]], dtype=torch.long, device=dev)
        batches.append({"input_ids": ids, "labels": ids} if a.mode == "autoq-gradient"
                       else {"input_ids": ids})

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).to(dev).eval()
    info = {"mode": a.mode, "tokens": n, "windows": a.samples, "len": a.len,
            "score_windows": score_idx, "versions": {
                "python": sys.version.split()[0], "torch": torch.__version__,
                "transformers": transformers.__version__, "modelopt": modelopt.__version__,
                "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"}}

    def loop(m):
        with torch.no_grad():
            for b in batches:
                m(**b)

    if a.mode.startswith("ptq-"):
        cfg = copy.deepcopy(mtq.NVFP4_DEFAULT_CFG if a.mode == "ptq-nvfp4" else mtq.FP8_DEFAULT_CFG)
        kv = [e for e in mtq.FP8_KV_CFG["quant_cfg"] if e.get("quantizer_name") != "*"]
        cfg["quant_cfg"] = list(cfg["quant_cfg"]) + kv
        model = mtq.quantize(model, cfg, loop)
    else:
        method = a.mode.split("-", 1)[1]
        if method == "gradient":
            def forward_step(m, b):
                return m(**b)
        else:
            def forward_step(m, b):
                return m(**b).logits

        def loss_func(out, b):
            return out.loss

        # hf_ptq.py's exclusions: lm_head, routers, conv1d, ... (the same set
        # nemoq never searches)
        disabled = [e["quantizer_name"] for e in _default_disabled_quantizer_cfg
                    if "parent_class" not in e]
        model, state = mtq.auto_quantize(
            model, constraints={"effective_bits": a.bits},
            quantization_formats=[mtq.NVFP4_DEFAULT_CFG, mtq.FP8_DEFAULT_CFG],
            data_loader=batches, forward_step=forward_step, loss_func=loss_func,
            num_calib_steps=len(batches), num_score_steps=W, verbose=True,
            disabled_layers=disabled, method=method)
        groups = []
        for name, st in state["candidate_stats"].items():
            groups.append({"group": name, "formats": [str(f) for f in st["formats"]],
                           "scores": [float(s) for s in st["scores"]],
                           "costs": [float(c) for c in st["costs"]],
                           "modules": list(st.get("module_names", []))})
        info["auto_quantize"] = {"effective_bits_constraint": a.bits, "groups": groups,
                                 "best": {k: (str(v) if not isinstance(v, (int, float)) else v)
                                          for k, v in state.get("best", {}).items()}}
        kv = [e for e in copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"]) if e["quantizer_name"] != "*"]
        mtq.set_quantizer_by_cfg(model, quant_cfg=kv)
        with mtq.set_quantizer_by_cfg_context(
                model, [{"quantizer_name": "*", "enable": False}, *kv]):
            mtq.calibrate(model, algorithm="max", forward_loop=loop)
    info["quantize_seconds"] = round(time.time() - t0, 1)
    os.makedirs(a.out, exist_ok=True)
    export_hf_checkpoint(model, export_dir=a.out)
    shutil.copy(os.path.join(a.model, "tokenizer.json"), a.out)
    info["total_seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(a.out, "modelopt_run.json"), "w") as f:
        json.dump(info, f, indent=1, default=str)
    print(json.dumps({k: v for k, v in info.items() if k != "auto_quantize"}, default=str))


if __name__ == "__main__":
    main()
