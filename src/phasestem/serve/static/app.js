// phasestem serve: the pages. Plain JavaScript, no build step; every request carries the token cookie.
// No inline styles or scripts anywhere (the pages run under a strict Content-Security-Policy): styles are classes in
// app.css, or CSSOM assignments (node.style.prop = …) where a size is computed.
"use strict";

const view = document.getElementById("view");
let info = { devices: ["cpu"] };
let closers = [];  // push channels of the current page, closed when the page changes
let routeSeq = 0;  // counts page changes: a page whose request returns after the next page began is dropped
class Superseded extends Error {}
const SVG = "http://www.w3.org/2000/svg";

// ---- helpers ---------------------------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "style") throw new Error("no inline styles (Content-Security-Policy): use a class");
    if (k.startsWith("on")) node[k] = v;
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}
function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
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
function enc(v) { return encodeURIComponent(v); }
function fmtTime(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min` : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}
function fmt(v) { return typeof v === "number" ? (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : +v.toPrecision(4)) : JSON.stringify(v); }
function num(v, digits = 3) {  // a short label for an axis or a colour bar
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-2) { const [m, e] = v.toExponential(digits - 1).split("e"); return `${+m}e${+e}`; }
  return String(+v.toPrecision(digits));
}
function push(url, onData) {  // a push channel (Server-Sent Events)
  const source = new EventSource(url);
  source.onmessage = (e) => onData(JSON.parse(e.data));
  source.addEventListener("end", () => source.close());
  closers.push(() => source.close());
  return source;
}
const COLORS = ["#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#5d4037", "#455a64"];

// ---- axes, colour bars and scale bars ----------------------------------------------------------------------------
function niceTicks(lo, hi, n = 4) {  // round numbers within [lo, hi]
  const span = hi - lo;
  if (!(span > 0) || !isFinite(span)) return [lo];
  const raw = span / n, p = 10 ** Math.floor(Math.log10(raw)), f = raw / p;
  const step = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  return out;
}
function logTicks(lo, hi) {  // decades within [lo, hi] (both > 0), with 2 and 5 (or 3) between them on short spans
  const span = Math.log10(hi) - Math.log10(lo);
  const mult = span < 1.3 ? [1, 2, 5] : span < 2.6 ? [1, 3] : [1];
  const a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
  const every = Math.max(1, Math.ceil((b - a + 1) / 7));
  const out = [];
  for (let k = a; k <= b; k += every) for (const m of mult) { const v = m * 10 ** k; if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) out.push(v); }
  return out;
}
function niceLength(max) {  // the largest 1, 2 or 5 × 10^k not over max
  const p = 10 ** Math.floor(Math.log10(max));
  return [5, 2, 1].map((m) => m * p).find((v) => v <= max) || p;
}
function colourBar(scale, height) {  // an SVG colour bar: the gradient, its ticks and the values' unit
  const W = 64, svg = svgEl("svg", { class: "colourbar", width: W, height, viewBox: `0 0 ${W} ${height}` });
  const top = 6, h = height - 12, bar = 12;
  svg.append(svgEl("image", { href: scale.bar, x: 1, y: top, width: bar, height: h, preserveAspectRatio: "none" }),
    svgEl("rect", { x: 1, y: top, width: bar, height: h, fill: "none", stroke: "#555", "stroke-width": 0.8 }));
  const { vmin, vmax } = scale;
  const pos = scale.log ? (v) => top + h * (Math.log10(vmax) - Math.log10(v)) / (Math.log10(vmax) - Math.log10(vmin))
    : (v) => top + h * (vmax - v) / ((vmax - vmin) || 1);
  let ticks = scale.log ? logTicks(vmin, vmax) : niceTicks(vmin, vmax, Math.max(2, Math.round(h / 45)));
  if (ticks.length < 2) ticks = [vmin, vmax];
  for (const t of ticks) {
    const y = pos(t);
    svg.append(svgEl("line", { x1: bar + 1, x2: bar + 5, y1: y, y2: y, stroke: "#333" }),
      svgEl("text", { x: bar + 7, y: y + 3.5, class: "tick" }, num(t)));
  }
  const unit = (scale.unit || "") + (scale.log ? " (log)" : "");
  svg.append(svgEl("text", { x: W - 6, y: top + h / 2, class: "unit", transform: `rotate(90 ${W - 6} ${top + h / 2})` }, unit));
  svg.dataset.vmin = vmin; svg.dataset.vmax = vmax;
  return svg;
}
function scaleBar(scale, width, height) {  // an SVG layer over an image: a bar of a round length, in Å, mrad or px
  const svg = svgEl("svg", { class: "overlay scalebar", viewBox: `0 0 ${width} ${height}` });
  const [rows, cols] = scale.shape, px = scale.pixel || { size: 1, unit: "px" };
  const extent = cols * px.size;  // the image's width in its unit
  const length = niceLength(extent * 0.3);
  const barPx = length / px.size * width / cols;
  const label = `${num(length)} ${px.unit === "px" ? (length === 1 ? "px" : "px") : px.unit}`;
  const x = 8, y = height - 10, boxW = Math.max(barPx, label.length * 6.2) + 10;
  svg.append(svgEl("rect", { x: x - 5, y: y - 19, width: boxW, height: 25, rx: 3, class: "scalebar-frame" }),
    svgEl("rect", { x, y: y - 3, width: barPx, height: 4, class: "scalebar-bar" }),
    svgEl("text", { x, y: y - 7, class: "scalebar-text" }, label));
  svg.dataset.length = length; svg.dataset.unit = px.unit;
  void rows;
  return svg;
}
// An image with its scale bar over it and its colour bar beside it; figure.update(src, scale) draws a new one.
function figure(id, title, width, opts = {}) {
  const img = el("img", { id, alt: title, class: `fig-img ${opts.imgClass || ""}` });
  const box = el("div", { class: "fig-box" }, img);
  const side = el("div", { class: "fig-side" });
  const caption = el("figcaption", {}, el("span", { class: "fig-title" }, title), el("span", { class: "fig-note" }));
  const node = el("figure", { class: "fig" }, el("div", { class: "fig-row" }, box, side), caption);
  let layer = null;
  node.img = img; node.box = box; node.width = width;
  node.resize = (rows, cols) => {  // the box of an image of rows × cols pixels
    const height = Math.max(40, Math.round(width * rows / cols));
    img.style.width = `${width}px`; img.style.height = `${height}px`;
    box.style.width = `${width}px`; box.style.height = `${height}px`;
    return height;
  };
  node.update = (src, scale) => {
    if (src) img.src = src;
    if (!scale) return;
    const height = node.resize(...scale.shape);
    if (layer) layer.remove();
    if (!opts.noScaleBar) { layer = scaleBar(scale, width, height); box.append(layer); }
    side.replaceChildren(colourBar(scale, height));
    node.querySelector(".fig-note").textContent = scale.pixel && scale.pixel.note ? ` — ${scale.pixel.note}` : "";
    node.scale = scale;
    if (opts.onResize) opts.onResize(width, height);
  };
  return node;
}
function lightbox(src, title) {  // a figure enlarged over the page; a click or Escape closes it
  const dialog = document.getElementById("lightbox");
  dialog.replaceChildren(el("img", { src, alt: title }), el("p", {}, title, " — click or press Escape to close"));
  dialog.onclick = () => dialog.close();
  dialog.showModal();
}
function figureThumbs(paths) {  // a run's figures (paths under the root) as thumbnails that enlarge on a click
  return paths.map((p) => {
    const src = `/api/file?path=${enc(p)}`, title = p.split("/").pop();
    const img = el("img", { src, alt: title, class: "thumb", title: "click to enlarge" });
    img.onclick = () => lightbox(src, title);
    return el("figure", { class: "card thumb-card" }, img, el("figcaption", {}, title));
  });
}
function plot(svg, series, opts) {  // line plots: series [{x, y, label}] with axes, ticks and a legend
  svg.replaceChildren();
  const W = opts.width || 440, H = opts.height || 250, L = 58, B = 36, T = 10, R = 10;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const log = !!opts.logY;
  const ys = series.flatMap((s) => s.y).filter((v) => v !== null && isFinite(v) && (!log || v > 0));
  const xs = series.flatMap((s) => s.x).filter((v) => v !== null && isFinite(v));
  if (!ys.length || !xs.length) { svg.append(svgEl("text", { x: W / 2, y: H / 2, class: "axis-title", "text-anchor": "middle" }, "no data yet")); return; }
  const f = log ? Math.log10 : (v) => v;
  let lo = f(Math.min(...ys)), hi = f(Math.max(...ys));
  if (hi - lo < 1e-9) { lo -= log ? 0.5 : Math.abs(lo) * 0.1 + 1e-3; hi += log ? 0.5 : Math.abs(hi) * 0.1 + 1e-3; }
  if (!log) { const pad = (hi - lo) * 0.05; lo -= pad; hi += pad; }
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x1 - x0 < 1e-12) { x0 -= 1; x1 += 1; }
  const X = (v) => L + (W - L - R) * (v - x0) / (x1 - x0), Y = (v) => T + (H - T - B) * (hi - f(v)) / (hi - lo);
  svg.append(svgEl("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "plot-frame" }));
  const yt = log ? logTicks(10 ** lo, 10 ** hi) : niceTicks(lo, hi, 4);
  if (log && yt.length < 2) yt.push(10 ** lo, 10 ** hi);
  for (const t of yt) {
    const y = Y(t);
    if (y < T - 0.5 || y > H - B + 0.5) continue;
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" }), svgEl("text", { x: L - 4, y: y + 3.5, class: "tick", "text-anchor": "end" }, num(t, log ? 2 : 3)));
  }
  for (const t of niceTicks(x0, x1, 5).filter((t) => !opts.integerX || Number.isInteger(t))) {
    const x = X(t);
    svg.append(svgEl("line", { x1: x, x2: x, y1: T, y2: H - B, class: "grid" }), svgEl("text", { x, y: H - B + 13, class: "tick", "text-anchor": "middle" }, num(t)));
  }
  svg.append(svgEl("text", { x: L + (W - L - R) / 2, y: H - 4, class: "axis-title", "text-anchor": "middle" }, opts.xLabel || ""),
    svgEl("text", { x: 12, y: T + (H - T - B) / 2, class: "axis-title", "text-anchor": "middle", transform: `rotate(-90 12 ${T + (H - T - B) / 2})` }, opts.yLabel || ""));
  series.forEach((s, k) => {
    const pts = s.y.map((v, i) => (v !== null && isFinite(v) && (!log || v > 0) ? `${X(s.x[i]).toFixed(1)},${Y(v).toFixed(1)}` : null)).filter(Boolean).join(" ");
    const line = svgEl("polyline", { points: pts, fill: "none", stroke: s.color || COLORS[k % COLORS.length], "stroke-width": 1.6 });
    line.dataset.points = s.y.length;
    svg.append(line);
    if (s.label) {
      const ly = T + 12 + 13 * k;
      svg.append(svgEl("line", { x1: W - R - 118, x2: W - R - 102, y1: ly - 4, y2: ly - 4, stroke: s.color || COLORS[k % COLORS.length], "stroke-width": 2 }),
        svgEl("text", { x: W - R - 98, y: ly, class: "legend" }, s.label));
    }
  });
}
function drawLoss(svg, series) {  // series: [{values, label}] against the epoch, on a log scale
  plot(svg, series.map((s) => ({ x: s.values.map((_, i) => i + 1), y: s.values, label: s.label })),
    { logY: true, integerX: true, xLabel: "epoch", yLabel: "loss (log scale)" });
}

// ---- a small file picker (the workspace's files, filtered by kind) -----------------------------------------------
function pickFile(kinds, start = "") {  // resolves to a file's path (relative to the root) or null
  const dialog = document.getElementById("picker");
  return new Promise((resolve) => {
    let chosen = null;
    const list = el("ul", { class: "picker-list", id: "picker-list" });
    const where = el("code", {});
    async function show(folder) {
      let data;
      try { data = await (await fetch(`/api/files?path=${enc(folder)}`, { credentials: "same-origin" })).json(); } catch (e) { data = { error: String(e) }; }
      if (data.error) { list.replaceChildren(el("li", { class: "field-error" }, data.error)); return; }
      where.textContent = "/" + data.path;
      const items = [];
      if (data.parent !== null) items.push(el("li", {}, el("a", { href: "#", class: "picker-dir", onclick: (e) => { e.preventDefault(); show(data.parent); } }, "⬑ up")));
      for (const e of data.entries) {
        if (e.kind === "dir" || e.kind === "run") items.push(el("li", {}, el("a", { href: "#", class: "picker-dir", "data-path": e.path, onclick: (ev) => { ev.preventDefault(); show(e.path); } }, `${e.name}/`)));
        else if (kinds.includes(e.kind)) items.push(el("li", {}, el("a", { href: "#", class: "picker-file", "data-path": e.path, onclick: (ev) => { ev.preventDefault(); chosen = e.path; dialog.close(); } }, e.name), el("span", { class: "muted" }, ` ${(e.size / 1024).toFixed(1)} KiB`)));
      }
      if (items.length === (data.parent !== null ? 1 : 0)) items.push(el("li", { class: "muted" }, `no ${kinds.join(" or ")} files here`));
      list.replaceChildren(...items);
    }
    dialog.replaceChildren(el("h3", {}, `Choose a ${kinds.includes("data") ? "4D-STEM data" : "parameter (.yaml)"} file`), el("p", {}, "in ", where), list,
      el("p", {}, el("button", { type: "button", id: "picker-cancel", onclick: () => dialog.close() }, "Cancel")));
    dialog.onclose = () => resolve(chosen);
    dialog.onclick = null;
    dialog.showModal();
    show(start.includes("/") ? start.slice(0, start.lastIndexOf("/")) : "");
  });
}
function fileField(id, value, kinds, size = 40) {  // a text field with a "Browse…" button
  const input = el("input", { type: "text", id, value: value || "", size });
  const kindsOf = typeof kinds === "function" ? kinds : () => kinds;
  const browse = el("button", { type: "button", class: "browse", id: `${id}-browse`, onclick: async () => {
    const p = await pickFile(kindsOf(), input.value);
    if (p) { input.value = p; input.dispatchEvent(new Event("input")); }
  } }, "Browse…");
  return el("span", { class: "file-field" }, input, " ", browse);
}

// ---- reconstruct --auto (a data file: calibrate, direct start, reconstruct; phasestem reconstruct DATA --auto) ----
function autoArgs(v) {  // the reader and optics options of the --auto form, as the command's arguments
  const args = [];
  const add = (flag, text, split = false) => { const t = (text || "").trim(); if (t) args.push(flag, ...(split ? t.split(/[\s,x]+/).filter(Boolean) : [t])); };
  add("--key", v.key); add("--energy", v.energy); add("--semiangle", v.semiangle); add("--scan-step", v.step, true);
  add("--scan-shape", v.shape, true); add("--c10", v.c10); add("--epochs", v.epochs);
  return args;
}
function autoForm(path, prefill = {}, idPrefix = "auto") {
  const id = (n) => `${idPrefix}-${n}`;
  const field = (n, label, value, size = 9, hint = "") => el("label", { title: hint }, label + " ", el("input", { type: "text", id: id(n), value: value ?? "", size }));
  const device = el("select", { id: id("device") }, info.devices.map((d) => el("option", { value: d, selected: d === (info.devices[1] || info.devices[0]) }, d)));
  const preview = el("code", { id: id("command") });
  const values = () => Object.fromEntries(["key", "energy", "semiangle", "step", "shape", "c10", "epochs"].map((n) => [n, document.getElementById(id(n))?.value || ""]));
  const file = fileField(id("file"), path, ["data"], 34);
  const update = () => { preview.textContent = ["phasestem reconstruct", file.firstChild.value.trim() || "DATA", "--auto", ...autoArgs(values()), "--device", device.value].join(" "); };
  const run = el("button", { id: id("run"), class: "primary", onclick: async () => {
    const data = file.firstChild.value.trim();
    const job = await postJSON("/api/jobs", { command: "reconstruct", config: data, auto: true, device: device.value, args: autoArgs(values()), name: `--auto ${data.split("/").pop()}` });
    showError("");
    const dialog = document.getElementById("auto-dialog");
    if (dialog.open) dialog.close();
    go(`#/run/${job.id}`);
  } }, "Reconstruct --auto");
  const card = el("div", { class: "card auto-form", id: id("form") },
    el("h3", {}, "Reconstruct --auto: calibrate, start from a direct method (SSB), reconstruct"),
    el("div", {}, el("label", {}, "data file ", file)),
    el("div", {}, field("key", "patterns key", prefill.key, 10, "the dataset or array holding the patterns (--key)"),
      field("energy", "energy (eV)", prefill.energy, 9, "beam energy in eV, e.g. 300e3 (--energy)"),
      field("semiangle", "semi-angle (mrad)", prefill.semiangle, 6, "probe convergence semi-angle (--semiangle)"),
      field("step", "scan step (Å)", prefill.step, 8, "one value, or dy dx (--scan-step)")),
    el("div", {}, field("shape", "scan shape (rows cols)", prefill.shape, 8, "only for flat (N, H, W) data (--scan-shape)"),
      field("c10", "C10 (Å, if known)", prefill.c10, 6, "the defocus as set, C10 = −defocus (--c10); fixes the sign"),
      field("epochs", "epochs", prefill.epochs ?? "", 4, "override the number of epochs (--epochs; default: --auto's)"),
      el("label", {}, "device ", device)),
    el("p", {}, run, " ", el("span", { class: "muted" }, "runs: "), preview));
  card.addEventListener("input", update);
  card.addEventListener("change", update);
  setTimeout(update);
  return card;
}
function openAutoDialog(path) {
  const dialog = document.getElementById("auto-dialog");
  dialog.onclick = null;
  dialog.replaceChildren(autoForm(path, {}, "auto"), el("p", {}, el("button", { type: "button", onclick: () => dialog.close() }, "Close")));
  dialog.showModal();
}

// ---- files -----------------------------------------------------------------------------------------------------
async function filesPage() {
  const path = params().get("path") || "";
  const data = await api(`/api/files?path=${enc(path)}`);
  const rows = data.entries.map((e) => {
    const open = e.kind === "dir" || e.kind === "run" ? `#/files?path=${enc(e.path)}`
      : e.kind === "data" ? `#/dataset?path=${enc(e.path)}`
      : e.kind === "yaml" ? `#/params?path=${enc(e.path)}`
      : null;
    const name = e.name + (e.kind === "dir" || e.kind === "run" ? "/" : "");
    const link = open ? el("a", { href: open, "data-path": e.path }, name)
      : e.kind === "image" || e.kind === "text" ? el("a", { href: `/api/file?path=${enc(e.path)}`, "data-path": e.path, target: "_blank", rel: "noopener" }, name)
      : el("span", { "data-path": e.path }, name);  // other kinds: download only
    const actions = [];
    if (e.kind !== "dir" && e.kind !== "run") actions.push(el("a", { href: `/api/file?download=1&path=${enc(e.path)}` }, "download"));
    if (e.kind === "data") actions.push(" ", el("button", { class: "auto-open", "data-path": e.path, onclick: () => openAutoDialog(e.path) }, "Reconstruct --auto…"),
      " ", el("a", { href: `#/calibrate?path=${enc(e.path)}` }, "calibrate"));
    if (e.kind === "yaml") actions.push(" ", el("a", { href: `#/jobs?config=${enc(e.path)}` }, "queue a job"));
    const when = new Date(e.mtime * 1000);
    return el("tr", {}, el("td", {}, link), el("td", {}, e.kind), el("td", { class: "num" }, e.kind === "dir" ? "" : `${(e.size / 1024).toFixed(1)} KiB`),
      el("td", { class: "muted" }, `${when.toISOString().slice(0, 10)} ${when.toTimeString().slice(0, 5)}`), el("td", {}, actions));
  });
  const fileInput = el("input", { type: "file", id: "upload-file" });
  const upload = el("button", { id: "upload-button", onclick: async () => {
    const f = fileInput.files[0];
    if (!f) return;
    await api(`/api/upload?path=${enc((path ? path + "/" : "") + f.name)}`, { method: "PUT", body: f });
    filesPage();
  } }, "Upload");
  view.replaceChildren(
    el("h2", {}, "Files: ", el("code", {}, "/" + path)),
    data.parent !== null ? el("p", {}, el("a", { href: `#/files?path=${enc(data.parent)}` }, "⬑ up")) : "",
    el("table", { id: "files-table" }, el("tr", {}, el("th", {}, "name"), el("th", {}, "kind"), el("th", {}, "size"), el("th", {}, "modified"), el("th", {}, "")), rows),
    el("p", {}, "Upload into this folder: ", fileInput, " ", upload));
}

// ---- dataset: virtual detectors dragged on the mean pattern ------------------------------------------------------
const DETECTORS = {
  bf: { label: "BF disc", colour: "#76ff03", images: ["bf"] },
  adf: { label: "ADF annulus", colour: "#ffab40", images: ["adf"] },
  com: { label: "CoM disc", colour: "#18ffff", images: ["com_y", "com_x"] },
};
function detectorEditor(data, onChange) {
  // An SVG over the mean pattern (detector pixels); the active detector's shapes move with a drag of their body and
  // change radius with a drag of their handle (●). onChange(name, detector) is called on release.
  const [H, W] = data.pattern_shape;
  const cy = data.centre[0], cx = data.centre[1];
  const det = {
    bf: { cy, cx, r: data.bf },
    adf: { cy, cx, inner: data.adf_inner, outer: data.adf_outer },
    com: { cy, cx, r: data.radius || data.bf },
  };
  let active = "bf";
  const svg = svgEl("svg", { class: "overlay detectors", id: "detector-overlay", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  const hr = Math.max(W, H) / 40, sw = Math.max(W, H) / 200;
  const groups = {};
  const mirrors = [];  // read-only copies (the single pattern's overlay)
  function edgeOf(d) { return Math.max(d.cx, W - 1 - d.cx, d.cy, H - 1 - d.cy) * Math.SQRT2; }
  function shapes(name, d, interactive) {
    const c = DETECTORS[name].colour, g = svgEl("g", { class: `det det-${name}${interactive ? "" : " inactive"}`, "data-detector": name });
    const X = d.cx + 0.5, Y = d.cy + 0.5;
    const circ = (r) => `M ${X - r} ${Y} a ${r} ${r} 0 1 0 ${2 * r} 0 a ${r} ${r} 0 1 0 ${-2 * r} 0 Z`;
    if (name === "adf") {
      const outer = d.outer === null || d.outer === undefined ? null : d.outer;
      const ring = outer === null ? `M 0 0 H ${W} V ${H} H 0 Z ` + circ(d.inner) : circ(outer) + " " + circ(d.inner);
      g.append(svgEl("path", { d: ring, "fill-rule": "evenodd", fill: c, "fill-opacity": interactive ? 0.14 : 0, stroke: c, "stroke-width": sw, class: "det-body", "data-part": "body" }));
      g.append(svgEl("circle", { cx: X + d.inner, cy: Y, r: hr, fill: c, class: "det-handle", "data-part": "inner" }));
      const ox = outer === null ? Math.min(W - hr, X + edgeOf(d)) : X + outer;
      g.append(svgEl("circle", { cx: ox, cy: Y, r: hr, fill: "none", stroke: c, "stroke-width": sw * 1.5, class: "det-handle", "data-part": "outer" }));
    } else {
      g.append(svgEl("circle", { cx: X, cy: Y, r: d.r, fill: c, "fill-opacity": interactive ? 0.14 : 0, stroke: c, "stroke-width": sw, "stroke-dasharray": name === "com" ? `${sw * 4} ${sw * 3}` : null, class: "det-body", "data-part": "body" }));
      g.append(svgEl("circle", { cx: X + d.r, cy: Y, r: hr, fill: c, class: "det-handle", "data-part": "r" }));
    }
    g.append(svgEl("circle", { cx: X, cy: Y, r: hr * 0.6, fill: "none", stroke: c, "stroke-width": sw, class: "det-centre", "data-part": "body" }));
    return g;
  }
  function draw() {
    for (const target of [svg, ...mirrors]) {
      for (const g of target.querySelectorAll("g.det")) g.remove();
      for (const name of ["adf", "com", "bf"].filter((n) => n !== active).concat([active])) {
        const g = shapes(name, det[name], target === svg && name === active);
        target.append(g);
        if (target === svg) groups[name] = g;
      }
    }
    readout.textContent = describe(active);
  }
  const mrad = data.pixels.detector.unit === "mrad" ? data.pixels.detector.size : null;
  const r2 = (v) => (v === null || v === undefined ? "edge" : `${v.toFixed(1)} px${mrad ? ` (${(v * mrad).toFixed(1)} mrad)` : ""}`);
  function describe(name) {
    const d = det[name];
    const where = `centre (y, x) = (${d.cy.toFixed(1)}, ${d.cx.toFixed(1)}) px`;
    return name === "adf" ? `${DETECTORS[name].label}: ${where}, inner ${r2(d.inner)}, outer ${r2(d.outer)}` : `${DETECTORS[name].label}: ${where}, radius ${r2(d.r)}`;
  }
  const readout = el("div", { class: "det-readout", id: "detector-readout" });
  const toPattern = (e) => {
    const p = svg.createSVGPoint(); p.x = e.clientX; p.y = e.clientY;
    const q = p.matrixTransform(svg.getScreenCTM().inverse());
    return { y: q.y - 0.5, x: q.x - 0.5 };
  };
  let drag = null;
  svg.addEventListener("pointerdown", (e) => {
    const part = e.target.dataset && e.target.dataset.part;
    if (!part || !e.target.closest("g.det:not(.inactive)")) return;
    e.preventDefault();
    const p = toPattern(e), d = det[active];
    drag = { part, start: p, cy: d.cy, cx: d.cx };
    svg.setPointerCapture(e.pointerId);
  });
  svg.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const p = toPattern(e), d = det[active];
    const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
    if (drag.part === "body") {
      d.cy = clamp(drag.cy + p.y - drag.start.y, 0, H - 1);
      d.cx = clamp(drag.cx + p.x - drag.start.x, 0, W - 1);
    } else {
      const r = Math.max(0.5, Math.hypot(p.y - d.cy, p.x - d.cx));
      if (drag.part === "r") d.r = r;
      else if (drag.part === "inner") d.inner = d.outer ? Math.min(r, d.outer - 0.5) : r;
      else if (drag.part === "outer") d.outer = Math.max(r, d.inner + 0.5);
    }
    draw();
  });
  const release = (e) => {
    if (!drag) return;
    drag = null;
    if (svg.hasPointerCapture(e.pointerId)) svg.releasePointerCapture(e.pointerId);
    onChange(active, det[active]);
  };
  svg.addEventListener("pointerup", release);
  svg.addEventListener("pointercancel", release);
  const buttons = Object.entries(DETECTORS).map(([name, d]) => el("button", { type: "button", class: `det-choice${name === active ? " chosen" : ""}`, id: `det-${name}`, "data-detector": name, onclick: () => choose(name) }, d.label));
  function choose(name) {
    active = name;
    for (const b of buttons) b.classList.toggle("chosen", b.dataset.detector === name);
    draw();
  }
  const mirror = () => { const m = svgEl("svg", { class: "overlay detectors mirror", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" }); mirrors.push(m); draw(); return m; };
  draw();
  return { svg, buttons, readout, choose, mirror, det };
}
async function datasetPage() {
  const q = params();
  const path = q.get("path") || "";
  const input = (name, label, size = 8, hint = "") => el("label", { title: hint }, label + " ", el("input", { type: "text", id: `ds-${name}`, value: q.get(name) || "", size }));
  const form = el("div", { class: "card" },
    el("div", {}, el("label", {}, "file ", fileField("ds-path", path, ["data"], 40)),
      input("key", "patterns key"), input("scan_shape", "scan shape (rows,cols)")),
    el("div", {}, input("step", "scan step Å", 5, "for the scale bars of the scan images where the file does not say"),
      input("semiangle", "semi-angle mrad", 5, "for the detector's mrad scale (with the fitted disk) where the file does not say"),
      input("bf", "BF radius px", 5), input("adf_inner", "ADF inner px", 5), input("adf_outer", "ADF outer px", 5),
      el("button", { id: "ds-apply", onclick: () => {
        const p = new URLSearchParams();
        for (const n of ["path", "key", "scan_shape", "step", "semiangle", "bf", "adf_inner", "adf_outer"]) { const v = document.getElementById(`ds-${n}`).value.trim(); if (v) p.set(n, v); }
        go(`#/dataset?${p}`);
      } }, "Show")));
  view.replaceChildren(el("h2", {}, "Dataset"), form);
  if (!path) { view.append(el("p", {}, "Choose a 4D-STEM file (or open one from Files).")); return; }
  const qs = new URLSearchParams(q);
  const data = await api(`/api/dataset?${qs}`);
  const [sy, sx] = data.scan_shape, [H, W] = data.pattern_shape;
  const reader = new URLSearchParams();  // what every later request repeats: the reader options and the scales' hints
  for (const n of ["path", "key", "scan_shape", "sample", "step", "semiangle"]) if (q.get(n)) reader.set(n, q.get(n));

  // the scan images (click: that position's pattern)
  const markers = [];
  const patInfo = el("div", { id: "pattern-info" }, "click a scan position on any scan image");
  const logBox = el("input", { type: "checkbox", id: "pattern-log", checked: true });
  const patFig = figure("pattern-img", "pattern", 300, { imgClass: "pixelated" });
  let shown = 0;
  async function showPattern(iy, ix) {
    const p = new URLSearchParams(reader); p.set("iy", iy); p.set("ix", ix); p.set("log", logBox.checked ? "1" : "0");
    const mine = ++shown;
    const pat = await api(`/api/pattern?${p}`);
    if (mine !== shown) return;  // a later click's pattern is on its way
    patFig.update(pat.image, pat.scale);
    patInfo.textContent = `position (${pat.iy}, ${pat.ix}): ${fmt(pat.total)} ${pat.scale.unit} in all, max ${fmt(pat.max)} (${pat.log ? "log" : "linear"} scale)`;
    patInfo.dataset.position = `${pat.iy},${pat.ix}`;
    for (const m of markers) { m.style.left = `${(ix + 0.5) / sx * 100}%`; m.style.top = `${(iy + 0.5) / sy * 100}%`; m.hidden = false; }
  }
  logBox.onchange = () => { const pos = patInfo.dataset.position; if (pos) showPattern(...pos.split(",").map(Number)); };
  const figs = {};
  const scanFig = (key, title) => {
    const f = figure(`${key.replace("_", "-")}-img`, title, 240, { imgClass: "pixelated scan" });
    f.update(data.images[key], data.scales[key]);
    f.img.onclick = (e) => { const r = f.img.getBoundingClientRect(); showPattern(Math.min(sy - 1, Math.floor((e.clientY - r.top) / r.height * sy)), Math.min(sx - 1, Math.floor((e.clientX - r.left) / r.width * sx))); };
    const marker = el("div", { class: "marker", hidden: true });
    markers.push(marker);
    f.box.append(marker);
    figs[key] = f;
    return el("div", { class: "card" }, f);
  };

  // the detectors over the mean pattern; a release computes that detector's image again
  let pending = 0;
  const editor = detectorEditor(data, async (name, d) => {
    const p = new URLSearchParams(reader);
    p.set("detector", name); p.set("cy", d.cy.toFixed(2)); p.set("cx", d.cx.toFixed(2));
    if (name === "adf") { p.set("inner", d.inner.toFixed(2)); if (d.outer !== null && d.outer !== undefined) p.set("outer", d.outer.toFixed(2)); }
    else p.set("r", d.r.toFixed(2));
    const mine = ++pending;
    document.body.dataset.virtual = "busy";
    let v;
    try { v = await api(`/api/virtual?${p}`); } finally { if (mine === pending) document.body.dataset.virtual = ""; }
    if (mine !== pending) return;  // a later release is on its way
    for (const key of DETECTORS[name].images) figs[key].update(v.images[key], v.scales[key]);
    if (name === "bf") document.getElementById("ds-bf").value = d.r.toFixed(1);
    if (name === "adf") { document.getElementById("ds-adf_inner").value = d.inner.toFixed(1); document.getElementById("ds-adf_outer").value = d.outer ? d.outer.toFixed(1) : ""; }
    document.body.dataset.virtual = `${name}:${mine}`;
  });
  const meanFig = figure("mean-img", "mean pattern (log) — the fitted disk dashed", 340, { imgClass: "pixelated" });
  meanFig.update(data.images.mean, data.scales.mean);
  const disk = (target) => { if (data.radius) target.append(svgEl("circle", { cx: data.centre[1] + 0.5, cy: data.centre[0] + 0.5, r: data.radius, fill: "none", stroke: "#ff4081", "stroke-width": Math.max(W, H) / 250, "stroke-dasharray": `${Math.max(W, H) / 80} ${Math.max(W, H) / 80}`, class: "fitted-disk" })); };
  disk(editor.svg);
  meanFig.box.append(editor.svg);
  const patOverlay = editor.mirror();
  patOverlay.id = "disk-overlay";
  disk(patOverlay);
  patFig.box.append(patOverlay);
  patFig.resize(H, W);  // sized before the first pattern comes

  const acq = data.acquisition || {};
  const step = q.get("step") || (acq.scan_step ? (acq.scan_step[0] === acq.scan_step[1] ? String(acq.scan_step[0]) : acq.scan_step.join(" ")) : "");
  view.append(
    el("p", { id: "ds-summary" }, data.summary), el("p", { class: "muted" }, data.describe),
    el("div", { class: "row" }, scanFig("bf", "virtual bright field"), scanFig("adf", "virtual annular dark field"),
      scanFig("com_y", "centre of mass y"), scanFig("com_x", "centre of mass x")),
    el("div", { class: "row" },
      el("div", { class: "card" }, el("h3", {}, "virtual detectors"),
        el("p", { class: "det-buttons" }, "edit: ", editor.buttons),
        meanFig, editor.readout,
        el("p", { class: "muted hint" }, "Drag a detector to move it, its ● handle to change its radius; its image is computed again on release.")),
      el("div", { class: "card" }, el("h3", {}, "pattern ", el("label", {}, logBox, "log")), patFig, patInfo),
      autoForm(path, { key: q.get("key") || "", energy: acq.energy ?? "", semiangle: q.get("semiangle") || (acq.semiangle ?? ""), step, shape: q.get("scan_shape") || "" }, "ds-auto")));
  showPattern(Math.floor(sy / 2), Math.floor(sx / 2)).catch(() => {});  // a first pattern; errors are shown
}

// ---- parameter form (calibrate's params.yaml or any reconstruction parameter file) -------------------------------
async function paramsForm(path, container) {
  const data = await api(`/api/params?path=${enc(path)}`);
  const layout = data.layout || { first: [], sections: [{ name: "", title: "parameters", keys: Object.keys(data.fields) }], help: {} };
  const inputs = {};
  const row = (k) => {
    inputs[k] = el("input", { type: "text", name: k, id: `field-${k}`, value: data.fields[k], size: 30, title: layout.help[k] || "" });
    const help = layout.help[k] ? el("span", { class: "field-help" }, layout.help[k]) : "";
    return [el("label", { for: `field-${k}`, title: layout.help[k] || "" }, el("code", {}, k)), el("div", {}, inputs[k], help)];
  };
  for (const k of Object.keys(data.fields)) inputs[k] = null;
  const first = layout.first.filter((k) => k in data.fields);
  const seen = new Set(first);
  const top = el("div", { class: "form-grid", id: "params-first" }, first.flatMap(row));
  const sections = layout.sections.map((s) => {
    const keys = s.keys.filter((k) => !seen.has(k));
    if (!keys.length) return "";
    const grid = el("div", { class: "form-grid" }, keys.flatMap(row));
    return el("details", { class: "params-section", "data-section": s.name }, el("summary", {}, `${s.name} — ${s.title} (${keys.length})`), grid);
  });
  const form = el("div", { id: "params-form" }, el("h4", {}, "the fields changed most often"), top, el("h4", {}, "everything else, by section"), sections);
  const status = el("div", { id: "params-status" });
  const save = el("button", { id: "params-save", class: "primary", onclick: async () => {
    const values = {};
    for (const [k, i] of Object.entries(inputs)) if (i && i.value !== data.fields[k]) values[k] = i.value;
    if (!Object.keys(values).length) { status.textContent = "nothing changed"; return; }
    for (const i of Object.values(inputs)) if (i) i.classList.remove("invalid");
    try {  // the version read: a save over someone else's later save is refused (409), never lost silently
      const saved = await postJSON("/api/params", { path, values, version: data.version });
      status.textContent = "saved (valid)"; status.className = "ok"; showError(""); Object.assign(data.fields, values); data.version = saved.version;
    }
    catch (e) {
      status.textContent = e.message; status.className = "field-error";
      for (const k of Object.keys(values)) if (e.message.includes(k) && inputs[k]) { inputs[k].classList.add("invalid"); const d = inputs[k].closest("details"); if (d) d.open = true; }
    }
  } }, "Validate and save");
  const run = el("button", { id: "params-reconstruct", onclick: async () => {
    const job = await postJSON("/api/jobs", { command: "reconstruct", config: path, device: info.devices[info.devices.length > 1 ? 1 : 0] });
    go(`#/run/${job.id}`);
  } }, "Reconstruct with these");
  container.append(el("div", { class: "card" }, el("h3", {}, "parameters: ", el("code", {}, path)), form, el("p", {}, save, " ", run), status));
}
async function paramsPage() {
  const path = params().get("path");
  view.replaceChildren(el("h2", {}, "Parameters"), el("p", {}, "Edited values are checked by the same schema as the YAML file before they are written. Hover over a field for its meaning."));
  try { await paramsForm(path, view); }
  catch (e) {  // not a reconstruction parameter file (a training or simulation config): its text, and the job form
    if (e instanceof Superseded) throw e;
    showError("");
    const text = await (await fetch(`/api/file?path=${enc(path)}`)).text();
    view.replaceChildren(el("h2", {}, "File: ", el("code", {}, path)), el("pre", { class: "log" }, text),
      el("p", {}, el("a", { href: `#/jobs?config=${enc(path)}&command=${/sim/.test(path) ? "simulate" : "train"}` }, "queue a job with it")));
  }
}

// ---- calibrate -------------------------------------------------------------------------------------------------
function calibrationTable(c) {
  // Every value of calibration.json in a table: the quantities a microscopist checks first, by topic, with units and
  // where each came from; then whatever else the file holds (nothing is left out).
  const used = new Set();
  const get = (key) => { used.add(key); return key.split(".").reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), c); };
  const ORIGIN = { flag: "given on the command line", file: "from the data file", calibration: "fitted by the calibration" };
  const src = (field) => (c.sources && c.sources[field] ? ORIGIN[c.sources[field]] || `from the ${c.sources[field]}` : "");
  const rows = [];
  const section = (title) => rows.push(el("tr", { class: "section" }, el("th", { colspan: 4 }, title)));
  const add = (label, value, detail, key) => rows.push(el("tr", {}, el("td", {}, label), el("td", { class: "value" }, value), el("td", { class: "muted" }, detail || ""), el("td", {}, key ? el("code", { class: "key" }, key) : "")));
  const n = (v, digits = 4) => (typeof v === "number" ? String(+v.toPrecision(digits)) : v === null || v === undefined ? "–" : String(v));
  const pair = (v, digits = 4) => (Array.isArray(v) ? `(${v.map((x) => n(x, digits)).join(", ")})` : n(v, digits));
  const dk = get("angular_sampling_mrad");
  section("Optics");
  add("beam energy", `${n(get("energy_eV") / 1e3)} keV`, src("optics.energy"), "energy_eV");
  add("probe semi-angle α", `${n(get("semiangle_mrad"))} mrad`, src("optics.semiangle"), "semiangle_mrad");
  add("angular sampling", `${n(dk)} mrad/px`, src("optics.angular_sampling") || "fitted disk radius", "angular_sampling_mrad");
  const ab = get("aberrations") || {};
  const defSrc = get("defocus_source");
  if (!("C10" in ab)) add("C10 (= −defocus)", "not measured", defSrc ? `source: ${defSrc}` : "no defocus fitted (focused data or too little contrast for the parallax)", "aberrations");
  for (const [k, v] of Object.entries(ab)) {
    add(k === "C10" ? "C10 (= −defocus)" : k, `${n(v)} ${k === "C10" || k === "C12" ? "Å" : ""}`, k === "C10" ? `defocus ${n(-v)} Å${v > 0 ? " (over-focus)" : v < 0 ? " (under-focus)" : ""}; ${defSrc ? `from the ${defSrc}` : ""}` : "", `aberrations.${k}`);
  }
  section("Scan");
  add("scan shape", pair(get("scan_shape")), "rows, columns", "scan_shape");
  add("scan step", `${(get("scan_step") || []).map((v) => n(v)).join(" × ")} Å`, `${src("scan.step")} (rows × columns)`, "scan_step");
  const rot = get("rotation_deg"), com = get("centre_of_mass") || {};
  add("rotation", rot === null ? "undetermined" : `${n(rot)}°`, `from the ${get("rotation_source")}${com.halves_spread_deg !== undefined ? `; halves of the scan agree to ± ${n(com.halves_spread_deg, 2)}°` : ""}`, "rotation_deg");
  add("transpose", get("transpose") ? "yes" : "no", "detector axes swapped relative to the scan", "transpose");
  used.add("rotation_source");
  const scan = get("scan") || {};
  add("scan origin", `${pair(scan.origin)} Å`, src("scan.origin") || "puts the rotated scan's corner at 0 Å", "scan.origin");
  section("Detector, disk and descan");
  const disk = get("disk") || {}, detector = get("detector") || {};
  add("disk centre (y, x)", `${pair(detector.centre, 5)} px`, "at the middle of the scan", "detector.centre");
  add("disk radius", `${n(disk.radius_px)} px`, dk ? `= ${n(disk.radius_px * dk)} mrad` : "", "disk.radius_px");
  const plane = disk.plane_px || [];
  const [sy, sx] = c.scan_shape || [1, 1];
  if (plane.length === 3) {
    add("descan: disk centre at scan (0, 0)", `${pair(plane[0], 5)} px`, "(y, x) on the detector", "disk.plane_px[0]");
    add("descan per scan row", `${pair(plane[1], 3)} px`, `over the scan's ${sy} rows: ${pair(plane[1].map((v) => v * (sy - 1)), 3)} px`, "disk.plane_px[1]");
    add("descan per scan column", `${pair(plane[2], 3)} px`, `over the scan's ${sx} columns: ${pair(plane[2].map((v) => v * (sx - 1)), 3)} px`, "disk.plane_px[2]");
  }
  add("descan residual", `rms ${n(disk.residual_rms_px, 3)} px, max ${n(disk.residual_max_px, 3)} px`, "disk centres about the fitted plane", "disk.residual_rms_px");
  used.add("disk.residual_max_px");
  add("detector", `${pair(detector.shape)} px${detector.binning > 1 ? `, binned ${detector.binning}` : ""}`, [detector.flip_y && "flipped rows", detector.flip_x && "flipped columns", detector.crop && `cropped ${pair(detector.crop)}`].filter(Boolean).join(", "), "detector.shape");
  section("Bad pixels");
  const bp = get("bad_pixels") || { hot: [], dead: [] };
  for (const kind of ["hot", "dead"]) {
    const list = bp[kind] || [];
    const shown = list.length ? (list.length > 12 ? el("details", {}, el("summary", {}, `${list.length} pixels`), list.map((p) => `(${p.join(", ")})`).join(" ")) : list.map((p) => `(${p.join(", ")})`).join(" ")) : "none";
    add(`${kind} pixels`, String(list.length), shown, `bad_pixels.${kind}`);
  }
  add("bad-pixel fill", String(detector.bad_pixel_fill || "–"), "how the reconstruction fills them", "detector.bad_pixel_fill");
  section("Centre of mass (rotation fit)");
  for (const [k, v] of Object.entries(com)) add(k.replaceAll("_", " "), typeof v === "object" && v !== null ? Object.entries(v).map(([a, b]) => `${a}: ${n(b, 3)}`).join(", ") : n(v), "", `centre_of_mass.${k}`);
  const par = get("parallax");
  section("Parallax (tcBF) fit");
  if (par) for (const [k, v] of Object.entries(par)) add(k.replaceAll("_", " "), n(v), "", `parallax.${k}`);
  else add("parallax", "not used", "see the notes", "parallax");
  const und = get("undetermined") || {};
  if (Object.keys(und).length) { section("Not determined by the data"); for (const [k, v] of Object.entries(und)) add(k, "undetermined", v, `undetermined.${k}`); }
  const notes = get("notes") || [];
  section(`Notes (${notes.length})`);
  for (const note of notes) rows.push(el("tr", {}, el("td", { colspan: 4, class: "note" }, note)));
  if (!notes.length) add("notes", "none", "", "notes");
  get("sources"); get("source");
  // anything else the file holds
  const flat = [];
  const walk = (o, prefix) => {
    if (o !== null && typeof o === "object" && !Array.isArray(o) && Object.keys(o).length) for (const [k, v] of Object.entries(o)) walk(v, prefix ? `${prefix}.${k}` : k);
    else flat.push([prefix, o]);
  };
  walk(c, "");
  const shownKey = (k) => [...used].some((u) => k === u || k.startsWith(u + ".") || u.startsWith(k + "."));
  const rest = flat.filter(([k]) => !shownKey(k));
  if (rest.length) { section("Other values"); for (const [k, v] of rest) add(k, Array.isArray(v) ? pair(v) : n(v), "", k); }
  section("Provenance");
  add("data file", String(c.source || ""), "", "source");
  add("parameter file's values", "", el("span", {}, Object.entries(c.sources || {}).map(([k, v]) => `${k}: ${ORIGIN[v] || v}`).join("; ")), "sources");
  return el("table", { id: "calib-numbers", class: "calib-table" }, rows);
}
async function calibratePage() {
  const q = params();
  const jobId = q.get("job");
  if (!jobId) {
    const f = (id, label, value = "", size = 10) => el("label", {}, label + " ", el("input", { type: "text", id, value, size }));
    const start = el("button", { id: "calib-run", class: "primary", onclick: async () => {
      const v = (id) => document.getElementById(id).value.trim();
      const args = [];
      if (v("calib-key")) args.push("--key", v("calib-key"));
      if (v("calib-energy")) args.push("--energy", v("calib-energy"));
      if (v("calib-semiangle")) args.push("--semiangle", v("calib-semiangle"));
      if (v("calib-step")) args.push("--scan-step", ...v("calib-step").split(/[ ,]+/));
      if (v("calib-shape")) args.push("--scan-shape", ...v("calib-shape").split(/[ ,x]+/));
      if (v("calib-c10")) args.push("--c10", v("calib-c10"));
      const job = await postJSON("/api/jobs", { command: "calibrate", config: v("calib-file"), args });
      go(`#/calibrate?job=${job.id}`);
    } }, "Run calibrate");
    view.replaceChildren(el("h2", {}, "Calibrate"), el("div", { class: "card" },
      el("div", {}, el("label", {}, "data file ", fileField("calib-file", q.get("path") || "", ["data"], 40)), f("calib-key", "patterns key"), f("calib-shape", "scan shape")),
      el("div", {}, f("calib-energy", "energy eV"), f("calib-semiangle", "semi-angle mrad"), f("calib-step", "scan step Å"), f("calib-c10", "C10 Å (if known)", "", 6), " ", start)),
      el("p", {}, "Runs ", el("code", {}, "phasestem calibrate"), " as a job; its fits, numbers and the parameter file appear here when it ends."));
    return;
  }
  view.replaceChildren(el("h2", {}, `Calibrate: job ${jobId}`), el("p", { id: "calib-state" }, "…"));
  push(`/api/jobs/${jobId}/events`, async (d) => {
    document.getElementById("calib-state").textContent = `${d.command_line} — ${d.state}`;
    if (!d.final) return;
    const job = await api(`/api/jobs/${jobId}`);
    const thumbs = figureThumbs(job.files.filter((p) => /calibration.*\.png$/.test(p)));
    view.append(el("div", { class: "row", id: "calib-figures" }, thumbs),
      job.calibration ? el("div", { class: "card" }, el("h3", {}, "calibrated values (", el("code", {}, "calibration.json"), ")"), calibrationTable(job.calibration)) : el("p", { id: "calib-numbers" }, "no calibration.json"),
      d.state !== "done" ? el("pre", { class: "log" }, d.log.join("\n")) : "");
    const p = job.files.find((f) => f.endsWith("/params.yaml"));
    if (p) await paramsForm(p, view);
  });
}

// ---- jobs ------------------------------------------------------------------------------------------------------
const CAN_CANCEL = ["queued", "running"], CAN_RESUME = ["failed", "cancelled"];
const STREAMED = ["live"];  // jobs that read a detector's stream: never resumed (the stream does not come again)
const RECONSTRUCTIONS = ["reconstruct", "tune", "live"];  // jobs whose results.h5 Compare reads
function stateCell(j) {  // the state, with how the job ended (its outcome: "done · loss rising") in its colour
  const o = j.outcome;
  return el("td", { class: `state-${j.state}${o ? ` outcome-${o.kind}` : ""}`, title: o && o.detail ? o.detail : null }, o ? o.label : j.state);
}
function jobRow(j, selected, redraw) {
  const act = (label, path, id) => el("button", { id, onclick: async (e) => {
    e.target.disabled = true;
    try { redraw(await postJSON(path, {})); } finally { e.target.disabled = false; }  // the new state at once
  } }, label);
  const box = el("input", { type: "checkbox", class: "compare-box", value: j.id, checked: selected.has(j.id), disabled: !(j.state === "done" && RECONSTRUCTIONS.includes(j.command)) });
  box.onchange = () => (box.checked ? selected.add(j.id) : selected.delete(j.id));
  return el("tr", { "data-job": j.id, "data-state": j.state },
    el("td", {}, box), el("td", {}, j.id), el("td", {}, j.name || j.command), stateCell(j),
    el("td", {}, el("code", {}, j.command_line)),
    el("td", { class: "actions" }, j.command === "calibrate" ? el("a", { href: `#/calibrate?job=${j.id}` }, "open") : el("a", { href: `#/run/${j.id}` }, CAN_CANCEL.includes(j.state) ? "watch" : "open"), " ",
      CAN_CANCEL.includes(j.state) ? act("Cancel", `/api/jobs/${j.id}/cancel`, `cancel-${j.id}`) : "",
      CAN_RESUME.includes(j.state) && !STREAMED.includes(j.command) ? act("Resume", `/api/jobs/${j.id}/resume`, `resume-${j.id}`) : ""));
}
function newJobForm(prefill = {}) {
  const sel = (id, options, value) => el("select", { id }, options.map((o) => el("option", { value: o, selected: o === value }, o)));
  const command = sel("job-command", ["reconstruct", "tune", "train", "simulate", "calibrate", "plan", "live", "restore"], prefill.command || "reconstruct");
  const card = el("div", { class: "card", id: "new-job" }, el("h3", {}, "New job"),
    el("div", {}, el("label", {}, "command ", command),
      el("label", { title: "calibrate: the data file; restore: the run's results.h5, with --model NAME among the arguments" }, "parameter file ", fileField("job-config", prefill.config, () => (["calibrate", "restore"].includes(command.value) ? ["data"] : ["yaml"]), 40)),
      el("label", {}, "network (train) ", el("input", { type: "text", id: "job-network", value: prefill.network || "", size: 10 }))),
    el("div", {}, el("label", {}, "device ", sel("job-device", info.devices, prefill.device || info.devices[0])),
      el("label", {}, "processes ", el("input", { type: "number", id: "job-processes", value: prefill.processes || 1, min: 1, max: 64, class: "narrow" })),
      el("label", {}, "name ", el("input", { type: "text", id: "job-name", value: prefill.name || "", size: 16 }))),
    el("label", {}, "changed parameters (key=value, one a line)", el("br"), el("textarea", { id: "job-set" }, (prefill.set || []).join("\n"))),
    el("label", {}, "extra arguments (one a line)", el("br"), el("textarea", { id: "job-args" }, (prefill.args || []).join("\n"))), el("br"),
    el("button", { id: "job-submit", class: "primary", onclick: async () => {
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
  view.replaceChildren(el("h2", {}, "Jobs"), newJobForm(prefill), el("h3", {}, "Queue"), table, el("p", {}, compareBtn, " ", el("span", { class: "muted" }, "(finished reconstructions)")));
  let jobs = [];
  const draw = () => table.replaceChildren(el("tr", {}, ["", "id", "name", "state", "command (type it in the workspace root)", ""].map((h) => el("th", {}, h))),
    ...jobs.slice().reverse().map((j) => jobRow(j, selected, redrawOne)));
  const redrawOne = (j) => { jobs = jobs.map((o) => (o.id === j.id ? j : o)); draw(); };
  push("/api/events", (d) => { jobs = d.jobs; draw(); });
}

// ---- a plan's figures (phasestem plan --out RUN: RUN/expected/expected.png, RUN/sweep.png) ----------------------
async function showPlanFigures(runDir, container) {
  const listed = async (folder) => {
    try { return (await api(`/api/files?path=${enc(folder)}`)).entries.map((e) => e.path); }
    catch (e) { if (!(e instanceof Superseded)) showError(""); return []; }  // no such folder: nothing to show
  };
  const present = [...await listed(runDir), ...await listed(`${runDir}/expected`)];
  const figures = [[`${runDir}/expected/expected.png`, "expected result"], [`${runDir}/sweep.png`, "sweep"]];
  container.replaceChildren(...figures.filter(([p]) => present.includes(p)).map(([p, title]) => {
    const src = `/api/file?path=${enc(p)}`;
    const img = el("img", { class: "plan-figure", src, alt: title, title: "click to enlarge" });
    img.onclick = () => lightbox(src, title);
    return el("div", { class: "card" }, el("h3", {}, title), img);
  }));
}

// ---- a finished reconstruction's figures (reconstruction.png, compare.png, uncertainty.png, … of its run folder) --------
async function showRunFigures(jobId, container) {
  const job = await api(`/api/jobs/${jobId}`);
  container.replaceChildren(...figureThumbs(job.files.filter((p) => p.endsWith(".png"))));
  return job;
}

// ---- restore: a finished run's phase through a trained restorer (phasestem restore RESULTS --model M [--verdict …]) ----
function restoreCard(job) {  // queue a restore of this run's results.h5, with or without the verdict
  const id = (n) => `restore-${n}`, v = (n) => document.getElementById(id(n)).value.trim();
  const field = (n, label, value, size, hint) => el("label", { title: hint }, label + " ", el("input", { type: "text", id: id(n), value, size }));
  const model = el("select", { id: id("model") }, (info.restorers || []).map((n) => el("option", { value: n }, n)));
  const verdict = el("input", { type: "checkbox", id: id("verdict") });
  const queue = el("button", { id: id("queue"), class: "primary", onclick: async () => {
    const args = ["--model", v("path") || model.value];
    if (verdict.checked) args.push("--verdict", "--fdr", v("fdr") || "0.05", "--calibration-samples", v("samples") || "4", "--calibration-cell", v("cell") || "40");
    const j = await postJSON("/api/jobs", { command: "restore", config: `${job.run_dir}/results.h5`, args, device: job.device, name: `restore of ${job.id}` });
    go(`#/run/${j.id}`);
  } }, "Restore");
  return el("div", { class: "card auto-form", id: id("card") }, el("h3", {}, "Restore this run's phase with a trained restorer"),
    el("div", {}, el("label", {}, "shipped restorer ", model), field("path", "or a model", "", 28, "a weights file or a training run folder under the workspace root, used instead of the shipped restorer")),
    el("div", {}, el("label", { title: "judge every restored column against specimens simulated at this run's geometry and dose, reconstructed and restored the same way (minutes of CPU; the calibration stays in the restore job's run folder)" }, verdict, " verdict: which columns do the data support?"),
      field("fdr", "FDR", "0.05", 5, "the verdict's false-discovery rate"), field("samples", "calibration specimens", "4", 3, "specimens simulated for the calibration (1 to 64)"),
      field("cell", "cell (Å)", "40", 4, "the simulated specimens' least width (at most 200 Å)")),
    el("p", {}, queue));
}
async function showRestored(jobId, container) {  // a finished restore job: its verdict, its figure and the lines it printed
  const r = await api(`/api/jobs/${jobId}/restored`), v = r.verdict;
  const img = r.figure ? el("img", { class: "plan-figure", id: "restored-figure", src: `/api/file?path=${enc(r.figure)}`, alt: "restoration", title: "click to enlarge" }) : "";
  if (img) img.onclick = () => lightbox(img.src, "restoration: unsupported columns in red");
  const judged = v ? el("div", { id: "verdict", class: v.unsupported ? "verdict-unsupported" : "verdict-supported" }, el("p", {}, el("strong", { id: "verdict-summary" }, v.summary)),
    el("p", { class: "muted", id: "verdict-calibration" }, v.calibration), el("p", { id: "verdict-advice" }, v.advice))
    : el("p", { class: "muted", id: "verdict" }, "no verdict: queue the restore with the verdict to have every restored column judged against the data");
  container.replaceChildren(el("div", { class: "card", id: "restored" }, el("h3", {}, "restoration"), judged, img, el("pre", { class: "log", id: "restored-lines" }, r.lines.join("\n"))));
}

// ---- a live job's stream (phasestem live): its stage, what was sent, received, recorded, fitted, the rate, the lag ----
const STAGES = { streaming: "streaming: frames arriving, fitted as they come", finishing: "finishing: the reconstruction of the recording", done: "done" };
function streamCard() {
  const cell = (id) => el("td", { class: "num", id });
  // [label, cell id, the snapshot's field (a row whose field the snapshot lacks is hidden), how its value reads]
  const num = (v) => String(v), secs = (v) => `${v.toFixed(2)} s`;
  const rows = [["frames expected", "stream-expected", "frames_expected", num], ["frames sent by the detector", "stream-sent", "frames_sent", num],
    ["frames received", "stream-received", "frames_received", num], ["frames recorded (stream.h5)", "stream-recorded", "frames_recorded", num],
    ["frames fitted (AD)", "stream-fitted", "frames_fitted", num], ["frames waiting for AD", "stream-waiting", "frames_waiting", num],
    ["not received", "stream-missing"], ["not sent (the scan ended early)", "stream-unsent"],
    ["frame rate", "stream-rate", "frames_per_second", (v) => `${v.toFixed(1)} frames/s`], ["scan duration", "stream-duration", "scan_seconds", (v) => `${v.toFixed(1)} s`],
    ["stall alarm after", "stream-stall", "stall_seconds", secs], ["live updates", "stream-updates", "updates", num],
    ["epochs fitted while streaming", "stream-epochs-live", "epochs_live", (v) => v.toFixed(2)],
    ["lag, median", "stream-lag-median"], ["lag, 95th percentile", "stream-lag-p95"], ["recording", "stream-recording"]];
  const message = el("div", { class: "stream-message", id: "stream-message", role: "alert", hidden: true });
  const cells = Object.fromEntries(rows.map(([, id]) => [id, cell(id)])), stage = el("strong", { id: "stream-stage" }, "waiting for the detector");
  const card = el("div", { class: "card stream-card", id: "live-stream" }, el("h3", {}, "detector stream"),
    el("p", {}, "stage ", stage), message,
    el("table", { id: "stream-counts" }, rows.map(([label, id, key]) => el("tr", { "data-key": id, hidden: !!key || id === "stream-unsent" }, el("td", {}, label), cells[id]))));
  const put = (id, text) => { cells[id].textContent = text; };
  const shown = (id, yes) => { cells[id].parentElement.hidden = !yes; };
  const maybeSecs = (v) => (v === null || v === undefined ? "–" : secs(v));
  card.show = (s, d) => {  // s: the snapshot's stream (null before the first); d: the job's payload
    const r = d.recording;
    put("stream-recording", r ? `${r.name} (${(r.bytes / 2 ** 20).toFixed(1)} MiB)` : "–");
    let text = s ? s.message : "";  // what phasestem live says is wrong (a stall, a broken connection), never guessed here
    if (d.state === "cancelling" && !d.final) text = [text, "stopping: the scan ends here; the frames received are recorded and reconstructed (Stop now ends that at once)"].filter(Boolean).join(" — ");
    if (d.final && (!s || s.stage !== "done")) {  // ended before its reconstruction: say what stays
      const kept = r ? `what was received is kept in ${r.name}` : "no frame was recorded";
      text = [text, `the job ended (${d.state}) while ${s ? s.stage : "waiting for the detector"}: ${kept}`].filter(Boolean).join(" — ");
    }
    message.textContent = text;
    message.hidden = !text;
    if (!s) return;
    stage.textContent = STAGES[s.stage] || s.stage;
    stage.className = `stage-${s.stage}`;
    for (const [, id, key, show] of rows) {
      if (!key) continue;
      const v = s[key];
      shown(id, v !== null && v !== undefined);
      if (v !== null && v !== undefined) put(id, show(v));
    }
    const streaming = s.stage === "streaming" && !d.final, sent = s.frames_sent;
    const lost = sent === null || sent === undefined ? s.frames_expected - s.frames_received : sent - s.frames_received;
    put("stream-missing", streaming ? `${s.frames_expected - s.frames_received} still to come` : String(lost));
    cells["stream-missing"].classList.toggle("dropped", !streaming && lost > 0);
    const unsent = sent === null || sent === undefined ? 0 : s.frames_expected - sent;
    shown("stream-unsent", !streaming && unsent > 0);
    put("stream-unsent", String(unsent));
    put("stream-lag-median", maybeSecs(s.lag_median)); put("stream-lag-p95", maybeSecs(s.lag_p95));
  };
  return card;
}

// ---- live: reconstruct while the detector streams (phasestem live PARAMS --host H --data-port P), or rehearse ----
// (phasestem live PARAMS --replay SCAN.mib --fps F: a recorded scan replayed by LiberTEM-live's simulator)
function liveArgs(v) {  // the detector (or the rehearsal) and run options of the Live form, as the command's arguments
  const args = v.source === "replay" ? ["--replay", v.replay.trim() || "SCAN.mib", "--fps", v.fps.trim() || "100"]
    : ["--host", v.host.trim() || "127.0.0.1", "--data-port", v.port.trim() || "6342"];
  for (const [flag, text] of [["--epochs", v.epochs], ["--arm-timeout", v.arm], ["--stall-timeout", v.stall]]) if (text.trim()) args.push(flag, text.trim());
  return args;
}
async function livePage() {
  const q = params(), id = (n) => `live-${n}`;
  const field = (n, label, value, size, hint) => el("label", { title: hint }, label + " ", el("input", { type: "text", id: id(n), value: value ?? "", size }));
  const device = el("select", { id: id("device") }, info.devices.map((d) => el("option", { value: d, selected: d === (info.devices[1] || info.devices[0]) }, d)));
  const file = fileField(id("config"), q.get("config") || "", ["yaml"], 34);
  const replay = fileField(id("replay"), q.get("replay") || "", ["data"], 30);
  const rehearse = !!q.get("replay");
  const source = el("select", { id: id("source") }, [["detector", "the detector (Merlin)"], ["replay", "a rehearsal: a recorded .mib replayed"]]
    .map(([value, label]) => el("option", { value, selected: (value === "replay") === rehearse }, label)));
  const sets = el("textarea", { id: id("set") }, (q.get("set") || "").split(";").filter(Boolean).join("\n"));
  const preview = el("code", { id: id("command") });
  const values = () => ({ source: source.value, ...Object.fromEntries(["host", "port", "replay", "fps", "epochs", "arm", "stall", "name"].map((n) => [n, document.getElementById(id(n)).value])) });
  const lines = () => sets.value.split("\n").map((t) => t.trim()).filter(Boolean);
  const detector = el("div", { id: id("detector") }, field("host", "detector host", q.get("host") || "127.0.0.1", 16, "the Merlin data host (--host)"),
    field("port", "data port", q.get("port") || "6342", 6, "the Merlin data port (--data-port; Merlin's is 6342)"));
  const rehearsal = el("div", { id: id("rehearsal") }, el("label", { title: "a Merlin .mib of the workspace, in a folder of its own (or its .hdr: the .mib beside it is replayed)" }, "recorded scan ", replay),
    field("fps", "frames/s", q.get("fps") || "100", 6, "the rate at which LiberTEM-live's simulator sends the frames (--fps)"));
  const update = () => {
    detector.hidden = source.value === "replay";
    rehearsal.hidden = source.value !== "replay";
    preview.textContent = ["phasestem live", file.firstChild.value.trim() || "PARAMS.yaml", ...liveArgs(values()), ...lines().flatMap((t) => ["--set", t]), "--device", device.value].join(" ");
  };
  const start = el("button", { id: id("start"), class: "primary", onclick: async () => {
    const v = values(), config = file.firstChild.value.trim();
    const name = v.name.trim() || (v.source === "replay" ? `rehearsal ${v.replay.trim().split("/").pop()}` : `live ${config.split("/").pop()}`);
    const job = await postJSON("/api/jobs", { command: "live", config, args: liveArgs(v), set: lines(), device: device.value, name });
    showError("");
    go(`#/run/${job.id}`);
  } }, "Start");
  const card = el("div", { class: "card auto-form", id: id("form") },
    el("h3", {}, "Reconstruct while the detector streams (Merlin), or rehearse with a recorded scan"),
    el("div", {}, el("label", { title: "optics (energy, semi-angle, angular sampling, aberrations) and scan (step, rotation, shape); no data.file" }, "parameter file ", file)),
    el("div", {}, el("label", {}, "frames from ", source)), detector, rehearsal,
    el("div", {}, field("epochs", "epochs", q.get("epochs") || "", 4, "the run's epochs, the live updates' whole scans included (--epochs; default: the file's run.n_epochs)"),
      field("arm", "arm timeout (s)", "", 5, "seconds to wait for the detector to be armed (--arm-timeout, default 60)"),
      field("stall", "stall timeout (s)", "", 5, "seconds without a frame after which the scan counts as ended (--stall-timeout, default 30); the page warns earlier, when phasestem live finds the frames late for the rate they came at"),
      el("label", {}, "device ", device), field("name", "name", "", 16, "the job's name")),
    el("label", {}, "changed parameters (key=value, one a line: optics.energy=300e3, scan.shape=[256, 256], …)", el("br"), sets),
    el("p", {}, start, " ", el("span", { class: "muted" }, "runs: "), preview));
  card.addEventListener("input", update);
  card.addEventListener("change", update);
  view.replaceChildren(el("h2", {}, "Live"),
    el("p", { class: "hint" }, "Start this, then the scan: the job waits for the detector to be armed, records the stream into its run folder (stream.h5), shows the virtual images, the iCoM phase and the AD phase as the rows arrive, and reconstructs the recording once the scan ends. Stopping it ends the scan there: every frame received is recorded and reconstructed, a finished run with a partial scan. A rehearsal replays a recorded .mib of the workspace over the detector's protocol (LiberTEM-live's simulator, on this machine) at the frame rate you choose."),
    card);
  update();
}

// ---- live run ----------------------------------------------------------------------------------------------------
async function runPage(jobId) {
  const job = await api(`/api/jobs/${jobId}`);
  window.__liveUpdates = [];
  const streamed = STREAMED.includes(job.command), restoring = job.command === "restore";
  const svg = svgEl("svg", { class: "loss", id: "loss-curve" });
  const figs = { object_phase: figure("live-phase", streamed ? "AD phase (the scanned part)" : "object phase", 240, { imgClass: "live" }),
    ...(streamed ? { virtual_bf: figure("live-bf", "virtual bright field", 200, { imgClass: "live" }),
      virtual_adf: figure("live-adf", "virtual annular dark field", 200, { imgClass: "live" }),
      icom_phase: figure("live-icom", "iCoM phase (direct)", 200, { imgClass: "live" }) } : {}),
    probe_amplitude: figure("live-probe-amp", "probe amplitude", 200, { imgClass: "live" }),
    probe_phase: figure("live-probe-phase", "probe phase", 200, { imgClass: "live" }) };
  const stream = streamed ? streamCard() : null;
  const rerunSet = el("textarea", { id: "rerun-set" });
  const sets = job.spec.set || [];  // as the request gave them: ["key=value", …] or {key: value}
  rerunSet.value = (Array.isArray(sets) ? sets : Object.entries(sets).map(([k, v]) => `${k}=${JSON.stringify(v)}`)).join("\n");
  const auto = !!(job.spec && job.spec.auto);
  const config = job.command === "reconstruct" || job.command === "tune" ? `${job.run_dir}/params.yaml` : job.spec.config;
  const state = el("strong", { id: "run-state" }, job.state);
  const outcome = el("strong", { id: "run-outcome" }), outcomeDetail = el("p", { class: "muted", id: "run-outcome-detail" });
  const cancel = el("button", { id: "run-cancel" }, "Cancel");
  const resume = el("button", { id: "run-resume" }, "Resume");
  const rerunCard = el("div", { class: "card", id: "rerun-card" }, el("h3", {}, "Re-run with changed parameters"),
    auto ? el("p", { class: "muted" }, "from the parameter file this --auto run wrote (", el("code", {}, config), ")") : "",
    el("label", {}, "key=value, one a line", el("br"), rerunSet), " ",
    el("button", { id: "rerun", onclick: async () => {
      const set = rerunSet.value.split("\n").map((s) => s.trim()).filter(Boolean);
      const spec = { command: job.command, config, device: job.device, processes: job.processes, set, name: `re-run of ${jobId}`, args: auto ? [] : job.spec.args || [] };
      if (job.network || job.spec.network) spec.network = job.spec.network;
      const j = await postJSON("/api/jobs", spec);
      go(`#/run/${j.id}`);
    } }, "Re-run"));
  const showState = (s, returncode, o) => {  // the state and how the run ended, and only the buttons that apply
    state.textContent = s + (s === "failed" && returncode ? ` (exit ${returncode})` : "");
    state.className = `state-${s}${o ? ` outcome-${o.kind}` : ""}`;
    outcome.textContent = o && o.note ? ` · ${o.note}` : "";
    outcome.className = o ? `outcome-${o.kind}` : "";
    outcomeDetail.textContent = o && o.detail ? o.detail : "";
    outcomeDetail.hidden = !outcomeDetail.textContent;
    cancel.hidden = !(CAN_CANCEL.includes(s) || (streamed && s === "cancelling"));
    if (streamed) {  // phasestem live: a first stop ends the scan (what came is recorded and reconstructed), a second stops at once
      cancel.textContent = s === "cancelling" ? "Stop now" : s === "queued" ? "Cancel" : "Stop the scan";
      cancel.title = s === "cancelling" ? "end the reconstruction of what was received at once (the recording stays)" : "the scan ends here: every frame received is kept in stream.h5 and reconstructed";
    }
    resume.hidden = !CAN_RESUME.includes(s) || streamed;
    rerunCard.hidden = !["done", "failed", "cancelled"].includes(s);
  };
  const act = (button, path) => { button.onclick = async () => { button.disabled = true; try { const j = await postJSON(path, {}); showState(j.state, j.returncode); } finally { button.disabled = false; } }; };
  act(cancel, `/api/jobs/${jobId}/cancel`); act(resume, `/api/jobs/${jobId}/resume`);
  showState(job.state, job.returncode, job.outcome);
  view.replaceChildren(
    el("h2", {}, `Run ${jobId}`, job.name ? ` — ${job.name}` : ""),
    el("p", {}, el("code", { id: "run-command" }, job.command_line)),
    el("p", {}, "state ", state, outcome, " · ", el("span", { id: "run-epoch-label" }, "epoch"), " ", el("strong", { id: "run-epoch" }, "–"),
      " · ETA ", el("span", { id: "run-eta" }, "–"), " · elapsed ", el("span", { id: "run-elapsed" }, "–"), el("span", { id: "run-gpu" }, ""),
      " ", cancel, " ", resume),
    outcomeDetail,
    ...(streamed ? [el("div", { class: "row" }, stream, el("div", { class: "card" }, el("h3", {}, "loss"), svg)),  // the stream, its images side by side, then the probe
      ...[["object_phase", "virtual_bf", "virtual_adf", "icom_phase"], ["probe_amplitude", "probe_phase"]].map((keys) => el("div", { class: "row" }, keys.map((k) => el("div", { class: "card" }, figs[k]))))]
      : restoring ? [] : [el("div", { class: "row" }, el("div", { class: "card" }, el("h3", {}, "loss"), svg), ...Object.values(figs).map((f) => el("div", { class: "card" }, f)))]),
    el("h3", {}, "log"), el("pre", { class: "log", id: "run-log" }),
    rerunCard);
  const planFigures = el("div", { class: "row", id: "plan-figures" });
  if (job.command === "plan") view.insertBefore(planFigures, document.getElementById("run-log").previousSibling);
  const runFigures = el("div", { class: "row", id: "run-figures" });  // a finished reconstruction's figures, or restoration
  const restoreForm = el("div", { id: "restore-form" });  // a finished reconstruction: queue a restore of it
  let figuresShown = false;
  view.insertBefore(runFigures, document.getElementById("run-log").previousSibling);
  view.insertBefore(restoreForm, document.getElementById("run-log").previousSibling);
  push(`/api/jobs/${jobId}/events`, (d) => {
    if (d.error) { showError(d.error); return; }
    if (job.command === "plan" && d.final && d.state === "done") showPlanFigures(job.run_dir, planFigures);
    if ((RECONSTRUCTIONS.includes(job.command) || restoring) && d.final && d.state === "done" && !figuresShown) {
      figuresShown = true;
      if (restoring) showRestored(jobId, runFigures);
      else showRunFigures(jobId, runFigures).then((j) => { if (j.files.includes(`${j.run_dir}/results.h5`)) restoreForm.replaceChildren(restoreCard(j)); });
    }
    showState(d.state, d.returncode, d.outcome);
    document.getElementById("run-elapsed").textContent = fmtTime(d.elapsed_s);
    const logBox = document.getElementById("run-log");
    logBox.textContent = d.log.join("\n");
    logBox.scrollTop = logBox.scrollHeight;
    const live = d.live;
    if (streamed) stream.show(live && live.stream, d);
    if (live) {
      document.getElementById("run-epoch").textContent = `${live.epoch} / ${live.n_epochs}`;  // a stream's too: the run's epochs
      document.getElementById("run-eta").textContent = d.final ? "–" : fmtTime(live.eta_s);
      document.getElementById("run-gpu").textContent = live.gpu_memory_gb !== null ? ` · GPU memory ${live.gpu_memory_gb.toFixed(2)} GiB` : "";
      drawLoss(svg, [{ values: live.loss }]);
      if (live.images.phase_sigma && !figs.phase_sigma) {  // the run's error bars, once it has computed them
        figs.phase_sigma = figure("live-sigma", "phase σ (error bar per pixel)", 240, { imgClass: "live" });
        document.getElementById("live-phase").closest(".card").after(el("div", { class: "card" }, figs.phase_sigma));
      }
      for (const [k, f] of Object.entries(figs)) f.update(live.images[k], live.scales && live.scales[k]);
      window.__liveUpdates.push({ epoch: live.epoch, state: d.state, points: live.loss.length, phase: live.images.object_phase,
        stream: live.stream, bf: live.images.virtual_bf, adf: live.images.virtual_adf, icom: live.images.icom_phase });
    }
  });
}

// ---- compare ---------------------------------------------------------------------------------------------------
function lineEditor(fig, line, onRelease) {
  // A line over a figure (fractions 0–1 of its rows and columns: [y0, x0, y1, x1]) whose ends are dragged, or drawn
  // anew by a drag elsewhere on the image; mirrors follow it on the other figures.
  const svg = svgEl("svg", { class: "overlay line-editor", id: "profile-line", viewBox: "0 0 1 1", preserveAspectRatio: "none" });
  const mirrors = [];
  const draw = () => {
    for (const target of [svg, ...mirrors]) {
      target.replaceChildren(svgEl("line", { x1: line[1], y1: line[0], x2: line[3], y2: line[2], class: "profile-line", "vector-effect": "non-scaling-stroke" }));
      target.append(svgEl("text", { x: line[1], y: line[0] - 0.03, class: "profile-label" }, "A"), svgEl("text", { x: line[3], y: line[2] - 0.03, class: "profile-label" }, "B"));
      if (target === svg) for (const [k, [y, x]] of [[0, [line[0], line[1]]], [1, [line[2], line[3]]]]) target.append(svgEl("circle", { cx: x, cy: y, r: 0.025, class: "profile-end", "data-end": k }));
    }
  };
  const at = (e) => { const r = svg.getBoundingClientRect(); return [Math.min(1, Math.max(0, (e.clientY - r.top) / r.height)), Math.min(1, Math.max(0, (e.clientX - r.left) / r.width))]; };
  let end = null;
  svg.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    const p = at(e);
    if (e.target.dataset.end !== undefined) end = +e.target.dataset.end;
    else { line[0] = p[0]; line[1] = p[1]; line[2] = p[0]; line[3] = p[1]; end = 1; }
    svg.setPointerCapture(e.pointerId);
    draw();
  });
  svg.addEventListener("pointermove", (e) => { if (end === null) return; const p = at(e); line[2 * end] = p[0]; line[2 * end + 1] = p[1]; draw(); });
  const release = (e) => { if (end === null) return; end = null; if (svg.hasPointerCapture(e.pointerId)) svg.releasePointerCapture(e.pointerId); onRelease(line); };
  svg.addEventListener("pointerup", release);
  svg.addEventListener("pointercancel", release);
  fig.box.append(svg);
  draw();
  return { mirror: (other) => { const m = svgEl("svg", { class: "overlay line-mirror", viewBox: "0 0 1 1", preserveAspectRatio: "none" }); mirrors.push(m); other.box.append(m); draw(); } };
}
function shiftText(r, onto) {  // the shift Compare applied to a run before subtracting (dy, dx: + moves down, right)
  if (!r.aligned) return `not aligned: no match with job ${onto} within a quarter of the field (or a field under 8 px); subtracted as it is`;
  const pair = (v, d) => `(${v.map((x) => (x >= 0 ? "+" : "") + x.toFixed(d)).join(", ")})`;
  return `aligned: moved by ${pair(r.shift_px, 2)} px${r.shift_angstrom ? ` = ${pair(r.shift_angstrom, 3)} Å` : ""} (dy, dx) onto job ${onto}`;
}
async function comparePage() {
  const ids = params().get("jobs");
  if (!ids) {
    const jobs = (await api("/api/jobs")).jobs.filter((j) => j.state === "done" && RECONSTRUCTIONS.includes(j.command));
    const boxes = jobs.map((j) => el("label", {}, el("input", { type: "checkbox", class: "compare-pick", value: j.id }), ` ${j.id} ${j.name || j.command}`));
    view.replaceChildren(el("h2", {}, "Compare"), el("p", {}, jobs.length ? "Finished reconstructions (the first two chosen give the difference map):" : "No finished reconstruction yet."), el("div", {}, boxes),
      el("button", { id: "compare-go", class: "primary", onclick: () => go(`#/compare?jobs=${[...document.querySelectorAll(".compare-pick:checked")].map((b) => b.value).join(",")}`) }, "Compare"));
    return;
  }
  const data = await api(`/api/compare?jobs=${enc(ids)}`);
  const loss = svgEl("svg", { class: "loss", id: "compare-loss" });
  const profile = svgEl("svg", { class: "loss profile", id: "compare-profile" });
  const runFigs = data.runs.map((r, k) => {
    const f = figure(`compare-img-${r.job}`, `job ${r.job}${r.name ? ` — ${r.name}` : ""}`, 240, { imgClass: "live" });
    f.update(r.image, r.scale);
    f.img.classList.add("compare-phase");
    f.querySelector(".fig-title").classList.add(`series-${k % COLORS.length}`);
    return { r, f };
  });
  const cards = runFigs.map(({ r, f }, k) => el("div", { class: "card compare-run" }, f,
    el("div", {}, `${r.epochs} epochs, final loss ${r.final_loss === null ? "–" : fmt(r.final_loss)}`),
    k > 0 ? el("div", { class: "muted compare-shift" }, shiftText(r, data.runs[0].job)) : "",
    Object.entries(r.metrics).map(([k, v]) => el("div", {}, `${k}: ${fmt(v)}`)),
    el("details", {}, el("summary", {}, `result files (${r.files.length})`), r.files.map((p) => el("div", {}, el("a", { href: `/api/file?download=1&path=${enc(p)}` }, p.split("/").pop()))))));
  const dd = data.difference;
  const diffFig = figure("diff-img", `difference: ${dd.scale.label}`, 300, { imgClass: "live" });
  diffFig.update(dd.image, dd.scale);
  const line = [0.5, 0.05, 0.5, 0.95];
  const profileInfo = el("div", { class: "muted", id: "profile-info" });
  let asked = 0;
  async function showProfile() {
    const mine = ++asked;
    const p = await api(`/api/compare/profile?jobs=${enc(ids)}&line=${line.map((v) => v.toFixed(4)).join(",")}`);
    if (mine !== asked) return;
    plot(profile, p.runs.map((r) => ({ x: p.distance, y: r.values, label: `job ${r.job}` })), { xLabel: `distance from A (${p.unit})`, yLabel: "phase (rad, mean removed)" });
    profileInfo.textContent = `line A → B: (${p.line.map((v) => v.toFixed(2)).join(", ")}) of the common ${p.shape[0]} × ${p.shape[1]} grid, ${num(p.distance[p.distance.length - 1])} ${p.unit} long`;
    profile.dataset.line = p.line.join(",");
  }
  const editor = lineEditor(diffFig, line, () => showProfile().catch(() => {}));
  for (const { f } of runFigs) editor.mirror(f);
  view.replaceChildren(el("h2", {}, "Compare"),
    el("p", {}, `one colour scale for every phase: ${fmt(data.vmin)} to ${fmt(data.vmax)} rad (mean removed, over each run's scanned field)`),
    el("div", { class: "row", id: "compare-runs" }, cards),
    el("div", { class: "row" },
      el("div", { class: "card", id: "compare-difference" }, diffFig, el("p", { id: "compare-shift" }, shiftText(dd, dd.jobs[0])), el("div", { class: "muted" }, `rms ${fmt(dd.rms)} rad on the runs' common grid (blank: outside the moved run's field); drag on it to draw the profile line, or drag its ends`)),
      el("div", { class: "card" }, el("h3", {}, "line profile A → B"), profile, profileInfo),
      el("div", { class: "card" }, el("h3", {}, "loss"), loss)),
    el("h3", {}, "parameters that differ"),
    el("table", { id: "compare-diff" }, el("tr", {}, el("th", {}, "parameter"), data.runs.map((r) => el("th", {}, `job ${r.job}`))),
      data.diff.map((d) => el("tr", {}, el("td", {}, el("code", {}, d.key)), d.values.map((v) => el("td", {}, JSON.stringify(v)))))));
  drawLoss(loss, data.runs.map((r) => ({ values: r.loss, label: `job ${r.job}` })));
  await showProfile();
}

// ---- router ----------------------------------------------------------------------------------------------------
const PAGES = { files: filesPage, dataset: datasetPage, calibrate: calibratePage, jobs: jobsPage, live: livePage, compare: comparePage, params: paramsPage };
async function route() {
  const seq = ++routeSeq;
  for (const close of closers) close();
  closers = [];
  showError("");
  for (const d of document.querySelectorAll("dialog[open]")) d.close();
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
