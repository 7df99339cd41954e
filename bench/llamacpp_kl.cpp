// KL of a quantized GGUF against its float GGUF on given token windows, with
// llama.cpp's own forward pass: the protocol of `nemoq eval` (consecutive
// windows of CTX tokens, each started from an empty state, every position but
// the last scored: CTX - 1 predictions per window).  llama-perplexity's
// --kl-divergence scores only the second half of each chunk, so it cannot
// give the number on the same predictions; this program links the same
// libllama and differs only in which positions are scored.
//
//   llamacpp_kl BASE.gguf QUANT.gguf TOKENS.i32 CTX WINDOWS THREADS
//
// TOKENS.i32: little-endian int32 token ids (the held-out text tokenized as
// nemoq tokenizes it, without special tokens).  Prints one line:
//   windows W predictions P base_ppl X ppl Y kl Z top1 T
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "llama.h"

static void quiet(ggml_log_level, const char *, void *) {}

struct runner {
    llama_model *model = nullptr;
    llama_context *ctx = nullptr;
    bool open(const char *path, int n_ctx, int threads)
    {
        llama_model_params mp = llama_model_default_params();
        mp.use_extra_bufts = false;   // --no-repack: AMX repacking dies with SIGILL in this VM
        model = llama_model_load_from_file(path, mp);
        if (!model)
            return false;
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = n_ctx;
        cp.n_batch = n_ctx;
        cp.n_ubatch = n_ctx;
        cp.n_seq_max = 1;
        cp.n_threads = threads;
        cp.n_threads_batch = threads;
        ctx = llama_init_from_model(model, cp);
        return ctx != nullptr;
    }
    // log-softmax of every position's logits into out[n * V]
    bool run(const int32_t *ids, int n, std::vector<double> &out)
    {
        llama_memory_clear(llama_get_memory(ctx), true);
        llama_batch b = llama_batch_init(n, 0, 1);
        for (int i = 0; i < n; i++) {
            b.token[i] = ids[i];
            b.pos[i] = i;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = 0;
            b.logits[i] = 1;
        }
        b.n_tokens = n;
        int rc = llama_decode(ctx, b);
        llama_batch_free(b);
        if (rc != 0)
            return false;
        int V = llama_vocab_n_tokens(llama_model_get_vocab(model));
        out.resize((size_t)n * V);
        for (int i = 0; i < n; i++) {
            const float *l = llama_get_logits_ith(ctx, i);
            double mx = l[0];
            for (int v = 1; v < V; v++)
                mx = l[v] > mx ? l[v] : mx;
            double s = 0;
            for (int v = 0; v < V; v++)
                s += std::exp(l[v] - mx);
            double ls = mx + std::log(s);
            for (int v = 0; v < V; v++)
                out[(size_t)i * V + v] = l[v] - ls;
        }
        return true;
    }
};

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: llamacpp_kl BASE.gguf QUANT.gguf TOKENS.i32 CTX WINDOWS THREADS\n");
        return 2;
    }
    int n_ctx = atoi(argv[4]), windows = atoi(argv[5]), threads = atoi(argv[6]);
    FILE *f = fopen(argv[3], "rb");
    if (!f) {
        fprintf(stderr, "llamacpp_kl: cannot open %s\n", argv[3]);
        return 1;
    }
    std::vector<int32_t> ids;
    int32_t t;
    while (fread(&t, 4, 1, f) == 1)
        ids.push_back(t);
    fclose(f);
    if ((long)ids.size() < (long)n_ctx * windows) {
        fprintf(stderr, "llamacpp_kl: %s holds %zu tokens, fewer than %d windows of %d\n", argv[3],
                ids.size(), windows, n_ctx);
        return 1;
    }
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    runner base, q;
    if (!base.open(argv[1], n_ctx, threads) || !q.open(argv[2], n_ctx, threads)) {
        fprintf(stderr, "llamacpp_kl: cannot load %s or %s\n", argv[1], argv[2]);
        return 1;
    }
    int V = llama_vocab_n_tokens(llama_model_get_vocab(base.model));
    std::vector<double> lb, lq;
    double nll_b = 0, nll_q = 0, kl = 0;
    long agree = 0, count = 0;
    for (int w = 0; w < windows; w++) {
        const int32_t *win = ids.data() + (size_t)w * n_ctx;
        if (!base.run(win, n_ctx, lb) || !q.run(win, n_ctx, lq)) {
            fprintf(stderr, "llamacpp_kl: llama_decode failed on window %d\n", w);
            return 1;
        }
        for (int i = 0; i + 1 < n_ctx; i++) {
            const double *pb = &lb[(size_t)i * V], *pq = &lq[(size_t)i * V];
            nll_b -= pb[win[i + 1]];
            nll_q -= pq[win[i + 1]];
            double k = 0;
            int ab = 0, aq = 0;
            for (int v = 0; v < V; v++) {
                k += std::exp(pb[v]) * (pb[v] - pq[v]);
                ab = pb[v] > pb[ab] ? v : ab;
                aq = pq[v] > pq[aq] ? v : aq;
            }
            kl += k;
            agree += ab == aq;
            count++;
        }
    }
    printf("windows %d predictions %ld base_ppl %.4f ppl %.4f kl %.5f top1 %.4f\n", windows, count,
           std::exp(nll_b / count), std::exp(nll_q / count), kl / count, (double)agree / count);
    llama_free(q.ctx);
    llama_free(base.ctx);
    llama_model_free(q.model);
    llama_model_free(base.model);
    llama_backend_free();
    return 0;
}
