/* tokenizer.h — tokenizer.json BPE, as Hugging Face `tokenizers` runs it.
 *
 * Reproduces Tokenizer.from_file(path).encode()/decode() exactly for the two
 * BPE families that Mistral-family and MoE models ship:
 *   - sentencepiece-style BPE with byte fallback (Llama-2, Mistral, Gemma):
 *     Prepend/Replace normalizers or a Metaspace pre-tokenizer, "▁", <0xNN>
 *     byte tokens, unk handling;
 *   - byte-level BPE behind regex pre-tokenizers (Qwen2/3, Llama-3,
 *     DeepSeek-V3, GPT-4o): ByteLevel, Split (PCRE2 with UTF + UCP), Digits,
 *     NFC/NFKC normalizers.
 * Added/special tokens are matched before BPE (lstrip, rstrip, normalized,
 * single_word honoured); the post-processor (TemplateProcessing, ByteLevel,
 * RobertaProcessing, BertProcessing, Sequence) adds BOS/EOS. Any setting this
 * code does not implement makes tok_load fail with MOE_EUNSUPPORTED naming it.
 *
 * The pipeline lives in src/text/tok_*.c: tok_load.c (parsing and validation),
 * tok_norm.c (normalizers), tok_pretok.c (pre-tokenizers, regexes), tok_bpe.c
 * (merges, word cache), tok_encode.c (added tokens, the encode pipeline,
 * post-processing), tok_decode.c (decoders and the streaming detokenizer),
 * tok_util.c (UTF-8, hash maps, buffers).
 *
 * Thread-safety: a loaded tokenizer is read-only apart from its internally
 * locked word cache; any number of threads may encode/decode with one
 * tokenizer at once. A detok is used by one thread at a time.
 */
#ifndef MOE_TEXT_TOKENIZER_H
#define MOE_TEXT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "moe.h"

typedef struct tokenizer tokenizer;

/* Loads json_path (tokenizer.json). config_path (tokenizer_config.json) may be
 * NULL; from it come bos_token/eos_token (tok_bos_id/tok_eos_id) and, only when
 * tokenizer.json has no post_processor at all, add_bos_token/add_eos_token
 * (transformers' Llama-2 convention). Otherwise add_special follows
 * tokenizer.json's post_processor exactly, as Tokenizer.from_file does.
 * Every id, merge and template is validated; a malformed file gives
 * MOE_EFORMAT, an unknown model/normalizer/pre-tokenizer/decoder type or
 * option MOE_EUNSUPPORTED, a missing file MOE_EIO; the message names the
 * file and the offending entry. On failure *out is NULL. */
moe_status tok_load(const char *json_path, const char *config_path, tokenizer **out);
void tok_free(tokenizer *t); /* NULL ok */

/* Largest id + 1, added tokens included (ids in between may be unused). */
int tok_vocab_size(const tokenizer *t);
int32_t tok_bos_id(const tokenizer *t); /* -1 if none */
int32_t tok_eos_id(const tokenizer *t); /* -1 if none */
/* Id of a vocabulary string or added/special token content; -1 if absent. */
int32_t tok_piece_to_id(const tokenizer *t, const char *piece);
/* The raw vocabulary string of id ("▁the", "Ġthe", "<0x0A>", "<s>"), owned by
 * the tokenizer; NULL if id is out of range or unused. */
const char *tok_id_to_piece(const tokenizer *t, int32_t id);
/* 1 if id is a special token (dropped by skip_special decoding), else 0. */
int tok_is_special(const tokenizer *t, int32_t id);

/* Encodes text[len] (UTF-8; each ill-formed subsequence is read as one U+FFFD,
 * as Python's bytes.decode("utf-8", "replace") does before HF sees it; NUL
 * bytes are ordinary characters). add_special: apply the post-processor, as
 * encode(text, add_special_tokens=True). On success *ids is malloc'd (caller
 * frees; non-NULL even when *n == 0). On failure *ids is NULL, *n is 0.
 * Thread-safe. */
moe_status tok_encode(const tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids,
                      size_t *n);

/* Decodes ids like HF decode(ids, skip_special_tokens=skip_special): ids that
 * name no token are skipped, as HF does. *text is malloc'd and NUL-terminated
 * (caller frees), *len its length without the NUL (len may be NULL).
 * Thread-safe. */
moe_status tok_decode(const tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
                      size_t *len);

/* Streaming detokenizer. Push one id at a time; it emits only whole UTF-8
 * characters, and what it emits, followed by detok_flush's output, is exactly
 * tok_decode of all ids pushed since detok_new / detok_reset / the last
 * flush (tok_decode runs this same code). Text is held back only while a
 * later id could still change it: an incomplete UTF-8 sequence (byte-level),
 * a run of <0xNN> byte tokens (byte fallback), trailing characters a Strip
 * decoder may remove, a partial Replace pattern. The detok keeps a pointer to
 * t, which must outlive it. */
typedef struct detok detok;
moe_status detok_new(const tokenizer *t, int skip_special, detok **out);
void detok_free(detok *d); /* NULL ok */
/* Appends the newly final text to *out, a malloc'd buffer owned by the caller
 * (*out may be NULL with *out_len 0; it is realloc'd as needed and left
 * NUL-terminated and non-NULL); *out_len is its length without the NUL. */
moe_status detok_push(detok *d, int32_t id, char **out, size_t *out_len);
/* Appends whatever is held back, finished as tok_decode would (an incomplete
 * UTF-8 tail becomes U+FFFD, ...), then resets the detok for a new stream. */
moe_status detok_flush(detok *d, char **out, size_t *out_len);
/* Drops held-back text and starts a new stream. */
void detok_reset(detok *d);

#endif
