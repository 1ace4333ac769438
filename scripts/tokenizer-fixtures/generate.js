// generate.js — expected ids/texts for tests/test_tokenizer.c, computed by
// Hugging Face tokenizers (the Rust library, through its Node binding).
//
// Usage (from this folder): npm install && node corpus.js && node generate.js
//
// For each tokenizer it writes tests/data/tokenizer/expected_<name>.jsonl:
//   {"i": k, "ids": encode(text, add_special_tokens=false),
//    "ids_special": encode(text, add_special_tokens=true),
//    "decode": decode(ids_special, skip_special_tokens=false),
//    "decode_skip": decode(ids_special, skip_special_tokens=true)}  for corpus line k
//   {"rand_ids": [...], "decode": ..., "decode_skip": ...}  random id sequences
//     (incomplete UTF-8, byte tokens, specials) to exercise the decoders.
// Synthetic variants of stories260K exercise the Metaspace pre-tokenizer and
// decoder (the scheme of newer Mistral/Llama tokenizers), NFKC/NFD/Lowercase and
// added-token flags; they are written to tests/data/tokenizer/<variant>/tokenizer.json.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const zlib = require('zlib');
const { Tokenizer } = require('tokenizers');

const root = path.resolve(__dirname, '../..');
const dataDir = path.join(root, 'tests/data/tokenizer');
const texts = fs.readFileSync(path.join(dataDir, 'corpus.jsonl'), 'utf8').split('\n').filter(Boolean)
  .map((l) => JSON.parse(l).text);

// The large tokenizers are stored as tokenizer.json.gz; unpack one to a
// temporary file for Tokenizer.fromFile.
function unpackedTokenizer(name) {
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'prism-tok-')), 'tokenizer.json');
  fs.writeFileSync(out, zlib.gunzipSync(fs.readFileSync(path.join(dataDir, name, 'tokenizer.json.gz'))));
  return out;
}
const qwen3Json = unpackedTokenizer('qwen3');
const llama3Json = unpackedTokenizer('llama3');

function writeVariant(name, edit) {
  const src = path.join(root, 'models/stories260K');
  const tj = JSON.parse(fs.readFileSync(path.join(src, 'tokenizer.json'), 'utf8'));
  edit(tj);
  const dir = path.join(dataDir, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tj, null, 1) + '\n');
  fs.copyFileSync(path.join(src, 'tokenizer_config.json'), path.join(dir, 'tokenizer_config.json'));
  return path.join(dir, 'tokenizer.json');
}

const metaFirst = writeVariant('stories260K_metaspace', (tj) => {
  tj.normalizer = { type: 'NFKC' };
  tj.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false };
  tj.decoder = { type: 'Sequence', decoders: [
    { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false },
    { type: 'ByteFallback' }, { type: 'Fuse' }] };
});
const metaSplit = writeVariant('stories260K_split', (tj) => {
  tj.normalizer = { type: 'Sequence', normalizers: [{ type: 'NFD' }, { type: 'Lowercase' }] };
  tj.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true };
});

// Added tokens with lstrip / rstrip / single_word / normalized flags.
const withAdded = writeVariant('stories260K_added', (tj) => {
  const add = (id, content, o) => tj.added_tokens.push(Object.assign(
    { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: false }, o));
  add(512, '<mask>', { lstrip: true, special: true });
  add(513, '[SEP]', { rstrip: true });
  add(514, 'cat', { single_word: true });
  add(515, 'dog house', { normalized: true });
  add(516, 'lol', { normalized: true });
  add(517, '<mask>>', {});
});

// Small byte-level BPE tokenizers cut from Qwen3's first 4000 merges, with the
// GPT-2 style ByteLevel pre-tokenizer (use_regex) that SmolLM/GPT-2 use.
function writeByteLevelVariant(name, preTokenizer) {
  const q = JSON.parse(fs.readFileSync(qwen3Json, 'utf8'));
  const vocab = {};
  let n = 0;
  for (const [tok, id] of Object.entries(q.model.vocab)) if (id < 256) vocab[tok] = id, n = Math.max(n, id + 1);
  const merges = [];
  for (const [a, b] of q.model.merges.slice(0, 4000)) {
    if (!(a in vocab) || !(b in vocab)) continue;
    merges.push([a, b]);
    if (!((a + b) in vocab)) vocab[a + b] = n++;
  }
  const added = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'].map((c, k) => (
    { id: n + k, content: c, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  const tj = {
    version: '1.0', truncation: null, padding: null, added_tokens: added, normalizer: null,
    pre_tokenizer: preTokenizer,
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges },
  };
  const dir = path.join(dataDir, name);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tj) + '\n');
  return path.join(dir, 'tokenizer.json');
}
const smol = writeByteLevelVariant('bytelevel_smollm', { type: 'Sequence', pretokenizers: [
  { type: 'Digits', individual_digits: true },
  { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true }] });
const gpt2 = writeByteLevelVariant('bytelevel_gpt2', { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true });

const tokenizers = {
  qwen3: qwen3Json,
  llama3: llama3Json,
  stories260K: path.join(root, 'models/stories260K/tokenizer.json'),
  stories260K_metaspace: metaFirst,
  stories260K_split: metaSplit,
  stories260K_added: withAdded,
  bytelevel_smollm: smol,
  bytelevel_gpt2: gpt2,
};

// Deterministic PRNG (mulberry32) so reruns give identical fixtures.
function rng(seed) {
  return () => {
    seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

(async () => {
  for (const [name, file] of Object.entries(tokenizers)) {
    const tok = Tokenizer.fromFile(file);
    const lines = [];
    let nIds = 0;
    for (let i = 0; i < texts.length; i++) {
      const ids = (await tok.encode(texts[i], null, { addSpecialTokens: false })).getIds();
      const idsSpecial = (await tok.encode(texts[i], null, { addSpecialTokens: true })).getIds();
      const decode = await tok.decode(idsSpecial, false);
      const decodeSkip = await tok.decode(idsSpecial, true);
      nIds += ids.length + idsSpecial.length;
      lines.push(JSON.stringify({ i, ids, ids_special: idsSpecial, decode, decode_skip: decodeSkip }));
    }
    // Random id sequences: mostly low-level pieces (bytes, partial UTF-8), some specials.
    const n = tok.getVocabSize(true);
    const r = rng(1234);
    const vocab = tok.getVocab(true);
    const specials = Object.values(vocab).filter((id) => id >= n - 300 || id < 3).sort((a, b) => a - b); // getVocab order varies
    for (let k = 0; k < 60; k++) {
      const len = 1 + Math.floor(r() * 12);
      const ids = [];
      for (let j = 0; j < len; j++) {
        const u = r();
        if (u < 0.1) ids.push(specials[Math.floor(r() * specials.length)]);
        else if (u < 0.6) ids.push(Math.floor(r() * Math.min(n, 300)));
        else ids.push(Math.floor(r() * n));
      }
      lines.push(JSON.stringify({ rand_ids: ids, decode: await tok.decode(ids, false), decode_skip: await tok.decode(ids, true) }));
    }
    const out = path.join(dataDir, `expected_${name}.jsonl`);
    fs.writeFileSync(out, lines.join('\n') + '\n');
    console.log(`${name}: ${texts.length} texts, ${nIds} ids -> ${path.relative(root, out)}`);
  }
})();
