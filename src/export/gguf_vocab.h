/* The tokenizer.ggml.* metadata of a GGUF file, from a Hugging Face
 * byte-level BPE tokenizer directory, as llama.cpp's converter writes it
 * (conversion/nemotron.py NemotronHModel.set_vocab + gguf-py SpecialVocab):
 * model "gpt2", the pre-tokenizer name, tokens padded with "[PADi]" (type
 * UNUSED) up to the config's vocab_size rounded up to a multiple of 8, token
 * types (added special or special-looking tokens CONTROL, other added tokens
 * USER_DEFINED, the rest NORMAL), merges, special token ids (from
 * tokenizer_config.json's *_token names, then config.json's *_token_id),
 * add_bos/add_eos (from the post-processor, then tokenizer_config.json) and
 * the chat template. */
#ifndef NQ_EXPORT_GGUF_VOCAB_H
#define NQ_EXPORT_GGUF_VOCAB_H

#include "core/error.h"
#include "io/gguf.h"

/* The llama.cpp pre-tokenizer name whose original tokenizer.json split
 * regex (quoted in llama.cpp's src/llama-vocab.cpp) equals `regex`, or NULL.
 * llama.cpp's converter picks the name from a hash of test-string tokens
 * (get_vocab_base_pre); an unknown hash is refused there, and nemoq refuses
 * an unknown regex the same way rather than guess. */
const char *nq_gguf_pre_tokenizer_for_regex(const char *regex);

/* Adds every tokenizer.ggml.* key for the checkpoint in `dir`; *vocab_size
 * receives the padded size (the converter also writes it as
 * ARCH.vocab_size).  config_vocab: config.json's vocab_size. */
int nq_gguf_add_vocab(nq_gguf_writer *w, const char *dir, int config_vocab, int *vocab_size,
                      nq_error *err);

#endif
