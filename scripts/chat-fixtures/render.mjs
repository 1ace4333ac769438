// render.mjs — renders tests/data/chat/expected.jsonl: every conversation below
// through every real chat_template in tests/data/chat/*.jinja, with the
// variables transformers' apply_chat_template passes (messages,
// add_generation_prompt, bos_token, eos_token; no tools, no date_string,
// so Llama-3.1 uses its fallback date "26 Jul 2024"; see llama3.2 below).
// A template that raises (role alternation) is recorded as {"error": ...}.
//
//   cd scripts/chat-fixtures && npm install && node render.mjs
import { Template } from "@huggingface/jinja";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const dataDir = join(dirname(fileURLToPath(import.meta.url)), "../../tests/data/chat");

// file -> prism family detected from it, special tokens, extra variants
const templates = [
  { file: "qwen2.5.jinja", detect: "chatml", eos: "<|im_end|>" },
  { file: "chatml-plain.jinja", detect: "chatml-plain", eos: "<|im_end|>" },
  { file: "qwen3.jinja", detect: "qwen3", eos: "<|im_end|>",
    variants: [{ name: "qwen3-nothink", vars: { enable_thinking: false } }] },
  { file: "llama3.jinja", detect: "llama3", bos: "<|begin_of_text|>", eos: "<|end_of_text|>" },
  { file: "llama3-genprompt.jinja", detect: "llama3", bos: "<|begin_of_text|>", eos: "<|eot_id|>" },
  { file: "llama3.1.jinja", detect: "llama3.1", bos: "<|begin_of_text|>", eos: "<|eot_id|>" },
  // Llama-3.2 calls strftime_now (today's date) when defined, as both transformers
  // and @huggingface/jinja do; prism renders the templates' fixed fallback date.
  { file: "llama3.2.jinja", detect: "llama3.1", bos: "<|begin_of_text|>", eos: "<|eot_id|>",
    vars: { date_string: "26 Jul 2024" } },
  { file: "mistral-v0.3.jinja", detect: "mistral", bos: "<s>", eos: "</s>" },
  { file: "mistral-v0.1.jinja", detect: "mistral-v0.1", bos: "<s>", eos: "</s>" },
  { file: "llama2.jinja", detect: "llama2", bos: "<s>", eos: "</s>" },
];

const S = (content) => ({ role: "system", content });
const U = (content) => ({ role: "user", content });
const A = (content) => ({ role: "assistant", content });

const conversations = [
  { id: "sys_user", gen: true, messages: [S("You are a helpful assistant."), U("What is 2+2?")] },
  { id: "user_only", gen: true, messages: [U("Hello!")] },
  { id: "multi_turn", gen: true, messages: [S("Answer briefly."), U("Capital of France?"), A("Paris."), U("And of Italy?")] },
  { id: "history_no_gen", gen: false, messages: [U("Hi"), A("Hello! How can I help?")] },
  { id: "sys_history_no_gen", gen: false, messages: [S("Be kind."), U("Hi"), A("Hello!")] },
  { id: "whitespace", gen: true, messages: [S("  Be terse.\n"), U("\n  Hello there  \n\n"), A(" Hi! \n"), U("\tNext?\n")] },
  { id: "unicode", gen: true, messages: [U("Grüße, 世界! 🚀 — ünïcödé\u00a0"), A("\u3000Привет 👋"), U("日本語で？")] },
  { id: "system_only", gen: true, messages: [S("Only a system prompt.")] },
  { id: "think_history", gen: true,
    messages: [U("What is 3*7?"), A("<think>\n3 times 7 is 21.\n</think>\n\n21"), U("Double it.")] },
  { id: "think_last", gen: false,
    messages: [U("What is 3*7?"), A("<think>\nmultiply\n</think>\n\n21")] },
  { id: "after_last_user", gen: false,
    messages: [U("Q"), A("plain answer"), A("second <think>a</think>\n\nb")] },
  { id: "two_users", gen: true, messages: [U("first"), U("second")] },
  { id: "empty_content", gen: true, messages: [S("sys"), U("")] },
  { id: "late_system", gen: true, messages: [U("a"), S("b"), U("c")] },
];

const lines = [];
for (const t of templates) {
  const src = readFileSync(join(dataDir, t.file), "utf8");
  const tpl = new Template(src);
  const variants = [{ name: t.detect, vars: {} }, ...(t.variants ?? [])];
  for (const v of variants) {
    for (const c of conversations) {
      const ctx = { messages: c.messages, add_generation_prompt: c.gen, ...t.vars, ...v.vars };
      if (t.bos) ctx.bos_token = t.bos;
      if (t.eos) ctx.eos_token = t.eos;
      const rec = { template: t.file, detect: t.detect, name: v.name, id: c.id, add_generation_prompt: c.gen, messages: c.messages };
      try {
        rec.expected = tpl.render(ctx);
      } catch (e) {
        rec.error = String(e.message ?? e);
      }
      lines.push(JSON.stringify(rec));
    }
  }
}
writeFileSync(join(dataDir, "expected.jsonl"), lines.join("\n") + "\n");
console.log(`wrote ${lines.length} renderings to ${join(dataDir, "expected.jsonl")}`);
