/* prism.h — public C API of prism, a C engine for Hugging Face causal LMs
 * (Llama-3.x, Mistral, Qwen2.5, Qwen3) and the PRISM persona router.
 *
 * Conventions
 *  - Opaque handles: prism_model, prism_tokenizer, prism_chat, prism_ctx,
 *    prism_sampler, prism_decoder. Each has a *_free that accepts NULL.
 *  - Parameters come as structs returned by value from *_default_params().
 *  - Every fallible function returns prism_status; on failure a
 *    human-readable message (file, tensor, expected vs found) is available
 *    from prism_last_error() in the same thread. The library never exits.
 *  - Token ids are int32_t. Memory handed back with "caller frees" is
 *    released with free().
 */
#ifndef PRISM_H
#define PRISM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- errors */
typedef enum {
    PRISM_OK = 0,
    PRISM_E_IO = 1,          /* file missing or unreadable */
    PRISM_E_FORMAT = 2,      /* malformed or inconsistent file contents */
    PRISM_E_UNSUPPORTED = 3, /* valid input prism does not handle (architecture, dtype, template) */
    PRISM_E_ARG = 4,         /* invalid argument or option */
    PRISM_E_NOMEM = 5,       /* allocation failed */
    PRISM_E_RANGE = 6,       /* out of capacity: context full, too many sequences */
} prism_status;

const char *prism_status_str(prism_status s);
/* Message of the most recent failure in this thread ("" if none). */
const char *prism_last_error(void);

/* ---------------------------------------------------------------- sampling parameters */
typedef struct {
    float temperature;    /* 0 = greedy (argmax) */
    int32_t top_k;        /* 0 = off */
    float top_p;          /* 1 = off */
    float min_p;          /* 0 = off */
    float repeat_penalty; /* 1 = off; HF/CTRL-style: logit>0 ? l/p : l*p */
    int32_t repeat_last_n;/* window of previous tokens penalised; -1 = whole sequence */
    uint64_t seed;
} prism_sampling_params;

/* ---------------------------------------------------------------- model */
typedef struct prism_model prism_model;
typedef struct prism_adapter prism_adapter; /* a LoRA adapter, see below */

typedef enum {
    PRISM_PRECISION_EXACT = 0, /* F32 activations, F32 accumulation: matches transformers to ~1e-6 */
    PRISM_PRECISION_FAST = 1,  /* BF16 activations for BF16 weights in large matmuls (prefill) */
} prism_precision;

#define PRISM_DEVICE_CPU (-1)

typedef struct {
    int32_t n_threads;         /* 0 = all cores (OpenMP default) */
    prism_precision precision; /* default PRISM_PRECISION_FAST (CPU); CUDA always runs BF16 matmuls */
    int32_t device;            /* PRISM_DEVICE_CPU, or a CUDA device index: the weights, KV cache and
                                  forward pass live on that GPU. Default: $PRISM_DEVICE if set
                                  ("cpu", "cuda", "cuda:N"), else the CPU. */
} prism_model_params;

prism_model_params prism_model_default_params(void);

/* Parses "cpu", "cuda", "cuda:N" into a device for prism_model_params. */
prism_status prism_device_parse(const char *s, int32_t *device);
/* One line about a device ("cpu", or the GPU's name, compute capability,
 * memory and the CUDA module's build); fails with the reason a CUDA device
 * cannot be used (no module in this build, no driver, no such device). */
prism_status prism_device_describe(int32_t device, char *buf, size_t n);

/* Loads a Hugging Face model directory: config.json, model.safetensors or
 * model.safetensors.index.json + shards, generation_config.json (optional).
 * Weights stay in their stored dtype inside a read-only mmap. */
prism_status prism_model_load(const char *dir, prism_model_params params, prism_model **out);
void prism_model_free(prism_model *m);

typedef struct {
    char arch[64];        /* e.g. "Qwen2ForCausalLM" */
    char model_type[32];  /* "llama", "mistral", "qwen2", "qwen3" */
    char dtype[8];        /* dominant stored weight dtype: "F32", "BF16", "F16" */
    int32_t n_layers, hidden, n_heads, n_kv_heads, head_dim, ffn, vocab, max_pos;
    float rope_theta, rms_eps;
    char rope_type[16];   /* "default", "llama3", "linear" */
    bool tied_embeddings, qkv_bias, qk_norm;
    int32_t bos_id;       /* -1 if none */
    int32_t n_eos;
    int32_t eos_ids[8];
    int64_t n_params;
    int64_t weight_bytes; /* bytes of all weight tensors as stored */
} prism_model_info;

void prism_model_get_info(const prism_model *m, prism_model_info *info);
/* Sampling defaults from generation_config.json (do_sample, temperature,
 * top_p, top_k, repetition_penalty); greedy when do_sample is false or absent. */
prism_sampling_params prism_model_sampling_defaults(const prism_model *m);
/* KV-cache bytes per token per sequence (all layers, K and V, F32). */
int64_t prism_model_kv_bytes_per_token(const prism_model *m);

/* ---------------------------------------------------------------- tokenizer */
typedef struct prism_tokenizer prism_tokenizer;

/* Loads tokenizer.json (+ tokenizer_config.json if present) from dir. */
prism_status prism_tokenizer_load(const char *dir, prism_tokenizer **out);
void prism_tokenizer_free(prism_tokenizer *t);

int32_t prism_tokenizer_n_vocab(const prism_tokenizer *t);
int32_t prism_tokenizer_bos(const prism_tokenizer *t); /* -1 if none */
int32_t prism_tokenizer_eos(const prism_tokenizer *t); /* -1 if none */
/* Id of a token string (vocab or added token), -1 if absent. */
int32_t prism_tokenizer_token_id(const prism_tokenizer *t, const char *piece);
/* True for added tokens marked special (e.g. <|im_end|>). */
bool prism_tokenizer_is_special(const prism_tokenizer *t, int32_t id);

/* Text -> ids exactly as Hugging Face tokenizers' encode().
 * add_special: apply the post-processor (e.g. prepend BOS) as
 *   encode(add_special_tokens=True) does.
 * Added tokens (special or not) in the text are always matched, as HF does.
 * *ids is allocated (caller frees), *n_ids receives the count. */
prism_status prism_tokenize(const prism_tokenizer *t, const char *text, size_t len, bool add_special,
                            int32_t **ids, size_t *n_ids);

/* Ids -> text exactly as HF decode(ids, skip_special_tokens). Caller frees *text. */
prism_status prism_detokenize(const prism_tokenizer *t, const int32_t *ids, size_t n_ids, bool skip_special,
                              char **text);

/* Incremental decoding for streaming: push ids one at a time, receive only
 * complete UTF-8 text; the concatenation of all outputs equals
 * prism_detokenize of all pushed ids. */
typedef struct prism_decoder prism_decoder;
prism_decoder *prism_decoder_new(const prism_tokenizer *t, bool skip_special);
/* Returns a NUL-terminated string owned by the decoder, valid until the next
 * call (possibly ""). NULL only on allocation failure. */
const char *prism_decoder_push(prism_decoder *d, int32_t id);
/* Remaining buffered text (e.g. an incomplete UTF-8 sequence, emitted as U+FFFD). */
const char *prism_decoder_flush(prism_decoder *d);
void prism_decoder_free(prism_decoder *d);

/* ---------------------------------------------------------------- chat templates */
typedef struct prism_chat prism_chat;

typedef struct {
    const char *role;    /* "system", "user", "assistant" */
    const char *content;
} prism_chat_message;

/* Recognises the family of tokenizer_config.json's chat_template in dir.
 * name_override: NULL, or one of "chatml" (Qwen2.5), "chatml-plain", "qwen3",
 * "qwen3-nothink", "llama3", "llama3.1", "mistral" (v0.3), "mistral-v0.1",
 * "llama2", "raw"; overrides detection. Fails with
 * PRISM_E_UNSUPPORTED naming the override option for unknown templates. */
prism_status prism_chat_load(const char *dir, const char *name_override, prism_chat **out);
void prism_chat_free(prism_chat *c);
const char *prism_chat_name(const prism_chat *c);
/* False for templates with no system role (Mistral). */
bool prism_chat_has_system_role(const prism_chat *c);
/* Renders the conversation as the family's chat_template would (with
 * add_generation_prompt). Caller frees *text. The text includes special
 * tokens such as <|im_start|> literally; tokenize it with add_special=false
 * (the BOS, where the template has one, is part of the text). */
prism_status prism_chat_render(const prism_chat *c, const prism_chat_message *msgs, size_t n_msgs,
                               bool add_generation_prompt, char **text);
/* Renders an optional system text and the turns user[0], assistant[0],
 * user[1], ... (n_user user turns, n_user - 1 assistant turns). For templates
 * without a system role the system text goes before the first user message,
 * separated by a blank line. Caller frees *text. */
prism_status prism_chat_render_turns(const prism_chat *c, const char *system, const char *const *user,
                                     const char *const *assistant, size_t n_user, bool add_generation_prompt,
                                     char **text);

/* ---------------------------------------------------------------- inference context */
typedef struct prism_ctx prism_ctx;

typedef struct {
    int32_t n_seq_max; /* sequences held at once (KV cache slots) */
    int32_t n_ctx;     /* max tokens per sequence; 0 = min(max_position_embeddings, 4096) */
    int32_t n_batch;   /* max tokens per prism_decode call */
} prism_ctx_params;

prism_ctx_params prism_ctx_default_params(void);
prism_status prism_ctx_new(prism_model *m, prism_ctx_params p, prism_ctx **out);
void prism_ctx_free(prism_ctx *c);
/* Forget the cached tokens of sequence seq (positions restart at 0). */
void prism_ctx_seq_clear(prism_ctx *c, int32_t seq);
/* Number of positions cached for seq. */
int32_t prism_ctx_seq_len(const prism_ctx *c, int32_t seq);
/* Routes sequence seq through adapter a (NULL = the base model) from the next
 * layer run on. Sequences with different adapters share a batch; the adapter
 * must outlive its use. Layers an adapter does not target run as the base. */
prism_status prism_ctx_seq_set_adapter(prism_ctx *c, int32_t seq, const prism_adapter *a);
/* Drops cached positions >= len of seq (keeps a shared prefix). */
void prism_ctx_seq_truncate(prism_ctx *c, int32_t seq, int32_t len);
/* Token ids cached for seq (prism_ctx_seq_len of them). */
const int32_t *prism_ctx_seq_tokens(const prism_ctx *c, int32_t seq);

/* A batch of tokens from one or more sequences. Token i goes to sequence
 * seq[i] at position pos[i]; per sequence, positions must continue that
 * sequence's cache (pos == cached length, then +1 per token, in order).
 * want_logits[i] != 0 requests logits for token i (NULL = last token of each
 * sequence in the batch). */
typedef struct {
    int32_t n_tokens;
    const int32_t *token;
    const int32_t *pos;
    const int32_t *seq;
    const int8_t *want_logits;
} prism_batch;

/* Runs the whole model on the batch: embeddings, all layers, final norm and
 * the LM head for the requested tokens. */
prism_status prism_decode(prism_ctx *c, const prism_batch *b);

/* Runs layers [layer_begin, layer_end) on the batch. layer_begin == 0 starts
 * from the embeddings; otherwise the batch must be the same one given to the
 * previous call, whose layer_end was layer_begin. After a call, the hidden
 * states (residual stream) after layer layer_end-1 are available with
 * prism_get_hidden. prism_decode_head then applies the final norm + LM head
 * once layer_end == n_layers. This lets a caller read layer 0's output (the
 * PRISM gate feature) before the rest of the prefill runs. */
prism_status prism_decode_layers(prism_ctx *c, const prism_batch *b, int32_t layer_begin, int32_t layer_end);
prism_status prism_decode_head(prism_ctx *c);

/* Logits [vocab] of the i-th token of the last batch (which must have asked
 * for them); NULL otherwise. Valid until the next decode call. */
const float *prism_get_logits(const prism_ctx *c, int32_t i);
/* The first index of the largest logit of the i-th token of the last batch
 * (-1 if it asked for none, or on a device error). On a CUDA context this is
 * computed on the GPU and needs no copy of the logits. */
int32_t prism_get_argmax(const prism_ctx *c, int32_t i);
/* Hidden state [hidden] of the i-th token of the last batch after the last
 * layer run (HF hidden_states[layer_end]); after prism_decode_head this is
 * the final-normed state (HF hidden_states[n_layers]). */
const float *prism_get_hidden(const prism_ctx *c, int32_t i);
int32_t prism_ctx_n_vocab(const prism_ctx *c);
int32_t prism_ctx_n_embd(const prism_ctx *c);
int32_t prism_ctx_n_layers(const prism_ctx *c);

/* ---------------------------------------------------------------- LoRA adapters */

/* Target projections, as bits of prism_lora_params.targets. */
enum {
    PRISM_LORA_Q = 1 << 0, PRISM_LORA_K = 1 << 1, PRISM_LORA_V = 1 << 2, PRISM_LORA_O = 1 << 3,
    PRISM_LORA_GATE = 1 << 4, PRISM_LORA_UP = 1 << 5, PRISM_LORA_DOWN = 1 << 6,
    PRISM_LORA_ALL = 0x7f,
};

typedef struct {
    int32_t r;           /* rank (default 16) */
    float alpha;         /* lora_alpha (default 32) */
    bool use_rslora;     /* scale alpha/sqrt(r) instead of alpha/r */
    uint32_t targets;    /* PRISM_LORA_* bits (default all seven) */
    int32_t layer_begin; /* adapted layers [layer_begin, layer_end); default 1 .. n_layers */
    int32_t layer_end;   /* 0 = n_layers */
    uint64_t seed;       /* initialisation: A ~ PEFT's kaiming-uniform, B = 0 */
} prism_lora_params;

prism_lora_params prism_lora_default_params(void);
/* A fresh adapter for m, initialised as PEFT does (so it starts as the base model). */
prism_status prism_adapter_new(const prism_model *m, prism_lora_params p, prism_adapter **out);
/* Reads a PEFT adapter directory (adapter_config.json + adapter_model.safetensors,
 * F32/BF16/F16) and checks it against m. DoRA, modules_to_save, LoRA biases and
 * other variants are refused with PRISM_E_UNSUPPORTED. */
prism_status prism_adapter_load(const prism_model *m, const char *dir, prism_adapter **out);
/* Writes a PEFT adapter directory that PEFT loads unchanged. dtype: "F32",
 * "BF16" or "F16" (NULL = F32). Files are written atomically. */
prism_status prism_adapter_save(const prism_adapter *a, const char *dir, const char *dtype);
void prism_adapter_free(prism_adapter *a);
const char *prism_adapter_name(const prism_adapter *a);
/* Writes base weights + scale·B·A merged into the target projections as a Hugging
 * Face checkpoint directory (config, generation config, tokenizer files copied). */
prism_status prism_adapter_export_merged(const prism_model *m, const prism_adapter *a, const char *out_dir);

/* ---------------------------------------------------------------- PRISM routing */
/* A bootstrapped PRISM run: the base model's persona adapter and the gate that
 * reads the hidden state after layer 0 at the last prompt token. */
typedef struct prism_router prism_router;

typedef enum {
    PRISM_ROUTE_AUTO = 0,    /* the gate decides */
    PRISM_ROUTE_BASE = 1,    /* force the base model (the gate is still scored) */
    PRISM_ROUTE_ADAPTER = 2, /* force the adapter (the gate is still scored) */
} prism_route_mode;

/* Loads RUN_DIR/adapter (PEFT) and RUN_DIR/gate.safetensors for model m; fails
 * if RUN_DIR/prism.json records a different base model (config.json hash). */
prism_status prism_router_load(const prism_model *m, const char *run_dir, prism_router **out);
void prism_router_free(prism_router *r);
const prism_adapter *prism_router_adapter(const prism_router *r);
float prism_router_threshold(const prism_router *r);
/* Gate probability that the persona adapter helps, from a layer-0 hidden state (hidden). */
float prism_router_prob(const prism_router *r, const float *hidden);
/* The gate's decision for a layer-0 hidden state: true = adapter; *prob (may be NULL) gets the probability. */
bool prism_router_decide(const prism_router *r, const float *hidden, float *prob);
/* The gate at rows rows[0..n) of c's last batch, which has run layer 0 (each row a prompt's last token):
 * on[i] = the adapter, prob[i] = the probability (either may be NULL). On a CUDA context of the model the
 * router was loaded for, the gate runs on the device, where the residual stream is; else on the host. */
prism_status prism_router_decide_rows(const prism_router *r, prism_ctx *c, const int32_t *rows, int32_t n, bool *on,
                                      float *prob);
/* Routes rows rows[0..n) of batch b, which c has just run through layer 0 (each row a fresh sequence's last
 * prompt token): the gate reads each row (prism_router_decide_rows) and the row's sequence gets the router's
 * adapter when mode is PRISM_ROUTE_ADAPTER, or PRISM_ROUTE_AUTO and the gate opens; no adapter otherwise.
 * prob[i] = the gate's probability, adapter[i] = whether the adapter was set (either may be NULL). */
prism_status prism_router_route_rows(const prism_router *r, prism_ctx *c, const prism_batch *b, const int32_t *rows,
                                     int32_t n, prism_route_mode mode, float *prob, bool *adapter);
/* Parses "auto", "base", "adapter"; -1 if unknown. */
int prism_route_mode_parse(const char *s);

/* One routed forward pass over a batch that holds whole prompts starting at
 * position 0: layer 0, then the gate at each sequence's last token in the
 * batch sets that sequence's adapter, then layers 1..L-1 and the LM head —
 * a single prefill. probs[seq] and routed[seq] (may be NULL; indexed by
 * sequence id, n_seq_max long) receive the gate probability and decision. */
prism_status prism_decode_routed(prism_ctx *c, const prism_batch *b, const prism_router *r, prism_route_mode mode,
                                 float *probs, bool *routed);

/* ---------------------------------------------------------------- sampling */
prism_sampling_params prism_sampling_default_params(void);

typedef struct prism_sampler prism_sampler;
prism_sampler *prism_sampler_new(prism_sampling_params p);
void prism_sampler_free(prism_sampler *s);
/* Picks a token from logits [n_vocab]. history: previous ids of the sequence
 * (prompt + generated) for the repetition penalty. logits may be modified. */
int32_t prism_sampler_sample(prism_sampler *s, float *logits, int32_t n_vocab, const int32_t *history,
                             size_t n_history);

/* True when prism_sampler_sample reduces to the argmax of the raw logits
 * (greedy, no repetition penalty), so callers may use prism_get_argmax. */
bool prism_sampler_is_greedy(const prism_sampler *s);

/* True when prism_sampler_sample over n_vocab logits reduces to a draw from
 * softmax(logits · inv_t) over the whole vocabulary — temperature > 0, no
 * top-k below n_vocab, top-p 1, min-p 0, no repetition penalty — with
 * 1/temperature into *inv_t. The draw is then prism_sample_softmax(logits,
 * n_vocab, *inv_t, prism_sampler_next_u(s)), which is how batched generation
 * samples such rows on a GPU without copying their logits. */
bool prism_sampler_is_softmax(const prism_sampler *s, int32_t n_vocab, float *inv_t);
/* The uniform number in [0, 1) the sampler's next draw uses (advances its generator as a draw would). */
double prism_sampler_next_u(prism_sampler *s);
/* The draw itself: the first id i (in id order) whose cumulative weight
 * Σ_{j<=i} expf(l_j·inv_t − max) exceeds u times the total (sums in double),
 * else the last id of nonzero weight. inv_t > 0. */
int32_t prism_sample_softmax(const float *logits, int32_t n_vocab, float inv_t, double u);

/* ---------------------------------------------------------------- generation */
typedef struct {
    prism_sampling_params sampling;
    int32_t max_new_tokens;
    bool ignore_eos;
    const char *const *stop;  /* stop strings (not included in the output) */
    int32_t n_stop;
    const int32_t *eos_ids;   /* NULL = the model's eos ids (config + generation_config) */
    int32_t n_eos;
    bool reuse_cache;         /* keep each sequence's longest cached prefix of its prompt
                                 instead of clearing it (multi-turn chat, shared prefixes) */
    const uint64_t *seeds;    /* per-prompt sampler seeds (NULL = sampling.seed + i), so a
                                 prompt's sample does not depend on its place in a batch */
    const prism_router *router; /* PRISM routing (NULL = none): a sequence starting fresh is
                                 routed by the gate at its last prompt token; a continued one
                                 (reuse_cache) keeps the route of its first turn */
    prism_route_mode route;
} prism_generate_params;

prism_generate_params prism_generate_default_params(void);

typedef enum {
    PRISM_FINISH_LENGTH = 0,
    PRISM_FINISH_EOS = 1,
    PRISM_FINISH_STOP = 2,
    PRISM_FINISH_CONTEXT = 3,
} prism_finish_reason;

/* Called for each generated token of sequence i (index into the prompts);
 * text is the newly completed UTF-8 text (may be ""). Return false to stop
 * that sequence. */
typedef bool (*prism_token_cb)(void *user, int32_t i, int32_t token, const char *text);

typedef struct {
    int32_t *tokens;      /* generated ids (caller frees) */
    int32_t n_tokens;
    char *text;           /* generated text, stop string removed (caller frees) */
    prism_finish_reason finish;
    float gate_prob;      /* PRISM gate probability (-1 without a router or when the route was held) */
    bool routed_adapter;  /* true if the sequence ran on the router's adapter */
} prism_generation;

typedef struct {
    double prefill_s, decode_s;
    int64_t prefill_tokens, decode_tokens;
} prism_generate_stats;

/* Generates continuations of n prompts together (batched prefill, batched
 * decode), using sequences 0..n-1 of the context (cleared first). The
 * tokenizer may be NULL (then no text, no stop strings). out[n] receives
 * results; stats may be NULL. Sequence i's sampler is seeded with seed + i. */
prism_status prism_generate(prism_ctx *c, const prism_tokenizer *t, const int32_t *const *prompts,
                            const int32_t *prompt_lens, int32_t n, const prism_generate_params *p,
                            prism_token_cb cb, void *user, prism_generation *out, prism_generate_stats *stats);
void prism_generation_clear(prism_generation *g);

#ifdef __cplusplus
}
#endif
#endif /* PRISM_H */
