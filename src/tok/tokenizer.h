/* Hugging Face tokenizer.json (byte-level BPE) in plain C.
 *
 * Reproduces what the Rust `tokenizers` library (0.23) does with the files that Nemotron-H,
 * Nemotron 3, Llama 3, Mistral NeMo and GPT-2 style checkpoints ship:
 *
 *   added_tokens   matched in the raw text first (leftmost-longest, non-"normalized" ones
 *                  before the "normalized" ones), honouring lstrip / rstrip / single_word
 *   normalizer     none (null or an empty Sequence); anything else is refused at load
 *   pre_tokenizer  Sequence of Split (Regex through PCRE2 with Oniguruma's meaning of
 *                  \s \w \h ^ $, or String; behaviours Removed / Isolated / MergedWithPrevious /
 *                  MergedWithNext / Contiguous; invert) and ByteLevel (add_prefix_space,
 *                  use_regex with the GPT-2 regex)
 *   model          BPE: vocab, merges ("a b" strings or ["a","b"] pairs) applied by rank,
 *                  ignore_merges, byte_fallback, unk_token, fuse_unk,
 *                  continuing_subword_prefix, end_of_word_suffix (dropout must be null/0)
 *   post_processor TemplateProcessing (single template), Bert/RobertaProcessing, ByteLevel,
 *                  Sequence; applied only when add_special is true
 *   decoder        ByteLevel (or none: tokens joined by spaces, as HF does)
 *
 * Text is bytes.  Valid UTF-8 is tokenized exactly as HF does.  Bytes that are not valid
 * UTF-8 (HF's Python API cannot take them) are kept as raw bytes: no pre-tokenizer regex ever
 * matches them, so each maximal invalid run ends up in a piece of its own between the regex
 * matches, and byte-level BPE gives it the tokens of those bytes.  Decoding returns raw bytes
 * (no U+FFFD substitution), so decode(encode(x)) == x for every byte string x when the
 * tokenizer is byte-level without add_prefix_space.
 *
 * Thread safety: a loaded tokenizer is immutable; encode/decode may run concurrently. */
#ifndef NQ_TOK_TOKENIZER_H
#define NQ_TOK_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct nq_tokenizer nq_tokenizer;

/* Loads a tokenizer.json file.  Returns NULL and fills err on failure (unreadable file, bad
 * JSON, or a component this implementation does not support: it never guesses). */
nq_tokenizer *nq_tokenizer_load(const char *path, nq_error *err);

/* Same from a JSON text in memory (need not be NUL-terminated).  `name` is used in error
 * messages (may be NULL). */
nq_tokenizer *nq_tokenizer_load_mem(const char *json, size_t len, const char *name, nq_error *err);

void nq_tokenizer_free(nq_tokenizer *tok);

/* Encodes len bytes of text.  With add_special the post_processor's tokens are added (for
 * Nemotron-style files: BOS "<s>" in front; for the bundled tiny model: nothing, as it has no
 * post_processor).  Added/special tokens written in the text (e.g. "<s>", "<|im_end|>") are
 * always recognised, whatever add_special says, as HF does.
 * On success *ids is a malloc'd array the caller frees with free() (non-NULL even when *n is
 * 0) and returns 0; on failure returns -1 with *ids = NULL, *n = 0. */
int nq_tokenizer_encode(const nq_tokenizer *tok, const char *text, size_t len, bool add_special,
                        int32_t **ids, size_t *n, nq_error *err);

/* Decodes ids back to bytes.  skip_special drops special added tokens (HF's
 * skip_special_tokens).  Ids that name no token are skipped, as HF does.  On success *text is
 * malloc'd (caller frees), NUL-terminated for convenience, *len excludes the NUL.  Fails when
 * the file's decoder is of a type this implementation does not support. */
int nq_tokenizer_decode(const nq_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                        char **text, size_t *len, nq_error *err);

/* Id of a token given by its exact vocabulary spelling (added tokens first, then the model
 * vocabulary, as HF's token_to_id); -1 if there is none.  Byte-level vocabularies spell a
 * space as "\xC4\xA0" (U+0120). */
int32_t nq_tokenizer_token_id(const nq_tokenizer *tok, const char *token);

/* Spelling of id (not NUL-terminated; *len set), or NULL if the id names no token.  Owned by
 * the tokenizer. */
const char *nq_tokenizer_token_str(const nq_tokenizer *tok, int32_t id, size_t *len);

/* One more than the largest id of the vocabulary and added tokens: the number of rows an
 * embedding table needs. */
size_t nq_tokenizer_vocab_size(const nq_tokenizer *tok);

/* True if id is a special added token (skipped by decode with skip_special). */
bool nq_tokenizer_is_special(const nq_tokenizer *tok, int32_t id);

/* BOS: the first token the post_processor puts before the text, else the token "<s>", else
 * -1.  EOS: the token the post_processor puts after the text, else "</s>", else -1.  The
 * model's generation_config.json (bos_token_id / eos_token_id) is the authority where present;
 * for chat models the end-of-turn token (e.g. "<|im_end|>") differs from "</s>". */
int32_t nq_tokenizer_bos_id(const nq_tokenizer *tok);
int32_t nq_tokenizer_eos_id(const nq_tokenizer *tok);

#endif
