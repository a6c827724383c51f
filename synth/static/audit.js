// The audit page. Every value from the run is put in the page as text (textContent and
// text nodes), never parsed as HTML: teacher output is untrusted.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { page: 0, per: 50, total: 0 };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(table, rows) {
  table.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c))))));
}

const num = (n) => el("td", { class: "num" }, (n ?? 0).toLocaleString());
const text = (v) => (typeof v === "string" ? v : JSON.stringify(v));

async function getJSON(url) {
  const r = await fetch(url);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function option(select, value, label) {
  select.appendChild(el("option", { value }, label));
}

async function loadSummary() {
  const s = await getJSON("/api/summary");
  $("run").textContent = `${s.run} · ${s.total.toLocaleString()} records` + (s.teacher ? ` · teacher ${s.teacher.model}` : "");
  const counts = (s.generate && s.generate.counts) || {};
  const rows = [];
  if (counts.requests !== undefined) {
    rows.push(["requests", num(counts.requests), ""]);
    rows.push(["answered", num(counts.kept), ""]);
    rows.push(["failed", num(counts.failed), ""]);
  }
  const top = s.funnel.length ? s.funnel[0].count : 0;
  for (const step of s.funnel) {
    if (step.stage === "raw") { rows.push(["curated", num(step.count), ""]); continue; }
    const width = top ? Math.round((100 * step.remaining) / top) : 0;
    rows.push([`rejected by ${step.stage}`, num(step.rejected), el("span", { class: "bar", style: `width:${width}px` })]);
  }
  if (s.stats && s.stats.kept !== undefined) rows.push(["kept", num(s.stats.kept), `train ${s.stats.train ?? 0}, eval ${s.stats.eval ?? 0}`]);
  fill($("funnel"), rows);
  fill($("stages"), Object.entries(s.stages).map(([k, v]) => [el("td", { class: `stage-${k.split(" ")[0]}` }, k), num(v)]));
  const pii = Object.entries(s.pii);
  fill($("pii-counts"), pii.length ? pii.map(([k, v]) => [k, num(v)]) : [["none", ""]]);
  for (const k of Object.keys(s.stages)) option($("stage"), k, k);
  for (const k of Object.keys(s.filters)) option($("filter"), k, `${k} (${s.filters[k]})`);
  for (const k of Object.keys(s.pii)) option($("pii"), k, k);
  if (s.students.length) {
    $("students-section").hidden = false;
    $("students").replaceChildren(...s.students.map(studentBlock));
  }
  if (s.diff) {
    $("diff-section").hidden = false;
    $("diff").textContent = s.diff;
  }
  if (s.compare) {
    $("compare-section").hidden = false;
    $("compare").textContent = s.compare;
  }
}

function studentBlock(st) {
  const m = st.metrics;
  const lines = [];
  for (const key of ["student_before", "student_after", "verifier"]) {
    if (m[key]) lines.push(el("div", {}, `${key}: ${text(m[key])}`));
  }
  const table = el("table", {}, el("tr", {}, el("th", {}, "prompt"), el("th", {}, "teacher"), el("th", {}, "student before"), el("th", {}, "student after")));
  for (const x of st.samples) {
    table.appendChild(el("tr", {}, el("td", {}, el("pre", {}, x.prompt)), el("td", {}, el("pre", {}, x.teacher)),
      el("td", {}, el("pre", {}, x.student_before ?? "")), el("td", {}, el("pre", {}, x.student_after ?? ""))));
  }
  return el("div", {}, el("h3", {}, st.name), ...lines, table);
}

async function loadRecords() {
  const params = new URLSearchParams({ page: state.page, per: state.per });
  for (const id of ["q", "stage", "filter", "pii", "seed"]) if ($(id).value) params.set(id, $(id).value);
  let data;
  try {
    data = await getJSON(`/api/records?${params}`);
  } catch (e) {
    $("count").textContent = `search failed: ${e.message}`;
    return;
  }
  state.total = data.total;
  $("count").textContent = `${data.total.toLocaleString()} record${data.total === 1 ? "" : "s"}`;
  const tbody = $("records").tBodies[0];
  tbody.replaceChildren(...data.rows.map((r) => {
    const tr = el("tr", { "data-rowid": r.rowid },
      el("td", {}, r.id.slice(0, 12)),
      el("td", { class: `stage-${r.stage.split(" ")[0]}` }, r.stage),
      el("td", {}, r.filter ? `${r.filter}: ${r.reason}` : ""),
      el("td", { class: "prompt" }, r.prompt || ""),
      el("td", {}, r.seed_line !== null ? `line ${r.seed_line}` : ""));
    tr.addEventListener("click", () => showRecord(r.rowid));
    return tr;
  }));
  const pages = Math.max(1, Math.ceil(data.total / state.per));
  $("pageinfo").textContent = `page ${state.page + 1} of ${pages.toLocaleString()}`;
  $("prev").disabled = state.page === 0;
  $("next").disabled = state.page + 1 >= pages;
}

async function showRecord(rowid) {
  const d = await getJSON(`/api/record?rowid=${encodeURIComponent(rowid)}`);
  const row = d.row, rec = d.record;
  $("detail").hidden = false;
  $("detail-id").textContent = row.id;
  $("detail-verdict").textContent = row.stage === "rejected" ? `Not used: rejected by ${row.filter}: ${row.reason}`
    : row.stage === "failed" ? `Not used: the request failed: ${row.reason}`
    : row.stage === "not curated" ? "Not curated (another configuration's record, or curation has not run)"
    : `Used: in ${row.stage}.jsonl`;
  const seed = rec.seed || {};
  const fields = seed.fields || {};
  const doc = fields.source && typeof fields.source === "object" && fields.source.file ? fields.source : null;
  const shownFields = Object.fromEntries(Object.entries(fields).filter(([k]) => !["documents", "context", "source"].includes(k)));
  const prov = [
    ["teacher", rec.teacher ? `${rec.teacher.backend || ""} ${rec.teacher.model || ""}`.trim() : ""],
    ["sampling", rec.sampling ? text(rec.sampling) : ""],
    ["template", rec.template ? `${rec.template.name || ""} sha256 ${(rec.template.sha256 || "").slice(0, 12)}` : ""],
    ["seed", seed.source ? `${seed.source} line ${seed.line}` : ""],
    ["seed fields", Object.keys(shownFields).length ? text(shownFields) : ""],
    ["source document", doc ? [doc.file, doc.page ? `page ${doc.page}` : "", doc.section ? `section ${doc.section}` : "",
      doc.span ? `characters ${doc.span[0]}-${doc.span[1]}` : ""].filter((x) => x).join(", ") : ""],
    ["source text", typeof fields.context === "string" ? fields.context : ""],
    ["sample", rec.sample_index ?? ""],
    ["finish reason", rec.finish_reason ?? ""],
    ["generated at", rec.created_at ?? ""],
    ["found in", `${row.source}.jsonl line ${row.line}`],
  ].filter(([, v]) => v !== "");
  fill($("provenance"), prov);
  $("detail-pii").textContent = d.pii ? Object.entries(d.pii).map(([k, v]) => `${k}: ${v}`).join(", ") + " (values replaced by [TYPE]; originals are not shown)" : "none";
  $("messages").replaceChildren(...(rec.messages || []).map((m) => el("div", { class: "message" },
    el("div", { class: "role" }, m.role + (m.name ? ` ${m.name}` : "")),
    el("pre", {}, typeof m.content === "string" ? m.content : text(m.content)),
    m.tool_calls ? el("pre", {}, text(m.tool_calls)) : null)));
  const st = d.students.map((x) => el("table", {},
    el("tr", {}, el("th", {}, x.student), el("th", {}, "answer")),
    el("tr", {}, el("td", {}, "teacher"), el("td", {}, el("pre", {}, x.teacher))),
    el("tr", {}, el("td", {}, "student before"), el("td", {}, el("pre", {}, x.student_before ?? ""))),
    el("tr", {}, el("td", {}, "student after"), el("td", {}, el("pre", {}, x.student_after ?? "")))));
  $("detail-students").replaceChildren(...(st.length ? [el("h3", {}, "The student on this prompt"), ...st] : []));
  $("detail").scrollIntoView();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("controls").addEventListener("submit", (e) => { e.preventDefault(); state.page = 0; loadRecords(); });
  for (const id of ["stage", "filter", "pii"]) $(id).addEventListener("change", () => { state.page = 0; loadRecords(); });
  $("prev").addEventListener("click", () => { state.page -= 1; loadRecords(); });
  $("next").addEventListener("click", () => { state.page += 1; loadRecords(); });
  await loadSummary();
  await loadRecords();
  document.body.setAttribute("data-ready", "1");
});
