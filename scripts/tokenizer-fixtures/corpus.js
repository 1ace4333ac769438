// corpus.js — writes tests/data/tokenizer/corpus.jsonl: the texts whose token
// ids tests/test_tokenizer.c compares with Hugging Face tokenizers.
// Usage (from this folder): node corpus.js
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '../..');
const out = path.join(root, 'tests/data/tokenizer/corpus.jsonl');

const texts = [
  // empty / whitespace
  '', ' ', '  ', '\t', '\n', '\n\n\n', '\r\n', ' \r\n \r\n', '   leading', 'trailing   ', '  both  ',
  'a\tb\t\tc', 'tabs\t\t\tand spaces   mixed \t \t end', 'line1\nline2\n\nline4\n\n\n\nline8',
  'windows\r\nline\r\nendings\r\n', 'x  y   z    w', '\u00a0non-breaking\u00a0space', 'em\u2003space and ideographic\u3000space',
  'NEL\u0085char', 'line\u2028separator', '\u000bvertical\u000ctab-formfeed',
  // English prose
  'Hello world', 'Hello, world!', 'The quick brown fox jumps over the lazy dog.',
  'It\'s a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.',
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine.',
  'Tom and Sam went to the park. They saw a big red ball! "Can we play?" asked Sam.',
  'I\'m sure you\'ll agree: we\'ve done what we\'d planned. They\'re here; it\'s HIS problem.',
  'CONTRACTIONS IN CAPS: I\'LL, YOU\'RE, IT\'S, WE\'VE, SHE\'D, I\'M', 'don\'t can\'t won\'t shouldn\'t y\'all o\'clock',
  '\'s \'t \'re \'ve \'m \'ll \'d', 'rock \'n\' roll', 'She said \u2018hello\u2019 and \u201cgoodbye\u201d.',
  'Mr. Smith paid $1,234.56 for 3.5 kg of apples on 2024-01-15 at 10:30 a.m.',
  'e.g., i.e., etc... ?!?! ... --- *** ###', 'ALL CAPS SENTENCE WITH NUMBERS 123 AND SYMBOLS @#$%',
  'camelCaseIdentifier snake_case_identifier kebab-case-identifier SCREAMING_SNAKE',
  // digits
  '0', '7', '42', '123', '1234', '12345', '123456789', '3.14159265358979323846', '-273.15', '1e-10', '6.022e23',
  '1,000,000', '100000000000000000000000000000', '0x1F 0b1010 0o777', '2+2=4', '1/2 + 3/4 = 5/4',
  'Phone: +1 (555) 123-4567', 'IPv4 192.168.0.1 and IPv6 2001:db8::ff00:42:8329', '١٢٣٤ ٥٦٧ Arabic-Indic digits', '１２３ full-width digits',
  // code
  'int main(void) {\n    printf("hello\\n");\n    return 0;\n}\n',
  '#include <stdio.h>\n#define MAX(a, b) ((a) > (b) ? (a) : (b))\nstatic int x[16];\n',
  'for (size_t i = 0; i < n; i++) { sum += a[i] * b[i]; }',
  'def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n',
  'class Foo:\n    """Docstring."""\n\n    def __init__(self, x: int = 0) -> None:\n        self.x = x\n\n\n',
  'import numpy as np\nx = np.arange(10).reshape(2, 5)\nprint(x.T @ x)',
  '{"name": "prism", "version": 1, "tags": ["c", "llm"], "nested": {"a": null, "b": true}}',
  '[\n  {\n    "id": 1,\n    "value": 3.5\n  }\n]', 'SELECT id, name FROM users WHERE age >= 18 ORDER BY name;',
  '<html><body><p class="x">Hi &amp; bye</p></body></html>', 'fn main() { let v: Vec<u32> = (0..10).collect(); println!("{:?}", v); }',
  '$ ls -la | grep "\\.c$" && make -j8 2>&1 | tee log.txt', '    indented four\n\tindented tab\n        indented eight',
  '    ', '        \n        ', 'x = {\n\t"k":\t[1,\t2]\n}', '// comment\n/* block\n * comment */', 'a==b!=c<=d>=e&&f||g',
  '=====', '------------------------------------------------', '!!!???...', '((((((((', '}}}}}}', '```python\nprint(1)\n```',
  // URLs and mail
  'https://huggingface.co/Qwen/Qwen3-0.6B/blob/main/tokenizer.json?download=true#L10',
  'Visit http://example.com/path_to/file-name.html or mail user.name+tag@example.org',
  'C:\\Users\\Admin\\Documents\\file.txt', '/usr/local/lib/libprism.so.1.2.3',
  // multilingual
  '你好，世界！', '我爱自然语言处理。今天天气很好，我们去公园散步吧。', '中文English混合text测试123',
  'こんにちは世界。日本語のテキストです。カタカナとひらがな。', '東京都渋谷区', '안녕하세요, 세계! 한국어 텍스트입니다.',
  'مرحبا بالعالم. هذا نص باللغة العربية.', 'नमस्ते दुनिया। यह हिंदी पाठ है।', 'Привет, мир! Это русский текст.',
  'Γειά σου Κόσμε! Ελληνικά κείμενα.', 'สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ', 'שלום עולם! טקסט בעברית.',
  'Tiếng Việt có dấu: Xin chào thế giới', 'Ça va? Où est la bibliothèque? Über Straße Größe naïve café',
  'Ελληνικά και English και Русский', 'Ǆ ǅ ǆ İstanbul ıi ß ẞ ﬁ ﬂ', 'Ω Å K (ohm, angstrom, kelvin signs)',
  'ﾊﾝｶｸ half-width katakana', 'ＡＢＣ ｆｕｌｌ ｗｉｄｔｈ', '①②③ ⅰⅱⅲ ½ ¼ ²³', 'ℌℍℎ ℓ №',
  // combining marks and normalization
  'e\u0301', '\u00e9', 'caf\u00e9 vs cafe\u0301', 'A\u030a vs \u00c5 vs \u212b', '\u1100\u1161\u11a8 (jamo) vs \uac01',
  'n\u0303o\u0308\u0301', 'Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u0334\u0335\u031c\u0330\u0354L\u0328\u0337\u036f\u0368\u035b\u0303\u034b\u033e\u0352G\u0489\u031aO',
  'q\u0307\u0323', '\u0915\u093c (nukta)', 'ﬃ ligature', '\u2126\u212a',
  // emoji
  '😀', '😀😃😄😁', 'I ❤️ NY', '👍🏽 👍🏿 👋🏻', '👨‍👩‍👧‍👦 family', '🏳️‍🌈 🏴‍☠️', '🇯🇵🇺🇸🇩🇪 flags',
  '👩🏽‍💻 coding', 'emoji🙂inside🙃words', '1️⃣ 2️⃣ #️⃣', '🧑‍🤝‍🧑', '😀 😀  😀   😀',
  // special tokens inline
  '<|im_start|>user\nhi<|im_end|>', '<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n',
  '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>', '<|begin_of_text|>', '<|end_of_text|>',
  '<s>', '</s>', '<s>[INST] Hi [/INST]', '<s> Hello</s>', 'text<s>more</s>end', '<unk>', ' <s> spaced </s> ',
  '<|endoftext|>', 'before<|endoftext|>after', '<think>\nreasoning\n</think>\n\nanswer', '<tool_call>{"a":1}</tool_call>',
  '<|im_start|><|im_end|><|im_start|>', '<|im_start', 'im_end|>', '< |im_start| >', '<<s>>', '<|reserved_special_token_5|>',
  '<|eot_id|><|eot_id|>', '<|fim_prefix|>def<|fim_suffix|>x<|fim_middle|>',
  // added-token flags (stories260K_added): lstrip, rstrip, single_word, normalized
  'a  <mask> b', '<mask>   x', 'x\t\n<mask><mask>>', 'one [SEP]   two [SEP]', 'the cat sat', 'concatenate cats cat_x', 'cat',
  'a cat, a catalog', 'the dog house and the doghouse', 'dog house', 'lol lolly xlol LOL', 'lol',
  // unusual but valid
  '\u0000nul', 'bell\u0007char', '\u007f', '\u200b zero width \u200c\u200d', '\ufeffBOM', '\ufffd replacement', '\uffff\ufffe',
  '\ud800\udc00 U+10000', '\udbff\udfff U+10FFFF', '\ue000 private use', '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙', '𓀀 hieroglyph',
  '\u0301 leading combining', 'x\u0300\u0301\u0302\u0303\u0304', '\u202eRTL override\u202c', 'a'.repeat(100), 'ab'.repeat(64),
  '.'.repeat(50), ' '.repeat(33), '\n'.repeat(20), '1'.repeat(40), 'é'.repeat(30), '中'.repeat(50), '\t \n'.repeat(10),
  'supercalifragilisticexpialidocious', 'pneumonoultramicroscopicsilicovolcanoconiosis', 'Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch',
  'ThisIsAVeryLongIdentifierWithoutAnySpacesAtAllJustCapitalLettersToSeparateWords',
];

// Natural prompts: MT-Bench questions (Apache-2.0) and XSTest prompts (CC-BY-4.0).
const shared = '/work/shared/data';
try {
  const lines = fs.readFileSync(path.join(shared, 'mt_bench/question.jsonl'), 'utf8').split('\n').filter(Boolean);
  for (const l of lines.slice(0, 40)) texts.push(JSON.parse(l).turns[0]);
} catch (e) { console.error('mt_bench not found, skipped'); }

// Generated mixes: numbers with spaces, whitespace permutations, mixed scripts.
const ws = [' ', '  ', '\t', '\n', ' \n', '\n ', '\r\n', '\n\n'];
for (let i = 0; i < ws.length; i++) for (let j = 0; j < ws.length; j += 3) texts.push(`word${ws[i]}next${ws[j]}1234${ws[i]}`);
const nums = ['1', '12', '123', '1234', '12345', '3.0', '007', '-5'];
for (const a of nums) texts.push(`x${a} ${a}x ${a}${a}`);

const para =
  'Tokenizers split text into units that a language model can process. Byte-level BPE starts from the 256 bytes ' +
  'and repeatedly merges the most frequent adjacent pair, which means any string, in any script, can be encoded ' +
  'without unknown tokens. SentencePiece-style BPE instead works on Unicode characters, replaces spaces with a ' +
  'visible marker (\u2581), and falls back to raw bytes for characters outside its vocabulary.\n\n';
texts.push(para.repeat(6));
texts.push(para + '数字 12345678901234567890, emoji 👩‍👩‍👧 and code `for i in range(10): pass`.\n' + para);

fs.mkdirSync(path.dirname(out), { recursive: true });
fs.writeFileSync(out, texts.map((t) => JSON.stringify({ text: t })).join('\n') + '\n');
console.log(`wrote ${texts.length} texts to ${path.relative(root, out)}`);
