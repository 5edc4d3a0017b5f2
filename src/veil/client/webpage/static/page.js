// The verification page of `veil proxy`: shows GET /veil/verification and chats through /v1/.
// Every value shown comes from the deployment (the host controls some of it), so the page only
// ever sets textContent: no markup is built from data. Nothing is written to storage.
"use strict";

const $ = (id) => document.getElementById(id);
const STATUS_POLL_MS = 10000;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fill(list, rows) {
  list.replaceChildren();
  for (const [key, value, cls] of rows) {
    if (value === undefined || value === null || value === "") continue;
    list.append(el("dt", key), el("dd", value, cls));
  }
}

function items(list, values, cls) {
  list.replaceChildren(...values.map((v) => el("li", v, cls)));
}

function yesNo(flag) { return flag ? "yes" : "no"; }

function kv(obj) {
  return Object.entries(obj || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
}

function showStatus(data) {
  const status = $("status");
  status.dataset.status = data.status;
  status.className = `pill ${data.status}`;
  status.textContent = { verified: "VERIFIED", refused: "REFUSED", pending: "checking…" }[data.status] || data.status;
  const when = data.checked_at ? `checked ${data.checked_at}` : "not checked yet";
  $("checked").textContent = data.next_check_at ? `${when}; next check ${data.next_check_at}` : when;
}

function showRefusal(refusal) {
  $("refusal").hidden = !refusal;
  $("refusal-reason").textContent = refusal ? refusal.reason : "";
  $("refusal-message").textContent = refusal ? refusal.message : "";
}

function showPlatform(v, pinned) {
  const c = (v && v.claims) || {};
  const matched = v && (pinned || []).some((r) => r.platform === c.platform && r.measurements.includes(c.measurement));
  fill($("platform"), v ? [
    ["platform", c.simulated ? `${c.platform} (SIMULATED)` : c.platform, c.simulated ? "warn" : ""],
    ["measurement", c.measurement, "mono"],
    ["matches a pinned value", pinned ? (matched ? "yes ✔" : "NO") : "", matched ? "ok" : "bad"],
    ["debug", yesNo(c.debug), c.debug ? "bad" : ""],
    ["TCB", kv(c.tcb)],
    ["coordinator", v.coordinator_url, "mono"],
    ["verified at", v.verified_at],
    ["took", `${v.elapsed_ms} ms`],
  ] : [["platform", "not verified"]]);
  items($("pinned"), (pinned || []).flatMap((r) => r.measurements.map(
    (m) => `${r.platform}: ${m}${v && m === c.measurement && r.platform === c.platform ? "   ← this coordinator" : ""}`)), "mono");
}

// The chain checks the platform verifier ran (SNP: VCEK <- ASK <- ARK; TDX: PCK <- Intel root; GPUs).
const CHAIN = /certificate|revocation|crl|collateral|root/i;

function showChain(v, admission) {
  const chain = ((v && v.checks) || []).filter(({ check }) => CHAIN.test(check));
  checkList($("chain"), chain, "no certificate chain verified");
  const roots = (admission && admission.simulation_roots) || [];
  items($("roots"), roots.map((r) => `SIMULATED root ${r} (trusted by this client's policy)`), "mono warn");
}

function showChecks(v) {
  checkList($("checks"), (v && v.checks) || [], "no checks passed");
}

function checkList(list, checks, none) {
  list.replaceChildren();
  for (const { check, result } of checks) {
    const li = el("li", null, "check");
    li.append(el("span", "✔", "ok mark"), el("span", check, "name"), el("span", result, "result"));
    list.append(li);
  }
  if (!list.children.length) list.append(el("li", none, "bad"));
}

function showManifest(v, history, admission) {
  const signed = v && v.manifest;
  const m = signed && signed.manifest;
  fill($("manifest"), m ? [
    ["digest", v.manifest_digest, "mono"],
    ["replaces", signed.previous || "nothing (the first manifest)", "mono"],
    ["signed by", (signed.signatures || []).map((s) => s.key || s.public_key || JSON.stringify(s).slice(0, 80)).join(", "), "mono"],
    ["admin keys", (m.admin_keys || []).join(", "), "mono"],
    ["models", (m.models || []).map((x) => `${x.name} (${x.engine}, sha256 ${x.sha256.slice(0, 16)}…` +
      (x.tree_sha256 ? `, sealed: the TEE checks tree ${x.tree_sha256.slice(0, 16)}…)` : ")")).join("; ") || "none"],
  ] : [["manifest", "not verified"]]);
  const sandbox = m ? m.sandbox.profile + (m.sandbox.allow_gpu ? " + GPU" : "") : "";
  const rows = m ? [
    ["sandbox", m.sandbox.profile === "none" ? `${sandbox}  (NOT SANDBOXED: development only)` : sandbox,
      m.sandbox.profile === "none" ? "bad" : ""],
    ...m.workers.map((w) => ["worker platform",
      `${w.platform}: ${w.measurements.length} measurement(s)${w.require_gpu ? ", GPU evidence required" : ""}` +
      `${w.allow_debug ? ", DEBUG allowed" : ""}`, w.allow_debug ? "bad" : ""]),
    ["coordinator platforms", m.coordinator.map((r) => r.platform).join(", ")],
    ["release policies", Object.keys(m.release_policies || {}).join(", ") || "none"],
    ["tenants", m.tenants ? `${m.tenants.length} (an API key is required)` : "none (no API key required)"],
  ] : [];
  if (admission) {
    rows.push(["this client accepts", `workers on ${admission.worker_platforms.join(", ") || "none"}; ` +
      `sandbox ${admission.sandbox_profiles.join(", ") || "none"}; debug ${yesNo(admission.allow_debug)}; ` +
      `simulation ${admission.trust_simulated ? "trusted (named roots only)" : "refused"}`]);
  }
  fill($("admits"), rows);
  const seen = history || [];
  items($("history"), seen.length ? seen.map((d, i) => `${i + 1}. ${d}${i === seen.length - 1 ? "  (current)" : ""}`)
    : [history === null ? "this proxy keeps no manifest log" : "none yet"]);
}

function showOhttp(v) {
  fill($("ohttp"), v ? [
    ["gateway", v.gateway_url, "mono"],
    ["relay", v.relay_url ? `${v.relay_url} (the gateway does not see your address)` : "none: straight to the gateway", "mono"],
    ["encrypts to", v.ohttp_suite ? `key id ${v.ohttp_suite.key_id}: ${v.ohttp_suite.name}` : ""],
    ["post-quantum", v.ohttp_suite ? (v.ohttp_suite.post_quantum ? "yes (X-Wing: safe if either ML-KEM-768 or X25519 holds)"
      : "no: classical X25519 only") : "", v.ohttp_suite && v.ohttp_suite.post_quantum ? "ok" : "warn"],
  ] : [["keys", "not verified: nothing is encrypted or sent"]]);
  items($("keys"), ((v && v.key_configs) || []).map((k) => `key id ${k.key_id}: ${k.kem}; ` +
    k.suites.map((s) => s.name).join(", ") + `; public key ${k.public_key.slice(0, 32)}…`), "mono");
}

function showDetails(data) {
  const c = (data.verification && data.verification.claims) || {};
  fill($("details"), Object.entries(c.details || {}).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : v, "mono"]));
  $("raw").textContent = JSON.stringify(data, null, 2);
}

function show(data) {
  const v = data.verification;
  showStatus(data);
  $("simulated").hidden = !(v && v.simulated);
  items($("simulated-parts"), (v && v.simulated_parts) || []);
  showRefusal(data.refusal);
  showPlatform(v, data.pinned_coordinator);
  showChecks(v);
  showChain(v, data.admission);
  showManifest(v, data.manifest_history, data.admission || (v && v.admission));
  showOhttp(v);
  showDetails(data);
  const models = (v && v.models) || [];
  const select = $("model");
  if (models.join() !== [...select.options].map((o) => o.value).join()) {
    select.replaceChildren(...models.map((m) => { const o = el("option", m); o.value = m; return o; }));
  }
  $("send").disabled = data.status !== "verified" || busy;
}

async function load(method) {
  if (method === "POST") $("reverify").disabled = true;
  try {
    const init = method === "POST"
      ? { method: "POST", headers: { "content-type": "application/json" }, body: "{}" } : {};
    const resp = await fetch(method === "POST" ? "/veil/verify" : "/veil/verification", { cache: "no-store", ...init });
    show(await resp.json());
  } catch (err) {
    showRefusal({ reason: "page.proxy_unreachable", message: `the proxy did not answer: ${err}` });
  } finally {
    if (method === "POST") $("reverify").disabled = false;
  }
}

// --- chat ---------------------------------------------------------------------------------------

const conversation = [];
let busy = false;
let abort = null;

function bubble(role, text) {
  const node = el("div", null, `msg ${role}`);
  node.append(el("span", role === "user" ? "you" : role === "error" ? "error" : "assistant", "who"), el("span", text, "text"));
  $("transcript").append(node);
  node.scrollIntoView({ block: "end" });
  return node.querySelector(".text");
}

function headers() {
  const h = { "content-type": "application/json" };
  const token = $("token").value.trim();
  if (token) h.authorization = `Bearer ${token}`;
  return h;
}

async function failure(resp) {
  let code = `http.${resp.status}`, message = resp.statusText;
  try {
    const body = await resp.json();
    if (body.error) ({ code, message } = { code: body.error.code || code, message: body.error.message || message });
  } catch (_) { /* not JSON */ }
  if (code === "proxy.unauthorized") $("token-label").hidden = false;
  return `${code}: ${message}`;
}

// Server-sent events of an OpenAI streamed answer: each "data:" line is a JSON chunk or [DONE].
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, cut).replace(/\r$/, "");
      buffer = buffer.slice(cut + 1);
      if (line.startsWith("data:")) yield line.slice(5).trim();
    }
  }
  if (buffer.startsWith("data:")) yield buffer.slice(5).trim();
}

async function send() {
  const text = $("prompt").value.trim();
  if (!text || busy) return;
  $("prompt").value = "";
  conversation.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  out.parentElement.classList.add("streaming");
  busy = true; abort = new AbortController();
  $("send").disabled = true; $("stop").disabled = false;
  $("chat-state").textContent = "streaming…";
  let answer = "", ended = false, error = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: abort.signal, cache: "no-store",
      body: JSON.stringify({ model: $("model").value, messages: conversation, stream: true,
        max_tokens: Math.max(1, Number($("max-tokens").value) || 256) }),
    });
    if (!resp.ok) throw new Error(await failure(resp));
    for await (const data of events(resp.body)) {
      if (data === "[DONE]") { ended = true; break; }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(`${chunk.error.code}: ${chunk.error.message}`);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) { answer += delta.content; out.textContent = answer; }
    }
    if (!ended) throw new Error("the answer stream ended early: it is incomplete");
    conversation.push({ role: "assistant", content: answer });
    $("chat-state").textContent = "done";
  } catch (err) {
    error = err.name === "AbortError" ? "stopped" : err.message;
    conversation.pop();  // a failed turn is not part of the conversation
  } finally {
    out.parentElement.classList.remove("streaming");
    if (error) { bubble("error", error); $("chat-state").textContent = ""; }
    busy = false; abort = null;
    $("stop").disabled = true;
    $("send").disabled = $("status").dataset.status !== "verified";
    if (error) load("GET");  // a refusal (503 with its reason) shows up top at once
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("reverify").addEventListener("click", () => load("POST"));
  $("send").addEventListener("click", send);
  $("stop").addEventListener("click", () => abort && abort.abort());
  $("clear").addEventListener("click", () => { conversation.length = 0; $("transcript").replaceChildren(); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); }
  });
  load("GET");
  // The proxy re-verifies on its own schedule; show its latest outcome (reading it costs nothing).
  setInterval(() => { if (!document.hidden) load("GET"); }, STATUS_POLL_MS);
});
