// openai_client.mjs — talks to a running `prism serve` with the official
// `openai` npm package, as an application would. Run by tests/test_server.c:
//   node tests/server/openai_client.mjs http://127.0.0.1:PORT/v1 THRESHOLD
// The server serves models/stories260K as "stories260K" with --prism (routed),
// the forced routes and an adapter named "persona". Prints
// "node: N passed, M failed" last.
import OpenAI from 'openai';

const [baseURL] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0 });
let passed = 0, failed = 0;
function check(cond, what) {
  if (cond) { passed++; console.log(`ok   node: ${what}`); }
  else { failed++; console.log(`FAIL node: ${what}`); }
}
const ask = (model, q, extra = {}) => client.chat.completions.create({
  model, messages: [{ role: 'user', content: q }], max_tokens: 24, temperature: 0, ...extra });

try {
  const models = await client.models.list();
  const ids = models.data.map((m) => m.id).sort();
  check(JSON.stringify(ids) === JSON.stringify(['persona', 'stories260K', 'stories260K:adapter', 'stories260K:base']),
        `models.list: ${ids.join(', ')}`);

  // non-streaming chat, routed by the gate: the prism object is there
  const r = await ask('stories260K', 'Tell me a story about a dog.');
  check(r.object === 'chat.completion' && r.choices[0].message.role === 'assistant' &&
        typeof r.choices[0].message.content === 'string' && r.usage.completion_tokens === r.usage.total_tokens - r.usage.prompt_tokens,
        `chat.completions.create: "${r.choices[0].message.content.slice(0, 40)}..." (${r.usage.completion_tokens} tokens)`);
  check(['base', 'adapter'].includes(r.prism.route) && r.prism.gate_probability >= 0 && r.prism.gate_probability <= 1,
        `routed: ${r.prism.route}, gate ${r.prism.gate_probability}`);

  // forced routes; with .withResponse() the X-Prism-Route header is visible
  const { data: b, response: hb } = await ask('stories260K:base', 'Why is the sky blue?').withResponse();
  const { data: a, response: ha } = await ask('stories260K:adapter', 'Why is the sky blue?').withResponse();
  check(b.prism.route === 'base' && hb.headers.get('x-prism-route') === 'base', 'forced base route + header');
  check(a.prism.route === 'adapter' && ha.headers.get('x-prism-route') === 'adapter', 'forced adapter route + header');
  const p = await ask('persona', 'Why is the sky blue?');
  check(p.choices[0].message.content === a.choices[0].message.content, 'the named adapter answers as the forced adapter route');

  // streaming: the deltas concatenate to the non-streamed answer
  const stream = await ask('stories260K:adapter', 'Why is the sky blue?', { stream: true, stream_options: { include_usage: true } });
  let text = '', chunks = 0, finish = null, usage = null;
  for await (const c of stream) {
    chunks++;
    if (c.choices.length) {
      text += c.choices[0].delta.content ?? '';
      if (c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
    }
    if (c.usage) usage = c.usage;
  }
  check(text === a.choices[0].message.content && finish === 'length' && usage && usage.completion_tokens === 24,
        `streaming chat: ${chunks} chunks, text equals the non-streamed answer, usage chunk`);

  // legacy completions
  const c = await client.completions.create({ model: 'stories260K:base', prompt: 'Once upon a time', max_tokens: 16, temperature: 0 });
  check(c.object === 'text_completion' && c.choices[0].text.length > 0 && c.usage.prompt_tokens === 5, `completions: "${c.choices[0].text}"`);

  // concurrent requests with mixed routes: each equals its answer alone
  const qs = ['Tell me a story about a dog.', 'What is two plus two?', 'Write a poem about the sea.', 'Who was the king?'];
  const models4 = ['stories260K', 'stories260K:base', 'stories260K:adapter', 'persona'];
  const jobs = [];
  for (let i = 0; i < 16; i++) jobs.push([models4[i % 4], qs[(i >> 2) % 4]]);
  const alone = [];
  for (const [m, q] of jobs) alone.push((await ask(m, q)).choices[0].message.content);
  const together = await Promise.all(jobs.map(([m, q]) => ask(m, q)));
  check(together.every((t, i) => t.choices[0].message.content === alone[i]), '16 concurrent requests equal their answers alone');

  // errors surface as the SDK's typed errors
  try { await ask('no-such-model', 'x'); check(false, 'unknown model throws'); }
  catch (e) { check(e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === 'model_not_found', `unknown model: ${e.status} ${e.code}`); }
  try { await ask('stories260K', 'x', { n: 2 }); check(false, 'n=2 throws'); }
  catch (e) { check(e instanceof OpenAI.BadRequestError && e.param === 'n', `n=2: ${e.status} param ${e.param}`); }
  try { await ask('stories260K', 'x', { max_tokens: 100000 }); check(false, 'huge max_tokens throws'); }
  catch (e) { check(e instanceof OpenAI.BadRequestError && e.code === 'context_length_exceeded', `max_tokens over the context: ${e.code}`); }
  try { await ask('stories260K', 'x', { temperature: 'hot' }); check(false, 'bad temperature throws'); }
  catch (e) { check(e instanceof OpenAI.BadRequestError && e.param === 'temperature', `temperature "hot": ${e.status}`); }
} catch (e) {
  failed++;
  console.log(`FAIL node: unexpected exception: ${e?.stack ?? e}`);
}
console.log(`node: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
