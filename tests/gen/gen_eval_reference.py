"""Reference perplexities for `nemoq eval` on the bundled model, from
transformers + tokenizers (independent of nemoq's C code).

Protocol (as ../shared/fixtures/README.md describes for the 14.48 figure):
the whole text tokenized as one string, no BOS/EOS; consecutive
non-overlapping windows of CTX tokens from the start; each window run alone;
its CTX-1 next-token predictions scored; ppl = exp(mean NLL).

    python3 tests/gen/gen_eval_reference.py MODEL_DIR TEXT > tests/fixtures/eval_ref.json
"""
import json, math, sys
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

model_dir, text_path = sys.argv[1], sys.argv[2]
tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
text = open(text_path, encoding="utf-8").read()
ids = tok.encode(text, add_special_tokens=False).ids
model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
model.eval()
torch.set_num_threads(2)
out = {"text": text_path.split("/")[-1], "tokens": len(ids), "cases": []}
for ctx, windows, skip in [(256, 64, 0), (256, 8, 100), (128, 16, 3)]:
    nll, n = 0.0, 0
    for w in range(skip, skip + windows):
        x = torch.tensor([ids[w * ctx:(w + 1) * ctx]])
        with torch.no_grad():
            logits = model(x).logits[0].double()
        lp = torch.log_softmax(logits[:-1], dim=-1)
        nll -= lp.gather(1, x[0, 1:, None]).sum().item()
        n += ctx - 1
    out["cases"].append({"ctx": ctx, "windows": windows, "skip": skip, "predictions": n,
                         "nll": nll / n, "perplexity": math.exp(nll / n)})
out["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                   "tokenizers": __import__("tokenizers").__version__}
print(json.dumps(out, indent=1))
