// phasestem serve: the pages. Plain JavaScript, no build step; every request carries the token cookie.
"use strict";

const view = document.getElementById("view");
let info = { devices: ["cpu"] };
let closers = [];  // push channels of the current page, closed when the page changes
let routeSeq = 0;  // counts page changes: a page whose request returns after the next page began is dropped
class Superseded extends Error {}

// ---- helpers ---------------------------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "onclick" || k === "onchange" || k === "onsubmit") node[k] = v;
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}
function showError(msg) {
  const box = document.getElementById("error");
  box.textContent = msg || "";
  box.hidden = !msg;
}
async function api(path, opts = {}) {
  const seq = routeSeq;
  const res = await fetch(path, Object.assign({ credentials: "same-origin" }, opts));
  const data = await res.json().catch(() => ({ error: res.statusText }));
  if (seq !== routeSeq) throw new Superseded(path);  // the user moved on: this page must not draw over the next
  if (!res.ok) { showError(data.error || res.statusText); throw new Error(data.error || res.statusText); }
  return data;
}
function postJSON(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}
function params() { return new URLSearchParams(location.hash.split("?")[1] || ""); }
function go(hash) { location.hash = hash; }
function fmtTime(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min` : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}
function fmt(v) { return typeof v === "number" ? (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : +v.toPrecision(4)) : JSON.stringify(v); }
function push(url, onData) {  // a push channel (Server-Sent Events)
  const source = new EventSource(url);
  source.onmessage = (e) => onData(JSON.parse(e.data));
  source.addEventListener("end", () => source.close());
  closers.push(() => source.close());
  return source;
}
const COLORS = ["#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#5d4037", "#455a64"];
function drawLoss(svg, series) {  // series: [{values, label}] on a log scale
  svg.innerHTML = "";
  const W = 420, H = 240, L = 52, B = 26, T = 8, R = 8;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const all = series.flatMap((s) => s.values).filter((v) => v > 0);
  if (!all.length) return;
  let lo = Math.log10(Math.min(...all)), hi = Math.log10(Math.max(...all));
  if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
  const n = Math.max(...series.map((s) => s.values.length), 2);
  const x = (i) => L + (W - L - R) * i / (n - 1), y = (v) => T + (H - T - B) * (hi - Math.log10(v)) / (hi - lo);
  const ns = "http://www.w3.org/2000/svg";
  const add = (tag, attrs, text) => { const e = document.createElementNS(ns, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; svg.append(e); return e; };
  add("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#999" });
  add("text", { x: 2, y: T + 10, "font-size": 10 }, (10 ** hi).toExponential(2));
  add("text", { x: 2, y: H - B, "font-size": 10 }, (10 ** lo).toExponential(2));
  add("text", { x: L, y: H - 6, "font-size": 10 }, "epoch 1");
  add("text", { x: W - R - 50, y: H - 6, "font-size": 10 }, `epoch ${n}`);
  series.forEach((s, k) => {
    const pts = s.values.map((v, i) => (v > 0 ? `${x(i).toFixed(1)},${y(v).toFixed(1)}` : null)).filter(Boolean).join(" ");
    const line = add("polyline", { points: pts, fill: "none", stroke: COLORS[k % COLORS.length], "stroke-width": 1.5 });
    line.dataset.points = s.values.length;
    if (s.label) add("text", { x: W - R - 120, y: T + 14 + 12 * k, "font-size": 10, fill: COLORS[k % COLORS.length] }, s.label);
  });
}

// ---- files -----------------------------------------------------------------------------------------------------
async function filesPage() {
  const path = params().get("path") || "";
  const data = await api(`/api/files?path=${encodeURIComponent(path)}`);
  const rows = data.entries.map((e) => {
    const open = e.kind === "dir" || e.kind === "run" ? `#/files?path=${encodeURIComponent(e.path)}`
      : e.kind === "data" ? `#/dataset?path=${encodeURIComponent(e.path)}`
      : e.kind === "yaml" ? `#/params?path=${encodeURIComponent(e.path)}`
      : `/api/file?path=${encodeURIComponent(e.path)}`;
    return el("tr", {}, el("td", {}, el("a", { href: open, "data-path": e.path }, e.name + (e.kind === "dir" || e.kind === "run" ? "/" : ""))),
      el("td", {}, e.kind), el("td", {}, e.kind === "dir" ? "" : `${(e.size / 1024).toFixed(1)} KiB`),
      el("td", {}, e.kind === "dir" || e.kind === "run" ? "" : el("a", { href: `/api/file?download=1&path=${encodeURIComponent(e.path)}` }, "download")));
  });
  const fileInput = el("input", { type: "file", id: "upload-file" });
  const upload = el("button", { id: "upload-button", onclick: async () => {
    const f = fileInput.files[0];
    if (!f) return;
    await api(`/api/upload?path=${encodeURIComponent((path ? path + "/" : "") + f.name)}`, { method: "PUT", body: f });
    filesPage();
  } }, "Upload");
  view.replaceChildren(
    el("h2", {}, "Files: ", el("code", {}, "/" + path)),
    data.parent !== null ? el("p", {}, el("a", { href: `#/files?path=${encodeURIComponent(data.parent)}` }, "⬑ up")) : "",
    el("table", { id: "files-table" }, el("tr", {}, el("th", {}, "name"), el("th", {}, "kind"), el("th", {}, "size"), el("th", {}, "")), rows),
    el("p", {}, "Upload into this folder: ", fileInput, " ", upload));
}

// ---- dataset ---------------------------------------------------------------------------------------------------
async function datasetPage() {
  const q = params();
  const path = q.get("path") || "";
  const input = (name, label, size = 8) => el("label", {}, label + " ", el("input", { type: "text", id: `ds-${name}`, value: q.get(name) || "", size }));
  const form = el("div", { class: "card" },
    el("label", {}, "file ", el("input", { type: "text", id: "ds-path", value: path, size: 40 })),
    input("key", "patterns key"), input("scan_shape", "scan shape (rows,cols)"),
    input("bf", "BF radius px", 5), input("adf_inner", "ADF inner px", 5), input("adf_outer", "ADF outer px", 5),
    el("button", { id: "ds-apply", onclick: () => {
      const p = new URLSearchParams();
      for (const n of ["path", "key", "scan_shape", "bf", "adf_inner", "adf_outer"]) { const v = document.getElementById(`ds-${n}`).value.trim(); if (v) p.set(n, v); }
      go(`#/dataset?${p}`);
    } }, "Show"));
  view.replaceChildren(el("h2", {}, "Dataset"), form);
  if (!path) { view.append(el("p", {}, "Choose a 4D-STEM file (or open one from Files).")); return; }
  const qs = new URLSearchParams(q);
  const data = await api(`/api/dataset?${qs}`);
  const [sy, sx] = data.scan_shape, [H, W] = data.pattern_shape;
  const logBox = el("input", { type: "checkbox", id: "pattern-log", checked: true });
  const patImg = el("img", { id: "pattern-img", alt: "" });
  const ns = "http://www.w3.org/2000/svg";
  const overlay = document.createElementNS(ns, "svg");
  overlay.setAttribute("viewBox", `0 0 ${W} ${H}`);
  overlay.setAttribute("preserveAspectRatio", "none");
  overlay.id = "disk-overlay";
  const circle = (r, color) => { const c = document.createElementNS(ns, "circle"); c.setAttribute("cx", data.centre[1] + 0.5); c.setAttribute("cy", data.centre[0] + 0.5); c.setAttribute("r", r); c.setAttribute("fill", "none"); c.setAttribute("stroke", color); c.setAttribute("stroke-width", Math.max(W, H) / 200); overlay.append(c); };
  if (data.radius) circle(data.radius, "cyan");
  circle(data.bf, "lime"); circle(data.adf_inner, "orange"); if (data.adf_outer) circle(data.adf_outer, "orange");
  const patInfo = el("div", { id: "pattern-info" }, "click a scan position");
  const markers = [];
  async function showPattern(iy, ix) {
    const p = new URLSearchParams(qs); p.set("iy", iy); p.set("ix", ix); p.set("log", logBox.checked ? "1" : "0");
    const pat = await api(`/api/pattern?${p}`);
    patImg.src = pat.image;
    patInfo.textContent = `position (${pat.iy}, ${pat.ix}): ${fmt(pat.total)} counts, max ${fmt(pat.max)} (${pat.log ? "log" : "linear"})`;
    patInfo.dataset.position = `${pat.iy},${pat.ix}`;
    for (const m of markers) { m.style.left = `${(ix + 0.5) / sx * 240 - 4}px`; m.style.top = `${(iy + 0.5) / sy * 240 - 4}px`; m.hidden = false; }
  }
  logBox.onchange = () => { const pos = patInfo.dataset.position; if (pos) showPattern(...pos.split(",").map(Number)); };
  const scanCard = (key, title) => {
    const img = el("img", { class: "scan", id: `${key.replace("_", "-")}-img`, src: data.images[key], alt: title });
    img.onclick = (e) => { const r = img.getBoundingClientRect(); showPattern(Math.min(sy - 1, Math.floor((e.clientY - r.top) / r.height * sy)), Math.min(sx - 1, Math.floor((e.clientX - r.left) / r.width * sx))); };
    const marker = el("div", { style: "position:absolute;width:8px;height:8px;border:2px solid #f44;border-radius:50%;pointer-events:none", hidden: true });
    markers.push(marker);
    return el("div", { class: "card" }, el("h3", {}, title), el("div", { style: "position:relative" }, img, marker));
  };
  view.append(
    el("p", { id: "ds-summary" }, data.summary), el("p", {}, data.describe, " — detectors in pixels: BF ≤ ", fmt(data.bf), ", ADF ", fmt(data.adf_inner), "–", data.adf_outer ? fmt(data.adf_outer) : "edge"),
    el("div", { class: "row" }, scanCard("bf", "virtual bright field"), scanCard("adf", "virtual annular dark field"),
      scanCard("com_y", "centre of mass y"), scanCard("com_x", "centre of mass x")),
    el("div", { class: "row" },
      el("div", { class: "card" }, el("h3", {}, "mean pattern (log), disk and detectors"), el("div", { class: "pattern-box" }, el("img", { src: data.images.mean, id: "mean-img" }), overlay.cloneNode(true))),
      el("div", { class: "card" }, el("h3", {}, "pattern ", el("label", {}, logBox, "log")), el("div", { class: "pattern-box" }, patImg, overlay), patInfo)));
}

// ---- parameter form (calibrate's params.yaml or any reconstruction parameter file) -------------------------------
async function paramsForm(path, container) {
  const data = await api(`/api/params?path=${encodeURIComponent(path)}`);
  const inputs = {};
  const grid = el("div", { class: "form-grid", id: "params-form" });
  for (const [k, v] of Object.entries(data.fields)) {
    inputs[k] = el("input", { type: "text", name: k, value: v, size: 30 });
    grid.append(el("label", {}, k), inputs[k]);
  }
  const status = el("div", { id: "params-status" });
  const save = el("button", { id: "params-save", onclick: async () => {
    const values = {};
    for (const [k, i] of Object.entries(inputs)) if (i.value !== data.fields[k]) values[k] = i.value;
    if (!Object.keys(values).length) { status.textContent = "nothing changed"; return; }
    try { await postJSON("/api/params", { path, values }); status.textContent = "saved (valid)"; status.className = ""; showError(""); Object.assign(data.fields, values); }
    catch (e) { status.textContent = e.message; status.className = "field-error"; }
  } }, "Validate and save");
  const run = el("button", { id: "params-reconstruct", onclick: async () => {
    const job = await postJSON("/api/jobs", { command: "reconstruct", config: path, device: info.devices[info.devices.length > 1 ? 1 : 0] });
    go(`#/run/${job.id}`);
  } }, "Reconstruct with these");
  container.append(el("div", { class: "card" }, el("h3", {}, "parameters: ", el("code", {}, path)), grid, el("p", {}, save, " ", run), status));
}
async function paramsPage() {
  const path = params().get("path");
  view.replaceChildren(el("h2", {}, "Parameters"), el("p", {}, "Edited values are checked by the same schema as the YAML file before they are written."));
  try { await paramsForm(path, view); }
  catch (e) {  // not a reconstruction parameter file (a training or simulation config): its text, and the job form
    showError("");
    const text = await (await fetch(`/api/file?path=${encodeURIComponent(path)}`)).text();
    view.replaceChildren(el("h2", {}, "File: ", el("code", {}, path)), el("pre", { class: "log" }, text),
      el("p", {}, el("a", { href: `#/jobs?config=${encodeURIComponent(path)}&command=${/sim/.test(path) ? "simulate" : "train"}` }, "queue a job with it")));
  }
}

// ---- calibrate -------------------------------------------------------------------------------------------------
async function calibratePage() {
  const q = params();
  const jobId = q.get("job");
  if (!jobId) {
    const f = (id, label, value = "", size = 10) => el("label", {}, label + " ", el("input", { type: "text", id, value, size }));
    const start = el("button", { id: "calib-run", onclick: async () => {
      const v = (id) => document.getElementById(id).value.trim();
      const args = [];
      if (v("calib-key")) args.push("--key", v("calib-key"));
      if (v("calib-energy")) args.push("--energy", v("calib-energy"));
      if (v("calib-semiangle")) args.push("--semiangle", v("calib-semiangle"));
      if (v("calib-step")) args.push("--scan-step", ...v("calib-step").split(/[ ,]+/));
      if (v("calib-shape")) args.push("--scan-shape", ...v("calib-shape").split(/[ ,x]+/));
      const job = await postJSON("/api/jobs", { command: "calibrate", config: v("calib-file"), args });
      go(`#/calibrate?job=${job.id}`);
    } }, "Run calibrate");
    view.replaceChildren(el("h2", {}, "Calibrate"), el("div", { class: "card" },
      f("calib-file", "data file", q.get("path") || "", 40), f("calib-key", "patterns key"), f("calib-shape", "scan shape"),
      el("br"), f("calib-energy", "energy eV"), f("calib-semiangle", "semi-angle mrad"), f("calib-step", "scan step Å"), " ", start),
      el("p", {}, "Runs ", el("code", {}, "phasestem calibrate"), " as a job; its fits, numbers and the parameter file appear here when it ends."));
    return;
  }
  view.replaceChildren(el("h2", {}, `Calibrate: job ${jobId}`), el("p", { id: "calib-state" }, "…"));
  push(`/api/jobs/${jobId}/events`, async (d) => {
    document.getElementById("calib-state").textContent = `${d.command_line} — ${d.state}`;
    if (!d.final) return;
    const job = await api(`/api/jobs/${jobId}`);
    const figs = job.files.filter((p) => /calibration.*\.png$/.test(p));
    const nums = job.calibration ? Object.entries(job.calibration).filter(([, v]) => typeof v !== "object" || v === null) : [];
    view.append(el("div", { class: "row", id: "calib-figures" }, figs.map((p) => el("img", { src: `/api/file?path=${encodeURIComponent(p)}`, style: "max-width:520px" }))),
      el("table", { id: "calib-numbers" }, nums.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, fmt(v))))),
      d.state !== "done" ? el("pre", { class: "log" }, d.log.join("\n")) : "");
    const p = job.files.find((f) => f.endsWith("/params.yaml"));
    if (p) await paramsForm(p, view);
  });
}

// ---- jobs ------------------------------------------------------------------------------------------------------
function jobRow(j, selected) {
  const act = (label, fn, id) => el("button", { onclick: fn, id }, label);
  const box = el("input", { type: "checkbox", class: "compare-box", value: j.id, checked: selected.has(j.id) });
  box.onchange = () => (box.checked ? selected.add(j.id) : selected.delete(j.id));
  return el("tr", { "data-job": j.id },
    el("td", {}, box), el("td", {}, j.id), el("td", {}, j.name || j.command), el("td", { class: `state-${j.state}` }, j.state),
    el("td", {}, el("code", {}, j.command_line)),
    el("td", {}, j.command === "calibrate" ? el("a", { href: `#/calibrate?job=${j.id}` }, "open") : el("a", { href: `#/run/${j.id}` }, "watch"), " ",
      ["queued", "running"].includes(j.state) ? act("cancel", () => postJSON(`/api/jobs/${j.id}/cancel`, {}), `cancel-${j.id}`) : "",
      ["failed", "cancelled"].includes(j.state) ? act("resume", () => postJSON(`/api/jobs/${j.id}/resume`, {}), `resume-${j.id}`) : ""));
}
function newJobForm(prefill = {}) {
  const sel = (id, options, value) => el("select", { id }, options.map((o) => el("option", { value: o, selected: o === value }, o)));
  const card = el("div", { class: "card", id: "new-job" }, el("h3", {}, "New job"),
    el("label", {}, "command ", sel("job-command", ["reconstruct", "tune", "train", "simulate", "calibrate", "plan"], prefill.command || "reconstruct")),
    el("label", {}, "parameter file ", el("input", { type: "text", id: "job-config", value: prefill.config || "", size: 40 })),
    el("label", {}, "network (train) ", el("input", { type: "text", id: "job-network", value: prefill.network || "", size: 10 })),
    el("label", {}, "device ", sel("job-device", info.devices, prefill.device || info.devices[0])),
    el("label", {}, "processes ", el("input", { type: "number", id: "job-processes", value: prefill.processes || 1, min: 1, max: 64, style: "width:4em" })),
    el("label", {}, "name ", el("input", { type: "text", id: "job-name", value: prefill.name || "", size: 16 })), el("br"),
    el("label", {}, "changed parameters (key=value, one a line)", el("br"), el("textarea", { id: "job-set" }, (prefill.set || []).join("\n"))),
    el("label", {}, "extra arguments (one a line)", el("br"), el("textarea", { id: "job-args" }, (prefill.args || []).join("\n"))), el("br"),
    el("button", { id: "job-submit", onclick: async () => {
      const v = (id) => document.getElementById(id).value;
      const lines = (id) => v(id).split("\n").map((s) => s.trim()).filter(Boolean);
      const spec = { command: v("job-command"), config: v("job-config").trim(), device: v("job-device"), processes: +v("job-processes"), name: v("job-name"), set: lines("job-set"), args: lines("job-args") };
      if (spec.command === "train") spec.network = v("job-network").trim();
      const job = await postJSON("/api/jobs", spec);
      showError("");
      go(job.command === "calibrate" ? `#/calibrate?job=${job.id}` : `#/run/${job.id}`);
    } }, "Queue"));
  return card;
}
async function jobsPage() {
  const q = params();
  const prefill = q.get("config") ? { config: q.get("config"), command: q.get("command") || "reconstruct", set: (q.get("set") || "").split(";").filter(Boolean), device: q.get("device") || undefined } : {};
  const selected = new Set();
  const table = el("table", { id: "jobs-table" });
  const compareBtn = el("button", { id: "compare-selected", onclick: () => go(`#/compare?jobs=${[...selected].join(",")}`) }, "Compare selected");
  view.replaceChildren(el("h2", {}, "Jobs"), newJobForm(prefill), el("h3", {}, "Queue"), table, el("p", {}, compareBtn));
  push("/api/events", (d) => {
    table.replaceChildren(el("tr", {}, ["", "id", "name", "state", "command (type it in the workspace root)", ""].map((h) => el("th", {}, h))),
      ...d.jobs.slice().reverse().map((j) => jobRow(j, selected)));
  });
}

// ---- a plan's figures (phasestem plan --out RUN: RUN/expected/expected.png, RUN/sweep.png) ----------------------
async function showPlanFigures(runDir, container) {
  const listed = async (folder) => {
    try { return (await api(`/api/files?path=${encodeURIComponent(folder)}`)).entries.map((e) => e.path); }
    catch (e) { if (!(e instanceof Superseded)) showError(""); return []; }  // no such folder: nothing to show
  };
  const present = [...await listed(runDir), ...await listed(`${runDir}/expected`)];
  const figures = [[`${runDir}/expected/expected.png`, "expected result"], [`${runDir}/sweep.png`, "sweep"]];
  container.replaceChildren(...figures.filter(([p]) => present.includes(p)).map(([p, title]) =>
    el("div", { class: "card" }, el("h3", {}, title),
      el("img", { class: "plan-figure", src: `/api/file?path=${encodeURIComponent(p)}`, alt: title }))));
}

// ---- live run ----------------------------------------------------------------------------------------------------
async function runPage(jobId) {
  const job = await api(`/api/jobs/${jobId}`);
  window.__liveUpdates = [];
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "loss"); svg.id = "loss-curve";
  const img = (id, title) => el("div", { class: "card" }, el("h3", {}, title), el("img", { class: "live", id, alt: title }));
  const rerunSet = el("textarea", { id: "rerun-set" }, `run.n_epochs=${job.spec.set?.length ? "" : ""}`);
  rerunSet.value = (job.spec.set || []).join("\n");
  const config = job.command === "reconstruct" || job.command === "tune" ? `${job.run_dir}/params.yaml` : job.spec.config;
  view.replaceChildren(
    el("h2", {}, `Run ${jobId}`, job.name ? ` — ${job.name}` : ""),
    el("p", {}, el("code", { id: "run-command" }, job.command_line)),
    el("p", {}, "state ", el("strong", { id: "run-state" }, job.state), " · epoch ", el("strong", { id: "run-epoch" }, "–"),
      " · ETA ", el("span", { id: "run-eta" }, "–"), " · elapsed ", el("span", { id: "run-elapsed" }, "–"), el("span", { id: "run-gpu" }, ""),
      " ", el("button", { id: "run-cancel", onclick: () => postJSON(`/api/jobs/${jobId}/cancel`, {}) }, "Cancel"),
      " ", el("button", { id: "run-resume", onclick: () => postJSON(`/api/jobs/${jobId}/resume`, {}) }, "Resume")),
    el("div", { class: "row" }, el("div", { class: "card" }, el("h3", {}, "loss"), svg), img("live-phase", "object phase"),
      img("live-probe-amp", "probe amplitude"), img("live-probe-phase", "probe phase")),
    el("h3", {}, "log"), el("pre", { class: "log", id: "run-log" }),
    el("div", { class: "card" }, el("h3", {}, "Re-run with changed parameters"), el("label", {}, "key=value, one a line", el("br"), rerunSet), " ",
      el("button", { id: "rerun", onclick: async () => {
        const set = rerunSet.value.split("\n").map((s) => s.trim()).filter(Boolean);
        const spec = { command: job.command, config, device: job.device, processes: job.processes, set, name: `re-run of ${jobId}`, args: job.spec.args || [] };
        if (job.command === "reconstruct" || job.command === "tune") spec.set = set;
        if (job.network || job.spec.network) spec.network = job.spec.network;
        const j = await postJSON("/api/jobs", spec);
        go(`#/run/${j.id}`);
      } }, "Re-run")));
  const planFigures = el("div", { class: "row", id: "plan-figures" });
  if (job.command === "plan") view.insertBefore(planFigures, document.getElementById("run-log").previousSibling);
  push(`/api/jobs/${jobId}/events`, (d) => {
    if (d.error) { showError(d.error); return; }
    if (job.command === "plan" && d.final && d.state === "done") showPlanFigures(job.run_dir, planFigures);
    document.getElementById("run-state").textContent = d.state + (d.state === "failed" && d.returncode ? ` (exit ${d.returncode})` : "");
    document.getElementById("run-elapsed").textContent = fmtTime(d.elapsed_s);
    const logBox = document.getElementById("run-log");
    logBox.textContent = d.log.join("\n");
    logBox.scrollTop = logBox.scrollHeight;
    const live = d.live;
    if (live) {
      document.getElementById("run-epoch").textContent = `${live.epoch} / ${live.n_epochs}`;
      document.getElementById("run-eta").textContent = d.final ? "–" : fmtTime(live.eta_s);
      document.getElementById("run-gpu").textContent = live.gpu_memory_gb !== null ? ` · GPU memory ${live.gpu_memory_gb.toFixed(2)} GiB` : "";
      drawLoss(svg, [{ values: live.loss }]);
      document.getElementById("live-phase").src = live.images.object_phase;
      document.getElementById("live-probe-amp").src = live.images.probe_amplitude;
      document.getElementById("live-probe-phase").src = live.images.probe_phase;
      window.__liveUpdates.push({ epoch: live.epoch, state: d.state, points: live.loss.length, phase: live.images.object_phase });
    }
  });
}

// ---- compare ---------------------------------------------------------------------------------------------------
async function comparePage() {
  const ids = params().get("jobs");
  if (!ids) {
    const jobs = (await api("/api/jobs")).jobs.filter((j) => j.state === "done" && ["reconstruct", "tune"].includes(j.command));
    const boxes = jobs.map((j) => el("label", {}, el("input", { type: "checkbox", class: "compare-pick", value: j.id }), ` ${j.id} ${j.name || j.command}`));
    view.replaceChildren(el("h2", {}, "Compare"), el("p", {}, "Finished reconstructions:"), el("div", {}, boxes),
      el("button", { id: "compare-go", onclick: () => go(`#/compare?jobs=${[...document.querySelectorAll(".compare-pick:checked")].map((b) => b.value).join(",")}`) }, "Compare"));
    return;
  }
  const data = await api(`/api/compare?jobs=${encodeURIComponent(ids)}`);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "loss"); svg.id = "compare-loss";
  const cards = data.runs.map((r) => el("div", { class: "card compare-run" },
    el("h3", {}, `job ${r.job} ${r.name || ""}`), el("img", { class: "live", src: r.image, alt: `phase of job ${r.job}` }),
    el("div", {}, `${r.epochs} epochs, final loss ${r.final_loss === null ? "–" : fmt(r.final_loss)}`),
    Object.entries(r.metrics).map(([k, v]) => el("div", {}, `${k}: ${fmt(v)}`)),
    el("div", {}, r.files.map((f) => el("div", {}, el("a", { href: `/api/file?download=1&path=${encodeURIComponent(f)}` }, f.split("/").pop()))))));
  view.replaceChildren(el("h2", {}, "Compare"),
    el("p", {}, `one colour scale for every phase: ${fmt(data.vmin)} to ${fmt(data.vmax)} rad (mean removed)`),
    el("div", { class: "row", id: "compare-runs" }, cards, el("div", { class: "card" }, el("h3", {}, "loss"), svg)),
    el("h3", {}, "parameters that differ"),
    el("table", { id: "compare-diff" }, el("tr", {}, el("th", {}, "parameter"), data.runs.map((r) => el("th", {}, `job ${r.job}`))),
      data.diff.map((d) => el("tr", {}, el("td", {}, d.key), d.values.map((v) => el("td", {}, JSON.stringify(v)))))));
  drawLoss(svg, data.runs.map((r) => ({ values: r.loss, label: `job ${r.job}` })));
}

// ---- router ----------------------------------------------------------------------------------------------------
const PAGES = { files: filesPage, dataset: datasetPage, calibrate: calibratePage, jobs: jobsPage, compare: comparePage, params: paramsPage };
async function route() {
  const seq = ++routeSeq;
  for (const close of closers) close();
  closers = [];
  showError("");
  const [name, arg] = (location.hash.replace(/^#\/?/, "").split("?")[0] || "files").split("/");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === name);
  document.body.dataset.page = name;
  document.body.dataset.ready = "";
  try {
    if (name === "run") await runPage(arg);
    else await (PAGES[name] || filesPage)();
  } catch (e) {
    if (e instanceof Superseded) return;
    showError(e.message);
  }
  if (seq === routeSeq) document.body.dataset.ready = name;
}
window.addEventListener("hashchange", route);
(async () => {
  if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", "/" + location.hash);  // the cookie holds it now
  try { info = await api("/api/info"); document.getElementById("root-name").textContent = `workspace: ${info.root}`; } catch (e) { /* shown */ }
  route();
})();
