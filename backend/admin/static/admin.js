// samloop admin console: asks for the token once (kept in sessionStorage, sent as a Bearer header,
// never in a URL), then polls /admin/api/projects and draws each project. No build step, no library:
// the DOM is built with textContent only (project data is never parsed as HTML).
"use strict";

const API = "api/projects";
const POLL_MS = 1500;
const TOKEN_KEY = "samloop-admin-token";
let pollTimer = null;

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (value === true) el.setAttribute(key, "");
    else if (value !== false && value !== null && value !== undefined) el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Authorization: `Bearer ${token}`, ...(options.body ? { "Content-Type": "application/json" } : {}) };
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    signOut(body.detail || "wrong token");
    throw new Error(body.detail || "unauthorised");
  }
  if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
  return body;
}

function setStatus(text, error = false) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = error ? "error" : "muted";
}

async function act(path, method, body) {
  try {
    await api(path, { method, body: body === undefined ? undefined : JSON.stringify(body) });
    setStatus(`${method} ${path}: done`);
  } catch (err) {
    setStatus(`${method} ${path}: ${err.message}`, true);
  }
  await refresh();
}

// ----- plots (inline SVG) -------------------------------------------------------------------------
function plot(title, series, xLabel) {
  const W = 340, H = 180, L = 40, R = 10, T = 30, B = 28;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("class", "plot");
  const add = (tag, attrs, text) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.append(el);
    return el;
  };
  add("text", { x: L, y: 12 }, title);
  const points = series.flatMap((s) => s.points).filter((p) => p[1] !== null && p[1] !== undefined);
  if (!points.length) {
    add("text", { x: L, y: H / 2 }, "no data yet");
    return svg;
  }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys, 0), Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) y1 = y0 + 1;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" });
  add("text", { x: 2, y: sy(y1) + 4 }, fmt(y1, 2));
  add("text", { x: 2, y: sy(y0) + 4 }, fmt(y0, 2));
  add("text", { x: L, y: H - 8 }, String(x0));
  add("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `${x1} (${xLabel})`);
  series.forEach((s, i) => {
    const pts = s.points.filter((p) => p[1] !== null && p[1] !== undefined);
    add("polyline", { points: pts.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "), fill: "none",
      stroke: s.color, "stroke-width": 2, "data-series": s.name });
    if (pts.length < 40) pts.forEach((p) => add("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: s.color }));
    if (series.length > 1) add("text", { x: L + 8 + 60 * i, y: 25, fill: s.color }, `— ${s.name}`);
  });
  return svg;
}

// ----- one project ---------------------------------------------------------------------------------
function switchControl(project, name, schema) {
  const value = project.switches[name];
  const path = `${API}/${project.id}`;
  if (schema.type === "boolean") {
    return h("label", {}, h("input", { type: "checkbox", "data-switch": name, checked: !!value,
      onchange: (e) => act(path, "PATCH", { [name]: e.target.checked }) }), ` ${name}`);
  }
  if (schema.enum) {
    return h("label", {}, `${name} `, h("select", { "data-switch": name,
      onchange: (e) => act(path, "PATCH", { [name]: e.target.value }) },
    schema.enum.map((c) => h("option", { value: c, selected: c === value }, c))));
  }
  // pinned_version and other optional numbers: shown, cleared here, set from the versions table.
  return h("label", { "data-switch": name }, `${name}: ${value ?? "none"} `,
    value !== null && value !== undefined
      ? h("button", { onclick: () => act(path, "PATCH", { [name]: null }) }, "clear") : null);
}

function versionsTable(project) {
  const base = `${API}/${project.id}`;
  const rows = project.versions.slice().reverse().map((v) => h("tr",
    { class: [v.active ? "active" : "", v.pinned ? "pinned" : ""].join(" "), "data-version": v.version },
    h("td", {}, `v${v.version}`), h("td", {}, when(v.created)), h("td", {}, fmt(v.mean_iou)),
    h("td", {}, fmt(v.noc90, 2)), h("td", {}, v.promoted === false ? "no" : v.promoted ? "yes" : "–"),
    h("td", {}, [v.active ? "active" : "", v.pinned ? "pinned" : ""].join(" ").trim() || "–"),
    h("td", {},
      v.active ? null : h("button", { "data-activate": v.version, onclick: () => act(`${base}/activate`, "POST",
        { version: v.version }) }, "Activate"), " ",
      v.pinned ? null : h("button", { "data-pin": v.version, onclick: () => act(base, "PATCH",
        { pinned_version: v.version }) }, "Pin"), " ",
      v.active || v.pinned ? null : h("button", { "data-delete": v.version, onclick: () => {
        if (confirm(`Delete version ${v.version} of project ${project.id}?`)) act(`${base}/versions/${v.version}`, "DELETE");
      } }, "Delete"))));
  return h("table", { class: "versions" },
    h("tr", {}, ["version", "created", "held-out mIoU", "NoC@90", "promoted", "state", ""].map((t) => h("th", {}, t))),
    rows.length ? rows : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "no adapter versions yet")));
}

function jobPanel(project) {
  const base = `${API}/${project.id}`;
  const job = project.job;
  const buttons = project.training_connected ? [
    h("button", { "data-train": project.id, onclick: () => act(`${base}/train`, "POST") }, "Train now"), " ",
    h("button", { "data-retrain": project.id, onclick: () => {
      if (confirm(`Retrain project ${project.id} from scratch on every labeled task? Runs take longer than the usual update.`)) {
        act(`${base}/train`, "POST", { full: true });
      } } }, "Retrain from scratch"), " ",
    h("button", { "data-cancel": project.id, disabled: !job, onclick: () => act(`${base}/cancel`, "POST") }, "Cancel"),
  ] : [h("span", { class: "muted" }, "no training queue connected")];
  if (!job) return h("div", { class: "job" }, h("b", {}, "Job: "), h("span", { class: "job-stage" }, "idle"), h("br"), buttons);
  const share = job.max_steps ? Math.min(1, (job.step || 0) / job.max_steps) : 0;
  return h("div", { class: "job" }, h("b", {}, "Job: "), h("span", { class: "job-stage" }, job.stage || job.status),
    h("div", { class: "muted" }, job.message || ""),
    h("div", { class: "bar" }, h("div", { style: `width:${(100 * share).toFixed(1)}%` })),
    h("div", {}, "step ", h("span", { class: "job-step" }, job.step ?? "–"), ` of ${job.max_steps ?? "–"}, loss `,
      h("span", { class: "job-loss" }, fmt(job.loss, 4)), `, about ${fmt(job.eta_seconds, 0)} s left`), buttons);
}

function lastRun(project) {
  const run = project.last_run;
  if (!run) return h("div", { class: "last-run muted" }, "no training run yet");
  return h("div", { class: "last-run" }, h("b", {}, "Last run: "), h("span", { class: "run-status" }, run.status),
    ` at ${when(run.finished_at)}`, run.seconds ? `, ${fmt(run.seconds, 1)} s` : "",
    h("div", {}, `held-out mIoU: candidate ${fmt(run.candidate && run.candidate.mean_iou)}, active `
      + `${fmt(run.active && run.active.mean_iou)} (${run.evaluated_on || "–"})`),
    h("div", { class: "muted" }, run.reason || ""));
}

function preencode(project) {
  // Whatever GET /projects/ID/settings reports as preencode_progress: {state, encoded, total, failed, ...}.
  const p = project.preencode_progress;
  if (p === null || p === undefined) return null;
  if (typeof p !== "object") return h("div", { class: "preencode" }, `pre-encoding: ${p}`);
  const done = p.encoded ?? p.done ?? 0;
  return h("div", { class: "preencode" },
    `pre-encoding: ${p.state || ""}${p.total ? `, ${done} of ${p.total} tasks stored` : ""}`
      + `${p.failed ? `, ${p.failed} failed` : ""}${p.error ? ` (${p.error})` : ""}`,
    p.total ? h("div", { class: "bar" }, h("div", { style: `width:${(100 * done / p.total).toFixed(1)}%` })) : null);
}

function projectCard(project, switches) {
  const versions = project.versions;
  // Two plots: IoU lives in [0, 1], clicks-to-90 % IoU in [1, 20]; one axis would flatten one of them.
  const iou = plot("held-out mean IoU per version (higher is better)",
    [{ name: "mean IoU", color: "#3f7be0", points: versions.map((v) => [v.version, v.mean_iou]) }], "version");
  const noc = plot("held-out clicks to 90 % IoU per version (lower is better)", [
    { name: "adapter", color: "#d9822b", points: versions.map((v) => [v.version, v.noc90]) },
    { name: "SAM", color: "#999", points: versions.map((v) => [v.version, v.base_noc90]) },
  ], "version");
  const curve = (project.job && project.job.losses && project.job.losses.length) ? project.job.losses
    : (project.last_run ? project.last_run.losses : []);
  const loss = plot(project.job ? "loss (running job)" : "loss (last run)",
    [{ name: "loss", color: "#7a3fe0", points: curve || [] }], "step");
  return h("section", { class: "project", id: `project-${project.id}` },
    h("h2", {}, `Project ${project.label_studio_id} `, h("span", { class: "muted" }, created(project)),
      h("span", { class: "model-version" }, project.model_version)),
    h("div", { class: "muted" }, `classes: ${project.classes.join(", ") || "–"}; adapter knows: `
      + `${project.adapter_classes.join(", ") || "–"}; active v${project.active_version ?? "–"}, `
      + `pinned v${project.pinned_version ?? "–"}`),
    h("div", { class: "switches row" }, Object.entries(switches).map(([n, s]) => switchControl(project, n, s))),
    preencode(project),
    h("div", { class: "row" }, versionsTable(project), h("div", {}, jobPanel(project), lastRun(project))),
    h("div", { class: "row" }, iou, noc, loss));
}

function created(project) {
  // The key tells Label Studio instances apart: each restarts its project ids at 1.
  if (project.created === null) return "(stored before keys named the Label Studio instance) ";
  return `(created ${new Date(project.created * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC) `;
}

function healthBanner(health) {
  // What /health says: an outage of Redis or of the training worker is shown above every project.
  const banner = document.getElementById("health");
  const problems = health && health.problems ? health.problems : [];
  banner.hidden = problems.length === 0;
  banner.replaceChildren(...problems.map((text) => h("p", {}, `${health.status}: ${text}`)));
}

// ----- page ----------------------------------------------------------------------------------------
async function refresh() {
  let data;
  try {
    data = await api(API);
  } catch (err) {
    setStatus(err.message, true);
    return;
  }
  document.getElementById("model").textContent = data.model ? data.model.model : "";
  healthBanner(data.health);
  const list = document.getElementById("projects");
  const focused = document.activeElement && document.activeElement.tagName === "SELECT";
  if (focused) return; // an open drop-down would close under a redraw
  list.replaceChildren(...(data.projects.length ? data.projects.map((p) => projectCard(p, data.switches))
    : [h("p", { class: "muted" }, "no projects yet: connect samloop to a Label Studio project")]));
  setStatus(`updated ${new Date().toLocaleTimeString()}`);
}

function start() {
  document.getElementById("login").hidden = true;
  document.getElementById("sign-out").hidden = false;
  refresh();
  clearInterval(pollTimer);
  pollTimer = setInterval(refresh, POLL_MS);
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(pollTimer);
  document.getElementById("projects").replaceChildren();
  document.getElementById("login").hidden = false;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("login-error").textContent = message;
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  document.getElementById("login-error").textContent = "";
  start();
});
document.getElementById("sign-out").addEventListener("click", () => signOut());
if (sessionStorage.getItem(TOKEN_KEY)) start(); else signOut();
