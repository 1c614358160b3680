// Timing loop for run_node_llamacpp.py: reads {"module", "model", "ids", "gen_len",
// "runs", "warmup", "threads", "n_ctx"} as JSON on stdin, prints
// {"version", "llama_cpp", "timings": [[prefill_s, ttft_s, decode_s], ...]} on stdout.
import { pathToFileURL } from "node:url";

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const cfg = JSON.parse(Buffer.concat(chunks).toString());
const { getLlama } = await import(pathToFileURL(cfg.module).href);

const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath: cfg.model });
const context = await model.createContext({
  contextSize: cfg.n_ctx, batchSize: 512, threads: { ideal: cfg.threads, min: cfg.threads },
});
const seq = context.getSequence();
const now = () => performance.now() / 1000;
const timings = [];
for (let i = 0; i < cfg.warmup + cfg.runs; i++) {
  await seq.clearHistory();
  const t0 = now();
  const gen = seq.evaluate(cfg.ids, { temperature: 0 });  // greedy
  await gen.next();  // prefill + first token: the binding gives no prefill-only time
  const t1 = now();
  for (let k = 1; k < cfg.gen_len; k++) await gen.next();
  const t2 = now();
  await gen.return();
  if (seq.nextTokenIndex !== cfg.ids.length + cfg.gen_len - 1)
    throw new Error(`context holds ${seq.nextTokenIndex} tokens`);
  process.stderr.write(`  ${i < cfg.warmup ? "warm-up" : "run"}: ttft ${(t1 - t0).toFixed(3)} s, ` +
    `decode ${((cfg.gen_len - 1) / (t2 - t1)).toFixed(2)} tok/s\n`);
  if (i >= cfg.warmup) timings.push([t1 - t0, t1 - t0, t2 - t1]);
}
const rel = llama.llamaCppRelease;
console.log(JSON.stringify({ llama_cpp: `${rel.repo} ${rel.release} (${llama.buildType})`, timings }));
await context.dispose();
await model.dispose();
