// The page's behaviour: no framework, no build step. Talks to the service's own endpoints:
// GET /categories, GET /health, POST /predict (multipart form), POST /predict_csv.
"use strict";

const $ = (id) => document.getElementById(id);
const INPUTS = ["title", "description", "image"];
const CATEGORIES = {};
// A service started with a bearer token: open the page as /#token=<token> and every request sends it.
const TOKEN = new URLSearchParams(location.hash.slice(1)).get("token");
const authHeaders = () => (TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {});

let READS = null;   // the inputs the bundle's models read (a Set), from its manifest; null: unknown

// What the bundle's single models read: a text field (title, description, or "text" = both) or,
// without a field, the image. Second levels read their members' outputs, not inputs.
function modelReads(manifest) {
  const reads = new Set();
  for (const m of Object.values(manifest.members || {})) {
    if (m.kind !== "unimodal") continue;
    if (m.field === "text") { reads.add("title"); reads.add("description"); }
    else if (m.field) reads.add(m.field);
    else reads.add("image");
  }
  return reads.size ? reads : null;
}

const META = (async () => {
  try {
    for (const c of await (await fetch("/categories")).json()) CATEGORIES[c.code] = c;
    const health = await (await fetch("/health")).json();
    $("model-version").textContent = health.model_version;
    READS = modelReads(await (await fetch("/model", { headers: authHeaders() })).json());
  } catch (e) {
    if (!$("model-version").textContent.trim() || $("model-version").textContent === "…") {
      $("model-version").textContent = "unavailable";
    }
  }
})();

// One readable line for a failed request: the service's `detail`, never a page of HTML or a trace.
async function errorText(r) {
  let text = "";
  try { text = await r.text(); } catch (e) { /* no body */ }
  try {
    const j = JSON.parse(text);
    if (typeof j.detail === "string") return j.detail;
    if (Array.isArray(j.detail)) return j.detail.map((d) => d.msg).join("; ");
  } catch (e) { /* not JSON */ }
  const short = text && text.length < 200 && !text.includes("\n") && !text.includes("<") ? `: ${text}` : "";
  return `the service answered ${r.status} ${r.statusText}${short}`;
}

function showError(el, msg) {
  el.textContent = msg;
  el.hidden = false;
}

function label(code) {
  const c = CATEGORIES[code];
  return c ? c.label : String(code);
}

// ------------------------------------------------------------------------------------ one product
function renderPrediction(row) {
  const ol = $("top3");
  ol.replaceChildren();
  for (let j = 1; j <= 3; j++) {
    const code = row[`top${j}_code`], prob = row[`top${j}_prob`];
    const li = document.createElement("li");
    li.dataset.code = code;
    li.dataset.prob = prob;
    const p = document.createElement("span");
    p.className = "prob";
    p.textContent = `${(100 * prob).toFixed(1)} %`;
    const name = document.createElement("b");
    name.textContent = row[`top${j}_category`] || label(code);   // "2583 - Piscine et accessoires"
    const en = document.createElement("span");
    en.className = "en";
    en.textContent = CATEGORIES[code] ? ` (${CATEGORIES[code].name_en})` : "";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, 100 * prob)}%`;
    li.append(p, name, en, bar);
    ol.append(li);
  }
  const missing = row.missing_inputs ? row.missing_inputs.split(",") : [];
  const given = INPUTS.filter((i) => !missing.includes(i));
  const used = READS ? given.filter((i) => READS.has(i)) : given;
  const unread = given.filter((i) => !used.includes(i));
  const notes = [];
  if (missing.length) notes.push(`not given: ${missing.join(", ")}`);
  if (unread.length) notes.push(`given but not read by this model: ${unread.join(", ")}`);
  $("inputs-used").textContent = used.join(", ") || "none";
  $("inputs-missing").textContent = notes.length ? ` (${notes.join("; ")})` : "";
  $("result").hidden = false;
}

$("product-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("error").hidden = true;
  $("result").hidden = true;
  const fd = new FormData();
  fd.append("title", $("title").value);
  if ($("description").value.trim()) fd.append("description", $("description").value);
  const file = $("image").files[0];
  if (file) fd.append("image", file, file.name);
  $("predict-button").disabled = true;
  try {
    const r = await fetch("/predict", { method: "POST", body: fd, headers: authHeaders() });
    if (!r.ok) {
      showError($("error"), await errorText(r));
      return;
    }
    const body = await r.json();
    await META;
    renderPrediction(body.predictions[0]);
  } catch (e) {
    showError($("error"), `no answer from the service (${e.message})`);
  } finally {
    $("predict-button").disabled = false;
  }
});

// Image: the file chooser, or a file dropped on the zone (it becomes the chooser's file).
function showImage() {
  const f = $("image").files[0];
  const img = $("image-preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.hidden = !f;
  $("image-clear").hidden = !f;
  if (f) {
    img.src = URL.createObjectURL(f);
    img.alt = f.name;
  } else {
    img.removeAttribute("src");
  }
}
const zone = $("drop-zone");
for (const t of ["dragenter", "dragover"]) {
  zone.addEventListener(t, (e) => { e.preventDefault(); zone.classList.add("over"); });
}
for (const t of ["dragleave", "drop"]) {
  zone.addEventListener(t, (e) => { e.preventDefault(); zone.classList.remove("over"); });
}
zone.addEventListener("drop", (e) => {
  if (e.dataTransfer && e.dataTransfer.files.length) {
    $("image").files = e.dataTransfer.files;
    showImage();
  }
});
$("image").addEventListener("change", showImage);
$("image-clear").addEventListener("click", () => { $("image").value = ""; showImage(); });

// ---------------------------------------------------------------------------------- a file of products
// A CSV line splitter that honours quotes (category names may hold commas).
function parseCsv(text) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (ch === '"') quoted = false;
      else field += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ",") { row.push(field); field = ""; }
    else if (ch === "\n") { row.push(field); rows.push(row); row = []; field = ""; }
    else if (ch !== "\r") field += ch;
  }
  if (field || row.length) { row.push(field); rows.push(row); }
  return rows;
}

$("csv-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("csv-error").hidden = true;
  $("csv-result").hidden = true;
  const file = $("csv-file").files[0];
  if (!file) {
    showError($("csv-error"), "Choose a file of products first.");
    return;
  }
  const fd = new FormData();
  fd.append("file", file, file.name);
  $("csv-button").disabled = true;
  try {
    const r = await fetch("/predict_csv", { method: "POST", body: fd, headers: authHeaders() });
    if (!r.ok) {
      showError($("csv-error"), await errorText(r));
      return;
    }
    const text = await r.text();
    const name = (/filename="([^"]+)"/.exec(r.headers.get("content-disposition") || "") || [])[1] || "predictions.csv";
    const a = $("csv-download");
    if (a.href.startsWith("blob:")) URL.revokeObjectURL(a.href);
    a.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    a.download = name;
    a.textContent = `Download ${name}`;
    const rows = parseCsv(text);
    const head = rows[0], body = rows.slice(1);
    const col = (n) => head.indexOf(n);
    $("csv-count").textContent = ` ${body.length} products` + (body.length > 10 ? " (first 10 below)" : "");
    const tbody = $("csv-preview").querySelector("tbody");
    tbody.replaceChildren();
    for (const r of body.slice(0, 10)) {
      const tr = document.createElement("tr");
      for (const v of [r[0], r[col("productid")], r[col("category")], r[col("top1_prob")]]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.append(td);
      }
      tbody.append(tr);
    }
    $("csv-result").hidden = false;
  } catch (e) {
    showError($("csv-error"), `no answer from the service (${e.message})`);
  } finally {
    $("csv-button").disabled = false;
  }
});
