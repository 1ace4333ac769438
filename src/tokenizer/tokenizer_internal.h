/* tokenizer_internal.h — the Hugging Face tokenizers pipeline as prism runs it:
 *   added-token split -> normalizer -> pre-tokenizer -> BPE model -> post-processor
 * and for ids -> text: id -> token string -> decoder chain.
 * Only what tokenizer.json files of Llama-2/3, Mistral, Qwen2.5/3 and SmolLM use
 * is implemented; anything else is rejected at load time as unsupported. */
#ifndef PRISM_TOKENIZER_INTERNAL_H
#define PRISM_TOKENIZER_INTERNAL_H

#include "prism.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- byte buffer */
typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} tk_buf;

void tk_buf_put(tk_buf *b, const void *s, size_t n);
static inline void tk_buf_putc(tk_buf *b, char c) { tk_buf_put(b, &c, 1); }
void tk_buf_put_cp(tk_buf *b, uint32_t cp); /* UTF-8 encode */

/* Length of the UTF-8 sequence starting with byte c (1 for invalid bytes). */
static inline int tk_u8len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }
/* Decodes one code point from valid UTF-8 at s (n bytes left); sets *len. */
uint32_t tk_u8dec(const char *s, size_t n, int *len);
/* Offset of the first invalid byte, or (size_t)-1 if s[0..n) is valid UTF-8. */
size_t tk_u8invalid(const char *s, size_t n);
/* Appends s as Rust's String::from_utf8_lossy does (one U+FFFD per maximal invalid subpart). */
void tk_buf_put_lossy(tk_buf *b, const char *s, size_t n);
bool tk_is_space_cp(uint32_t cp); /* Rust char::is_whitespace */

/* ---------------------------------------------------------------- string -> id map */
typedef struct {
    uint32_t *slots; /* index+1 into keys, 0 = empty */
    uint32_t mask;
    const char **key;
    uint32_t *klen;
    int32_t *val;
    uint32_t n, cap;
} tk_strmap;

int tk_strmap_init(tk_strmap *m, uint32_t expected);
void tk_strmap_free(tk_strmap *m);
/* Inserts or overwrites; key memory must outlive the map. 0 on success. */
int tk_strmap_put(tk_strmap *m, const char *k, uint32_t klen, int32_t v);
int32_t tk_strmap_get(const tk_strmap *m, const char *k, size_t klen); /* -1 if absent */

/* ---------------------------------------------------------------- normalizers */
typedef enum { NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_PREPEND, NORM_REPLACE, NORM_LOWERCASE, NORM_STRIP } tk_norm_kind;

typedef struct {
    tk_norm_kind kind;
    char *a, *b;      /* Prepend: a; Replace: a = literal pattern (or NULL with re), b = content */
    pcre2_code *re;   /* Replace with a Regex pattern */
    bool left, right; /* Strip */
} tk_norm;

/* Normalizes s[0..n) through the chain into out (out is reset first). */
prism_status tk_normalize(const tk_norm *steps, int n_steps, const char *s, size_t n, tk_buf *out);

/* ---------------------------------------------------------------- pre-tokenizers */
typedef enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS } tk_split_behavior;
typedef enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE, PRE_DIGITS } tk_pre_kind;
typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } tk_prepend_scheme;

typedef struct {
    tk_pre_kind kind;
    pcre2_code *re;             /* Split (Regex or escaped String), ByteLevel with use_regex */
    tk_split_behavior behavior; /* Split */
    bool invert;                /* Split */
    bool add_prefix_space;      /* ByteLevel */
    char repl[8];               /* Metaspace replacement, UTF-8 */
    tk_prepend_scheme prepend;  /* Metaspace */
    bool split;                 /* Metaspace */
    bool individual_digits;     /* Digits */
} tk_pre;

/* Pieces of text: piece i is buf.p[off[i] .. off[i]+len[i]). first[i] marks the
 * piece that starts at offset 0 of the original input (Metaspace "first"). */
typedef struct {
    tk_buf buf;
    size_t *off, *len;
    bool *first;
    size_t n, cap;
} tk_pieces;

void tk_pieces_reset(tk_pieces *p);
void tk_pieces_free(tk_pieces *p);
int tk_pieces_add(tk_pieces *p, const char *s, size_t n, bool first);

/* Runs the pre-tokenizer chain over in, result in out (in is consumed/reset). */
prism_status tk_pretokenize(const tk_pre *steps, int n_steps, tk_pieces *in, tk_pieces *out, pcre2_match_data *md);

/* The GPT-2 byte -> printable code point table (ByteLevel). */
extern uint32_t tk_byte_to_cp[256];
extern int16_t tk_cp_to_byte[0x144]; /* -1 where the code point is not a mapped byte */
void tk_bytelevel_init(void);

/* ---------------------------------------------------------------- decoders */
typedef enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE } tk_dec_kind;

typedef struct {
    tk_dec_kind kind;
    char *a, *b;               /* Replace pattern/content */
    char repl[8];              /* Metaspace replacement */
    tk_prepend_scheme prepend; /* Metaspace */
    uint32_t strip_cp;         /* Strip content */
    int strip_start, strip_stop;
} tk_dec;

/* ---------------------------------------------------------------- added tokens */
typedef struct {
    char *content;
    uint32_t len;
    char *pat; /* text matched: content, or normalize(content) for normalized tokens (owned then) */
    uint32_t pat_len;
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
} tk_added;

/* ---------------------------------------------------------------- post-processor */
typedef struct {
    int32_t *pre, *post; /* ids before / after the sequence for a single input */
    int n_pre, n_post;
} tk_post;

/* ---------------------------------------------------------------- tokenizer */
typedef struct {
    uint64_t *keys;   /* (left id << 32 | right id) + 1, 0 = empty */
    uint32_t *rank;
    int32_t *merged;
    uint64_t mask;
} tk_merges;

struct prism_tokenizer {
    /* model (BPE) */
    tk_strmap vocab;      /* model vocab: token string -> id */
    tk_strmap added_map;  /* added tokens: content -> id */
    char *strpool;        /* all token strings, NUL-separated */
    const char **tok_str; /* [n_vocab] id -> token string (NULL for holes) */
    uint32_t *tok_len;    /* [n_vocab] */
    int32_t n_vocab;
    tk_merges merges;
    int32_t unk_id;
    bool byte_fallback, fuse_unk, ignore_merges;
    int32_t byte_ids[256]; /* id of "<0xNN>" tokens, -1 if absent */

    tk_norm *norm;
    int n_norm;
    tk_pre *pre;
    int n_pre;
    bool bytelevel; /* a ByteLevel pre-tokenizer maps bytes to code points */
    tk_dec *dec;
    int n_dec;
    bool has_decoder;
    bool dec_byte_runs; /* ByteFallback: a run of <0xNN> tokens decodes as a whole */
    tk_post post;

    tk_added *added; /* sorted by (normalized, first byte of pat, pat length descending) */
    int n_added;
    /* added[added_first[g][c] .. added_first[g][c+1]) have pat starting with byte c;
     * group g = 0: matched in the raw text, g = 1: normalized, matched after normalization */
    int added_first[2][257];
    uint8_t *is_special;  /* [n_vocab] */
    bool *is_added;       /* [n_vocab] */

    int32_t bos, eos;
};

int tk_merges_init(tk_merges *m, size_t n);
void tk_merges_free(tk_merges *m);
/* Later duplicates overwrite earlier ones, as in HF. */
void tk_merges_put(tk_merges *m, int32_t a, int32_t b, uint32_t rank, int32_t merged);

/* BPE-encodes one pre-tokenized piece, appending ids to *ids (capacity *cap). */
prism_status tk_bpe_word(const prism_tokenizer *t, const char *s, size_t n, int32_t **ids, size_t *n_ids,
                         size_t *cap);

/* ids -> text through the decoder chain (HF Tokenizer::decode); out is reset first. */
prism_status tk_decode(const prism_tokenizer *t, const int32_t *ids, size_t n_ids, bool skip_special, tk_buf *out);

/* Escapes s as a PCRE2 literal and compiles it, or compiles a regex; NULL + error set on failure. */
pcre2_code *tk_regex_compile(const char *pattern, bool literal, const char *what);

#endif
