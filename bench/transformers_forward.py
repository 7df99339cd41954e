"""transformers' own GPU forward of the bundled model (bf16 and f32) on the
token windows nemoq's GPU benchmark used (scripts/gpu-test.sh writes them
to TMP/bench_ids.i32), for the tokens/s comparison in the README.

usage: python3 bench/transformers_forward.py MODEL_DIR IDS_FILE CTX [WINDOWS [backbone]]
  WINDOWS: use only the first WINDOWS windows; backbone: time the blocks
  only (model.model, no lm_head), bf16 only, as nemoq-gpu-test
  --bench-backbone does.  NEMOQ_BENCH_TAG names the case in the output
  ("BENCH[TAG-CTX-backbone|logits transformers-bf16|f32] ... N tokens/s"),
  which scripts/gpu-test.sh pairs with nemoq's lines into ratios.
"""
import os
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main():
    model_dir, ids_file, ctx = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ids = np.fromfile(ids_file, dtype=np.int32)
    windows = len(ids) // ctx
    if len(sys.argv) > 4:
        windows = min(windows, int(sys.argv[4]))
    backbone = len(sys.argv) > 5 and sys.argv[5] == "backbone"
    batch = torch.from_numpy(ids[: windows * ctx].reshape(windows, ctx).astype(np.int64)).cuda()
    for dtype in (torch.bfloat16,) if backbone else (torch.bfloat16, torch.float32):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).cuda().eval()
        run = model.model if backbone else model
        with torch.no_grad():
            run(batch)  # warm-up
            torch.cuda.synchronize()
            best = 1e30
            for _ in range(3):
                t0 = time.perf_counter()
                run(batch)
                torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
        name = "bf16" if dtype == torch.bfloat16 else "f32"
        what = "backbone, no lm_head" if backbone else "logits included"
        tag = os.environ.get("NEMOQ_BENCH_TAG", "bundled")
        kind = "backbone" if backbone else "logits"
        print(f"BENCH[{tag}-{ctx}-{kind} transformers-{name}] transformers {torch.__version__}/{__import__('transformers').__version__} "
              f"GPU {name} forward ({windows} windows x {ctx} tokens, batched, {what}): "
              f"{best:.3f} s, {windows * ctx / best:.0f} tokens/s (best of 3; peak "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)", flush=True)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
