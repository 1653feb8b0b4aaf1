// lorakit board: plain JavaScript over the board's JSON routes. No framework, no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
let STATE = {data: [], indexes: [], exports: [], runs: [], model: ""};

// ------------------------------------------------------------------ requests
class BoardError extends Error {
  constructor(body) { super(body.error || "request failed"); this.field = body.field; this.fields = body.fields || {}; }
}

async function api(method, url, body) {
  const opts = {method, headers: {}};
  if (body !== undefined) {
    if (body instanceof Blob) { opts.body = body; }
    else { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  }
  const r = await fetch(url, opts);
  const out = await r.json().catch(() => ({error: `${r.status} ${r.statusText}`}));
  if (!r.ok) throw new BoardError(out);
  return out;
}

async function job(view, bar) {
  // Poll a job until it is done; a progress element shows its progress meanwhile.
  if (bar) { bar.hidden = false; bar.removeAttribute("value"); }
  try {
    while (view.state === "queued" || view.state === "running") {
      await new Promise((ok) => setTimeout(ok, 400));
      view = await api("GET", `/api/jobs/${view.id}`);
      if (bar && view.progress.total) { bar.max = view.progress.total; bar.value = view.progress.done; }
    }
  } finally { if (bar) bar.hidden = true; }
  if (view.state === "failed") throw new BoardError({error: view.error, field: view.field});
  return view.result;
}

function showError(box, e) {
  box.textContent = e ? (e.message || String(e)) : "";
}

async function guarded(box, fn) {
  showError(box, null);
  try { return await fn(); } catch (e) { showError(box, e); if (!(e instanceof BoardError)) console.error(e); }
}

// ------------------------------------------------------------------ pages and shared lists
function showPage() {
  const page = (location.hash || "#data").slice(1);
  document.querySelectorAll(".page").forEach((p) => p.classList.toggle("active", p.id === `page-${page}`));
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
}
window.addEventListener("hashchange", showPage);

function fillSelect(sel, items, optional) {
  const keep = sel.multiple ? [...sel.selectedOptions].map((o) => o.value) : [sel.value];
  sel.innerHTML = (optional ? '<option value="">none</option>' : "") +
    items.map((v) => `<option value="${esc(v)}">${esc(v)}</option>`).join("");
  [...sel.options].forEach((o) => { if (keep.includes(o.value)) o.selected = true; });
}

function fillAdapters(box, runs) {
  const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  box.innerHTML = runs.length ? runs.map((r) => `<label><input type="checkbox" value="${esc(r.name)}" ${checked.has(r.name) ? "checked" : ""}> ${esc(r.name)}</label>`).join("")
    : '<span class="dim">no trained run yet</span>';
}

async function refresh() {
  STATE = await api("GET", "/api/state");
  $("#root").textContent = STATE.root;
  document.querySelectorAll("select.data-files").forEach((s) => fillSelect(s, STATE.data, s.classList.contains("optional")));
  document.querySelectorAll("select.doc-files").forEach((s) => fillSelect(s, STATE.data.filter((f) => /\.(md|txt)$/i.test(f))));
  document.querySelectorAll("select.index-list").forEach((s) => fillSelect(s, STATE.indexes, true));
  const trained = STATE.runs.filter((r) => r.has_adapter);
  document.querySelectorAll(".adapter-list").forEach((b) => fillAdapters(b, trained));
  document.querySelectorAll("select.adapter-select").forEach((s) => fillSelect(s, trained.map((r) => r.name)));
  document.querySelectorAll("input.model-input").forEach((i) => { if (!i.value) i.value = STATE.model; });
  renderRuns(STATE.runs);
  renderExports(STATE.exports);
  const formData = $("#train-form [name=data]");
  if (formData) fillSelect(formData, STATE.data);
  const formEval = $("#train-form [name=eval_data]");
  if (formEval) fillSelect(formEval, STATE.data, true);
}

// ------------------------------------------------------------------ data
$("#upload").addEventListener("change", () => guarded($("#check-error"), async () => {
  const f = $("#upload").files[0];
  if (!f) return;
  const out = await api("POST", `/api/upload?name=${encodeURIComponent(f.name)}`, f);
  await refresh();
  $("#check-file").value = out.path;
}));

$("#check-run").addEventListener("click", () => guarded($("#check-error"), async () => {
  $("#check-run").disabled = true;
  try {
    const rep = await api("POST", "/api/data/check", {file: $("#check-file").value, format: $("#check-format").value || null,
      eval_file: $("#check-eval").value || null, model: $("#check-model").value || null});
    renderReport(rep);
  } finally { $("#check-run").disabled = false; }
}));

function renderReport(rep) {
  $("#report").hidden = false;
  const s = rep.stats;
  $("#report-title").textContent = `Data check: ${rep.file} (${rep.format})`;
  $("#report-verdict").innerHTML = `${s.parsed ?? 0} of ${s.records ?? 0} records parsed · ` +
    (rep.ok ? '<b class="found-0">no errors</b>' : `<b class="sev-error">${rep.errors} error(s)</b>`) + ` · ${rep.warnings} warning(s)`;
  $("#report-checks").innerHTML = "<tr><th>check</th><th>severity</th><th class=num>found</th></tr>" +
    Object.entries(rep.checks).map(([code, c]) => {
      const n = rep.counts[code];
      return `<tr data-check="${code}"><td>${esc(c.description)}</td><td class="sev-${c.severity}">${c.severity}</td>` +
        `<td class="num ${n ? "sev-" + c.severity : "found-0"}">${n}</td></tr>`;
    }).join("");
  $("#report-hist").src = `data:image/png;base64,${rep.histogram}`;
  const rows = rep.findings.map((f, i) => {
    const rec = f.index !== undefined ? f.index : "";
    return `<tr data-finding="${i}" data-code="${f.code}" ${rec !== "" ? `data-record="${rec}"` : ""}>` +
      `<td>${esc((f.file || "").split("/").pop())}:${f.line ?? ""}${f.field ? " (" + esc(f.field) + ")" : ""}</td>` +
      `<td class="sev-${f.severity}">${f.severity}</td><td>${esc(f.code)}</td><td>${esc(f.message)}</td></tr>`;
  });
  $("#report-findings").innerHTML = "<tr><th>where</th><th>severity</th><th>check</th><th>detail</th></tr>" +
    (rows.join("") || '<tr><td colspan=4 class="found-0">no problems found</td></tr>');
  $("#record-view").textContent = "Click a finding.";
  $("#report-findings").onclick = (ev) => {
    const tr = ev.target.closest("tr[data-finding]");
    if (!tr) return;
    document.querySelectorAll("#report-findings tr.selected").forEach((t) => t.classList.remove("selected"));
    tr.classList.add("selected");
    const f = rep.findings[+tr.dataset.finding];
    const rec = rep.records[String(f.index)];
    let text = rec ? `line ${rec.line}\n${JSON.stringify({...rec, line: undefined}, null, 2)}` : "(no parsed record: see the message)";
    if (f.related) {
      const other = Object.values(rep.records).find((r) => r.line === f.related.line);
      if (other) text += `\n\n— related: line ${other.line} —\n${JSON.stringify({...other, line: undefined}, null, 2)}`;
    }
    $("#record-view").textContent = text;
  };
}

$("#convert-run").addEventListener("click", () => guarded($("#data-error"), async () => {
  $("#data-result").textContent = "";
  const r = await api("POST", "/api/data/convert", {file: $("#check-file").value, out: $("#convert-out").value, to: $("#convert-to").value});
  $("#data-result").textContent = `wrote ${r.records} records (${r.to}) to ${r.out}`;
  await refresh();
}));

$("#split-run").addEventListener("click", () => guarded($("#data-error"), async () => {
  $("#data-result").textContent = "";
  const r = await api("POST", "/api/data/split", {file: $("#check-file").value, out_dir: $("#split-out").value,
    eval: $("#split-eval").value, test: $("#split-test").value});
  $("#data-result").textContent = Object.entries(r.paths).map(([k, p]) => `${k}: ${r.sizes[k]} records → ${p}`).join(" · ") +
    ` (${r.groups} groups kept whole, largest ${r.largest_group})`;
  await refresh();
}));

$("#build-run").addEventListener("click", () => guarded($("#data-error"), async () => {
  $("#data-result").textContent = "";
  const docs = [...$("#build-docs").selectedOptions].map((o) => o.value);
  const view = await api("POST", "/api/data/build", {docs, out: $("#build-out").value, templates: +$("#build-templates").value,
    model: $("#build-model").value || null});
  const r = await job(view, $("#build-progress"));
  const counts = Object.entries(r.counts).map(([k, v]) => `${v} ${k}`).join(", ") || "no problems found";
  $("#data-result").textContent = `wrote ${r.records} records to ${r.out} from ${r.chunks} chunks of ${r.documents} document(s) ` +
    `(${r.template_records} from templates, ${r.model_records} model-written${r.failed_chunks ? `, ${r.failed_chunks} chunks got no usable pair` : ""}); check: ${counts}`;
  await refresh();
}));

// ------------------------------------------------------------------ train: the form comes from TrainConfig's schema
const HIDDEN = new Set(["runs_dir"]);
let planTimer = null;

function fieldInput(name, spec, defs) {
  let s = spec;
  if (s.$ref) s = defs[s.$ref.split("/").pop()];
  const any = s.anyOf || [];
  const types = any.length ? any.map((a) => a.type || (a.enum ? "enum" : a.const !== undefined ? "enum" : "")) : [s.type];
  const enumVals = s.enum || (any.find((a) => a.enum) || {}).enum;
  const def = spec.default;
  if (name === "data" || name === "eval_data") {
    return `<select name="${name}" data-kind="string"></select>`;
  }
  if (enumVals && !types.includes("array")) {
    return `<select name="${name}" data-kind="string">${enumVals.map((v) => `<option ${v === def ? "selected" : ""}>${esc(v)}</option>`).join("")}</select>`;
  }
  if (types.includes("boolean") && types.length === 1) {
    return `<input type="checkbox" name="${name}" data-kind="boolean" ${def ? "checked" : ""}>`;
  }
  if (types.includes("boolean")) {  // optional boolean: auto / on / off
    return `<select name="${name}" data-kind="tristate"><option value="">auto</option><option value="true">on</option><option value="false">off</option></select>`;
  }
  if (types.includes("array")) {
    const v = Array.isArray(def) ? def.join(",") : (def ?? "");
    return `<input name="${name}" data-kind="list" value="${esc(v)}" title="comma-separated module names, or all-linear">`;
  }
  const kind = types.includes("integer") ? "integer" : types.includes("number") ? "number" : "string";
  const step = kind === "number" ? ' step="any"' : "";
  return `<input name="${name}" data-kind="${kind}" ${kind !== "string" ? 'type="number"' + step : ""} value="${esc(def ?? "")}">`;
}

// The settings a first run changes; the rest of TrainConfig is under "more settings".
const COMMON = new Set(["model", "data", "eval_data", "eval_ratio", "name", "method", "lora", "epochs", "max_steps",
  "learning_rate", "batch_size", "max_length", "precision", "system_prompt"]);

function formFields(props, defs, prefix) {
  return Object.entries(props).filter(([n]) => !HIDDEN.has(n)).map(([n, spec]) => {
    const full = prefix + n;
    const ref = spec.$ref ? defs[spec.$ref.split("/").pop()] : null;
    if (ref && ref.properties) {
      return `<fieldset><legend>${esc(n)}</legend>${formFields(ref.properties, defs, full + ".")}</fieldset>`;
    }
    return `<div class="field" data-field="${full}"><label for="f-${full}" title="${esc(spec.description || "")}">${esc(n)}</label>` +
      fieldInput(full, spec, defs).replace("<input ", `<input id="f-${full}" `).replace("<select ", `<select id="f-${full}" `) +
      `<span class="msg"></span></div>`;
  }).join("");
}

function formConfig() {
  const cfg = {};
  document.querySelectorAll("#train-form [name]").forEach((el) => {
    let v;
    switch (el.dataset.kind) {
      case "boolean": v = el.checked; break;
      case "tristate": v = el.value === "" ? null : el.value === "true"; break;
      case "integer": case "number": v = el.value === "" ? null : Number(el.value); break;
      case "list": v = el.value.trim() === "all-linear" ? "all-linear" : el.value.split(",").map((x) => x.trim()).filter(Boolean); break;
      default: v = el.value === "" ? null : el.value;
    }
    const parts = el.name.split(".");
    let node = cfg;
    parts.slice(0, -1).forEach((p) => { node = node[p] = node[p] || {}; });
    node[parts.at(-1)] = v;
  });
  return cfg;
}

function markFields(fields) {
  document.querySelectorAll("#train-form .field").forEach((f) => {
    const msg = fields[f.dataset.field];
    f.classList.toggle("invalid", !!msg);
    f.querySelector(".msg").textContent = msg || "";
  });
}

let planning = false, planAgain = false;
async function plan() {
  // One dry run at a time; edits made meanwhile are planned once it ends (a dry run tokenizes the data).
  if (planning) { planAgain = true; return; }
  planning = true;
  try { await planOnce(); } finally {
    planning = false;
    if (planAgain) { planAgain = false; plan(); }
  }
}

async function planOnce() {
  const box = $("#train-error");
  showError(box, null);
  try {
    const r = await api("POST", "/api/train/plan", {config: formConfig()});
    markFields({});
    const s = r.summary, e = s.estimate || {};
    const est = [["steps", s.steps], ["records", s.lengths.n], ["tokens per record (median)", s.lengths.p50],
      ["trained tokens", s.supervised_tokens], ["trainable parameters", e.trainable_params],
      ["peak memory (doctor)", e.peak_gb !== undefined ? `${e.peak_gb} GB` : "–"],
      ["time per epoch (doctor)", fmtS(e.seconds_per_epoch)], ["precision", e.precision]];
    $("#plan-summary").innerHTML = `<table>${est.map(([k, v]) => `<tr><td>${esc(k)}</td><td data-est="${esc(k)}">${esc(v ?? "–")}</td></tr>`).join("")}</table>` +
      (e.recommendations || []).map((x) => `<p class="hint">${esc(x)}</p>`).join("");
    $("#plan-mask").innerHTML = r.html;
  } catch (e) {
    showError(box, e);
    markFields(e.fields || {});
  }
}

async function buildForm() {
  const schema = await api("GET", "/api/train/schema");
  const pick = (keep) => Object.fromEntries(Object.entries(schema.properties).filter(([n]) => COMMON.has(n) === keep));
  $("#train-form").innerHTML = formFields(pick(true), schema.$defs || {}, "") +
    `<details><summary>more settings</summary><div class="grid">${formFields(pick(false), schema.$defs || {}, "")}</div></details>`;
  $("#train-form [name=model]").value = STATE.model;
  fillSelect($("#train-form [name=data]"), STATE.data);
  fillSelect($("#train-form [name=eval_data]"), STATE.data, true);
  $("#train-form").addEventListener("input", () => { clearTimeout(planTimer); planTimer = setTimeout(plan, 500); });
  $("#train-form").addEventListener("change", () => { clearTimeout(planTimer); planTimer = setTimeout(plan, 300); });
}

$("#train-start").addEventListener("click", () => guarded($("#train-error"), async () => {
  try {
    const r = await api("POST", "/api/train/start", {config: formConfig()});
    markFields({});
    await refresh();
    watch(r.name);
  } catch (e) { markFields(e.fields || {}); throw e; }
}));

const fmtS = (s) => s == null ? "–" : s < 60 ? `${Math.round(s)} s` : s < 3600 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${(s / 3600).toFixed(1)} h`;
const fmtN = (v, d = 4) => v == null ? "–" : Number(v).toFixed(d);

function renderRuns(runs) {
  $("#runs").innerHTML = "<tr><th>run</th><th>state</th><th class=num>step</th><th class=num>train loss</th><th class=num>eval loss</th>" +
    "<th class=num>seconds</th><th class=num>tokens/s</th><th></th></tr>" + runs.map((r) => {
      const s = r.summary || {};
      const live = r.state === "running" || r.state === "starting";
      return `<tr data-run="${esc(r.name)}"><td>${esc(r.name)}</td><td><span class="state ${r.state}">${r.state}</span></td>` +
        `<td class=num>${r.step}${r.max_steps ? " / " + r.max_steps : ""}</td><td class=num>${fmtN(s.train_loss)}</td>` +
        `<td class=num>${fmtN(s.eval_loss)}</td><td class=num>${s.train_seconds ?? "–"}</td><td class=num>${s.tokens_per_second ?? "–"}</td>` +
        `<td><button class="small secondary" data-act="watch">Watch</button> ` +
        (live ? '<button class="small" data-act="stop">Stop</button> ' : "") +
        (r.resumable ? '<button class="small" data-act="resume">Resume</button>' : "") + "</td></tr>";
    }).join("");
}

$("#runs").addEventListener("click", (ev) => guarded($("#train-error"), async () => {
  const b = ev.target.closest("button[data-act]");
  if (!b) return;
  const name = b.closest("tr").dataset.run;
  if (b.dataset.act === "stop") await api("POST", `/api/runs/${encodeURIComponent(name)}/stop`);
  if (b.dataset.act === "resume") await api("POST", `/api/runs/${encodeURIComponent(name)}/resume`);
  watch(name);
  await refresh();
}));

let source = null, rows = [];
function watch(name) {
  if (source) source.close();
  rows = [];
  $("#watch").hidden = false;
  $("#watch-name").textContent = name;
  $("#watch-error").textContent = "";
  drawChart();
  source = new EventSource(`/api/runs/${encodeURIComponent(name)}/events`);
  source.addEventListener("reset", () => { rows = []; drawChart(); });
  source.addEventListener("metrics", (ev) => { rows.push(...JSON.parse(ev.data)); drawChart(); });
  source.addEventListener("status", (ev) => {
    const st = JSON.parse(ev.data);
    const el = $("#watch-state");
    el.textContent = st.state;
    el.className = `state ${st.state}`;
    $("#watch-step").textContent = st.step;
    $("#watch-max").textContent = st.max_steps ?? "?";
    $("#watch-eta").textContent = st.state === "running" ? fmtS(st.eta_s) : "–";
    $("#watch-error").textContent = st.error || "";
    const cell = document.querySelector(`#runs tr[data-run="${CSS.escape(name)}"] td.num`);
    if (cell) cell.textContent = `${st.step}${st.max_steps ? " / " + st.max_steps : ""}`;
    const row = STATE.runs.find((r) => r.name === name);
    if (!row || row.state !== st.state) refresh();
  });
}

function drawChart() {
  const svg = $("#chart"), W = 720, H = 260, L = 46, R = 46, T = 10, B = 26;
  const train = rows.filter((r) => r.loss !== undefined).map((r) => [r.step, r.loss]);
  const evals = rows.filter((r) => r.eval_loss !== undefined).map((r) => [r.step, r.eval_loss]);
  const lrs = rows.filter((r) => r.learning_rate !== undefined).map((r) => [r.step, r.learning_rate]);
  if (train.length) $("#watch-loss").textContent = fmtN(train.at(-1)[1]);
  if (evals.length) $("#watch-eval").textContent = fmtN(evals.at(-1)[1]);
  const all = train.concat(evals);
  if (!all.length) { svg.innerHTML = `<text x="${W / 2 - 60}" y="${H / 2}">waiting for the first step…</text>`; return; }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-6);
  const lr1 = Math.max(...lrs.map((p) => p[1]), 1e-12);
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const sl = (y) => T + (1 - y / lr1) * (H - T - B);
  const line = (pts, f, cls) => pts.length ? `<polyline class="${cls}" points="${pts.map((p) => `${sx(p[0]).toFixed(1)},${f(p[1]).toFixed(1)}`).join(" ")}"/>` : "";
  let grid = "";
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    grid += `<line class="grid" x1="${L}" x2="${W - R}" y1="${sy(y)}" y2="${sy(y)}"/><text x="4" y="${sy(y) + 4}">${y.toFixed(3)}</text>`;
  }
  grid += `<text x="${L}" y="${H - 6}">step ${x0}</text><text x="${W - R - 50}" y="${H - 6}">step ${x1}</text>` +
    `<text x="${W - R + 4}" y="${T + 10}">${lr1.toExponential(1)}</text>`;
  svg.innerHTML = grid + line(lrs, sl, "lr") + line(train, sy, "train") + line(evals, sy, "eval") +
    evals.map((p) => `<circle cx="${sx(p[0])}" cy="${sy(p[1])}" r="3" fill="#d9730d"/>`).join("");
  svg.dataset.points = train.length;
}

// ------------------------------------------------------------------ evaluate
const chosen = (box) => [...$(box).querySelectorAll("input:checked")].map((i) => i.value);
const METRICS = ["loss", "perplexity", "rouge_l", "bleu_4", "keywords", "citation", "citation_shown", "unsupported_figures", "seconds"];

$("#eval-run").addEventListener("click", () => guarded($("#eval-error"), async () => {
  $("#eval-run").disabled = true;
  $("#eval-status").textContent = "running…";
  try {
    const view = await api("POST", "/api/eval", {model: $("#eval-model").value, adapters: chosen("#eval-adapters"),
      data: $("#eval-data").value, index: $("#eval-index").value || null, include_base: $("#eval-base").checked,
      limit: +$("#eval-limit").value || null, max_new_tokens: +$("#eval-tokens").value || 32});
    const r = await job(view, $("#eval-progress"));
    const names = Object.keys(r.systems);
    const cols = METRICS.filter((m) => names.some((n) => r.systems[n][m] !== undefined && r.systems[n][m] !== null));
    $("#eval-table").innerHTML = `<tr><th>system</th>${cols.map((c) => `<th class=num>${c}</th>`).join("")}</tr>` +
      names.map((n) => `<tr data-system="${esc(n)}"><td>${esc(n)}</td>${cols.map((c) => `<td class=num>${r.systems[n][c] == null ? "–" : fmtN(r.systems[n][c], 3)}</td>`).join("")}</tr>`).join("");
    $("#eval-report").src = `/files/${r.report}`;
    $("#eval-report").hidden = false;
    $("#eval-status").textContent = `report: ${r.report}`;
  } catch (e) { $("#eval-status").textContent = ""; throw e; }
  finally { $("#eval-run").disabled = false; }
}));

// ------------------------------------------------------------------ chat: lorakit serve's streaming reply path
let history = [];
$("#chat-load").addEventListener("click", () => guarded($("#chat-error"), async () => {
  $("#chat-status").textContent = "loading…";
  try {
    const view = await api("POST", "/api/chat/load", {model: $("#chat-model").value, adapters: chosen("#chat-adapters"),
      index: $("#chat-index").value || null});
    const r = await job(view);
    fillSelect($("#chat-system"), r.systems);
    const first = chosen("#chat-adapters")[0] || r.systems[0];  // the first adapter chosen, grounded when possible
    $("#chat-system").value = r.systems.includes(`${first}+rag`) ? `${first}+rag` : first;
    $("#chat-status").textContent = `ready: ${r.systems.length} system(s)`;
  } catch (e) { $("#chat-status").textContent = ""; throw e; }
}));

$("#chat-reset").addEventListener("click", () => { history = []; $("#chat-log").innerHTML = ""; });

function bubble(role, text) {
  const d = document.createElement("div");
  d.className = `msg ${role}`;
  d.innerHTML = `<span class="who">${role === "user" ? "you" : esc($("#chat-system").value)}</span><span class="text"></span>`;
  d.querySelector(".text").textContent = text;
  $("#chat-log").appendChild(d);
  $("#chat-log").scrollTop = $("#chat-log").scrollHeight;
  return d;
}

function showEvidence(d, text, ev) {
  // Unsupported figures highlighted in the answer, then the passages shown and each citation's check.
  let html = esc(text);
  for (const fig of ev.unsupported_figures || []) html = html.split(esc(fig)).join(`<mark class="unsupported">${esc(fig)}</mark>`);
  d.querySelector(".text").innerHTML = html;
  const cites = ev.citations.length ? ev.citations.map((c) => `<div class="${c.shown ? "ok" : "no"}">cites ${esc(c.cited)}: ` +
    `${c.shown ? "among the passages shown" : "NOT among the passages shown"}</div>`).join("") : '<div class="no">cites no article</div>';
  const figs = (ev.unsupported_figures || []).length ? `<div class="no">figures stated in no passage shown: ${ev.unsupported_figures.map(esc).join(", ")}</div>` : "";
  const passages = ev.passages.map((p, i) => `<details><summary>[${i + 1}] ${esc(p.label)}</summary><pre class="record">${esc(p.text)}</pre></details>`).join("") || "<div>no passage retrieved</div>";
  d.insertAdjacentHTML("beforeend", `<div class="evidence"><b>passages shown</b>${passages}${cites}${figs}</div>`);
}

$("#chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  guarded($("#chat-error"), async () => {
    const text = $("#chat-input").value.trim();
    if (!text) return;
    $("#chat-input").value = "";
    bubble("user", text);
    history.push({role: "user", content: text});
    const d = bubble("assistant", "");
    d.classList.add("streaming");
    const r = await fetch("/llm/v1/chat/completions", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: $("#chat-system").value, messages: history, stream: true, max_tokens: +$("#chat-max").value || 64})});
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      history.pop();
      d.remove();
      throw new BoardError({error: (body.error && body.error.message) || body.error || body.detail || `${r.status}`});
    }
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "", answer = "", evidence = null, pieces = 0;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const line = buf.slice(0, cut).trim();
        buf = buf.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        const delta = chunk.choices[0].delta.content;
        if (delta) { answer += delta; pieces += 1; d.querySelector(".text").textContent = answer; }
        if (chunk.lorakit) evidence = chunk.lorakit;
      }
    }
    d.classList.remove("streaming");
    d.dataset.pieces = pieces;
    history.push({role: "assistant", content: answer.trim()});
    if (evidence) showEvidence(d, answer, evidence);
  });
});

// ------------------------------------------------------------------ export
function renderExports(exps) {
  $("#exports").innerHTML = "<tr><th>folder</th><th>adapter</th><th class=num>max logit difference</th><th>parity</th><th>GGUF</th></tr>" +
    (exps.map((e) => `<tr><td>${esc(e.path)}</td><td>${esc(e.adapter)}</td><td class=num>${Number(e.max_logit_diff).toExponential(2)}</td>` +
      `<td class="found-0">passed (merged = adapter model)</td><td>${esc(e.gguf ? e.gguf.split("/").pop() : "–")}</td></tr>`).join("") ||
      '<tr><td colspan=5 class="dim">none yet</td></tr>');
}

$("#export-run-btn").addEventListener("click", () => guarded($("#export-error"), async () => {
  $("#export-result").textContent = "";
  const view = await api("POST", "/api/export", {run: $("#export-run").value, out: $("#export-out").value, gguf: $("#export-gguf").checked});
  const r = await job(view, $("#export-progress"));
  $("#export-result").textContent = `merged → ${r.merged} (parity check: max logit difference ${Number(r.max_logit_diff).toExponential(2)})` +
    (r.gguf ? `; GGUF → ${r.gguf}` : "");
  await refresh();
}));

// ------------------------------------------------------------------ start
(async () => {
  showPage();
  await refresh();
  await buildForm();
  setInterval(() => refresh().catch(() => {}), 4000);  // runs started from the CLI appear here too
})();
