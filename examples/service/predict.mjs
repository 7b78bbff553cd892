// Identify a photo with a running ecomarine service, from JavaScript (Node 18+ or a browser).
// Usage: ECOMARINE_URL=http://127.0.0.1:8000 [ECOMARINE_TOKEN=...] node predict.mjs PHOTO
import { readFile } from "node:fs/promises";
import { basename } from "node:path";

const url = process.env.ECOMARINE_URL ?? "http://127.0.0.1:8000";
const token = process.env.ECOMARINE_TOKEN;
const photo = process.argv[2];

const form = new FormData();
form.append("file", new Blob([await readFile(photo)], { type: "image/jpeg" }), basename(photo));
const response = await fetch(`${url}/v1/predict`, {
  method: "POST",
  body: form,
  headers: token ? { Authorization: `Bearer ${token}` } : {},
});
const body = await response.json();
if (!response.ok) {
  // Every error is JSON: {"error": code, "detail": sentence}.
  console.error(`error ${response.status} ${body.error}: ${body.detail}`);
  process.exit(1);
}
const verdict = body.rejection_reason
  ? `rejected (${body.rejection_reason}${body.looks_like ? `, looks like ${body.looks_like}` : ""})`
  : body.is_new_individual
    ? "new individual"
    : body.individual_id;
console.log(`${body.source}: ${verdict}`);
for (const c of body.candidates) {
  console.log(`  ${c.individual_id}  ${c.score.toFixed(3)}`);
}
