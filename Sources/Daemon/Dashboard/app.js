// mocod's dashboard: plain JavaScript, no dependencies, served from the binary. It only talks to
// the daemon that served it (same origin), with the bearer token from sessionStorage when the
// daemon asks for one. Views: the job list (#/), a job (#/jobs/<id>), the submit form (#/submit).
'use strict';

const TOKEN_KEY = 'mocod.token';
const STATES_DONE = new Set(['succeeded', 'failed', 'cancelled']);
// A job page's live stream asks the daemon to write metric and log events together at most this
// often: the page wakes (and the training machine's CPU serves it) once an interval, however fast
// the job steps.
const LIVE_INTERVAL_MS = 2000;

// ---------- API ----------

class Unauthorized extends Error {}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || ('HTTP ' + status));
    this.status = status;
    this.body = body;
  }
}

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h['Authorization'] = 'Bearer ' + token;
  return h;
}

// A request to the daemon; JSON in and out unless `raw`. A 401 opens the token prompt.
async function api(path, opts) {
  opts = opts || {};
  const init = { method: opts.method || 'GET', headers: authHeaders(opts.headers), signal: opts.signal };
  if (opts.json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = typeof opts.json === 'string' ? opts.json : JSON.stringify(opts.json);
  }
  const res = await fetch(path, init);
  if (res.status === 401) { askForToken(); throw new Unauthorized(); }
  if (opts.raw) {
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
    return res;
  }
  const text = await res.text();
  let body = null;
  if (text) { try { body = JSON.parse(text); } catch (e) { body = text; } }
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

// ---------- Token prompt ----------

let authWaiters = [];

function askForToken(message) {
  const panel = document.getElementById('auth');
  const err = document.getElementById('auth-error');
  err.hidden = !message && !sessionStorage.getItem(TOKEN_KEY);
  err.textContent = message || 'That token was refused.';
  if (!panel.hidden) return;
  panel.hidden = false;
  document.getElementById('auth-token').focus();
}

function setupAuth() {
  document.getElementById('auth-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = document.getElementById('auth-token');
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = '';
    document.getElementById('auth').hidden = true;
    updateSignOut();
    route();
    showDaemonInfo();
  });
  document.getElementById('sign-out').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    updateSignOut();
    route();
  });
  updateSignOut();
}

function updateSignOut() {
  document.getElementById('sign-out').hidden = !sessionStorage.getItem(TOKEN_KEY);
}

// ---------- Small helpers ----------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fmtNum(v, digits) {
  if (v === null || v === undefined || !isFinite(v)) return '–';
  return Number(v).toFixed(digits === undefined ? 2 : digits);
}

function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return '–';
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h ${String(m).padStart(2, '0')}m` : m ? `${m}m ${String(sec).padStart(2, '0')}s` : `${sec}s`;
}

function fmtBytes(n) {
  if (!isFinite(n)) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + units[i];
}

function badge(state) { return el('span', { class: 'badge ' + state, text: state, 'data-state': state }); }

function showError(where, e) {
  if (e instanceof Unauthorized) return;
  where.replaceChildren(el('p', { class: 'error', text: String(e.message || e) }));
}

async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest('SHA-256', buffer);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

// ---------- Router ----------

let current = null;   // the view on screen: { stop() }

function route() {
  if (current) { current.stop(); current = null; }
  const main = document.getElementById('main');
  main.replaceChildren();
  const hash = location.hash || '#/';
  document.getElementById('nav-jobs').classList.toggle('active', hash === '#/');
  document.getElementById('nav-submit').classList.toggle('active', hash.startsWith('#/submit'));
  const m = hash.match(/^#\/jobs\/([A-Za-z0-9_-]+)$/);
  if (m) current = jobView(main, m[1]);
  else if (hash.startsWith('#/submit')) current = submitView(main);
  else current = listView(main);
}

// A loop that calls `fn` now and every `ms` until stopped (never two at once).
function every(ms, fn) {
  let stopped = false, timer = null;
  const tick = async () => {
    if (stopped) return;
    try { await fn(); } catch (e) { /* shown by fn */ }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

// ---------- Job list ----------

function listView(main) {
  const status = el('p', { class: 'muted', text: 'Loading jobs…' });
  const body = el('tbody', { id: 'job-rows' });
  const table = el('table', { id: 'jobs' },
    el('thead', {}, el('tr', {},
      el('th', { text: 'Job' }), el('th', { text: 'Method' }), el('th', { text: 'State' }), el('th', { text: 'Progress' }),
      el('th', { class: 'num', text: 'Images/s' }), el('th', { class: 'num', text: 'ETA' }), el('th', { class: 'num', text: 'Best kNN' }),
      el('th', { text: 'Reason' }))),
    body);
  main.append(el('div', { class: 'row' }, el('h1', { text: 'Jobs' }), el('span', { class: 'spacer' }),
    el('a', { href: '#/submit' }, el('button', { class: 'primary', text: 'New job' }))), status, table);
  // Each poll puts in only the rows that changed (a running job's): a row is built detached and
  // compared, by its markup, with the one shown.
  let shown = new Map();   // id -> { row, key }
  const stop = every(2000, async () => {
    try {
      const page = await api('/v1/jobs?limit=100&kind=train');
      const text = page.jobs.length ? '' : 'No jobs yet: submit one.';
      if (status.textContent !== text) status.textContent = text;
      const next = new Map();
      for (const j of page.jobs) {
        const row = jobRow(j), key = row.outerHTML;
        const old = shown.get(j.id);
        next.set(j.id, old && old.key === key ? old : { row, key });
      }
      const rows = [...next.values()].map((r) => r.row), ids = [...next.keys()];
      const sameOrder = rows.length === body.children.length && ids.every((id, i) => body.children[i].dataset.id === id);
      if (!sameOrder) body.replaceChildren(...rows);
      else rows.forEach((r, i) => { if (body.children[i] !== r) body.children[i].replaceWith(r); });
      shown = next;
    } catch (e) { showError(status, e); }
  });
  return { stop };
}

function jobRow(j) {
  const p = j.progress;
  const frac = p.total_steps ? p.step / p.total_steps : 0;
  const open = () => { location.hash = '#/jobs/' + j.id; };
  return el('tr', { class: 'job-row', 'data-id': j.id, onclick: open },
    el('td', {}, el('a', { href: '#/jobs/' + j.id, text: j.name }), el('div', { class: 'muted mono', text: j.id })),
    el('td', { text: (j.spec && j.spec.method) || '' }),
    el('td', {}, badge(j.state)),
    el('td', {}, el('progress', { max: 1, value: frac }), ' ',
      el('span', { class: 'muted', text: p.total_steps ? `${p.step}/${p.total_steps}` : '' })),
    el('td', { class: 'num', text: fmtNum(p.images_per_second, 0) }),
    el('td', { class: 'num', text: j.state === 'running' ? fmtDuration(p.eta_seconds) : '–' }),
    el('td', { class: 'num', text: j.best_knn_top1 == null ? '–' : fmtNum(j.best_knn_top1) + ' %' }),
    el('td', { class: 'muted', text: j.state === 'running' ? '' : (j.reason || '') }));
}

// ---------- Charts (canvas) ----------

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(Math.round(v / step) * step);
  return out;
}

function tickLabel(v, spacing) {
  const d = spacing > 0 ? Math.max(0, Math.min(6, -Math.floor(Math.log10(spacing) + 1e-9))) : 0;
  if (Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-3 && v !== 0)) return v.toExponential(1);
  return v.toFixed(d);
}

// One chart: series of [step, value], drawn in the shared step range, linear or log y.
class Chart {
  constructor(title, series, opts) {
    this.title = title;
    this.series = series;        // [{ name, color, points: [[step, v]], dash, dots, smooth }]
    this.opts = opts || {};
    this.canvas = el('canvas', { 'data-chart': opts.key, 'data-points': '0', 'aria-label': title, role: 'img' });
    this.node = el('div', { class: 'chart' }, this.canvas);
    this.range = null;           // [from, to] steps, or null for all
    this.log = false;
    this.onSelect = null;
    let dragFrom = null;
    this.canvas.addEventListener('mousedown', (e) => { dragFrom = this.stepAt(e); });
    this.canvas.addEventListener('mouseup', (e) => {
      if (dragFrom === null) return;
      const to = this.stepAt(e);
      if (to !== null && Math.abs(to - dragFrom) >= 1 && this.onSelect) this.onSelect(Math.min(dragFrom, to), Math.max(dragFrom, to));
      dragFrom = null;
    });
  }

  stepAt(e) {
    if (!this.frame) return null;
    const r = this.canvas.getBoundingClientRect();
    const x = e.clientX - r.left;
    const { left, width, x0, x1 } = this.frame;
    return Math.round(x0 + (x1 - x0) * Math.min(Math.max((x - left) / width, 0), 1));
  }

  draw() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || 400, h = c.clientHeight || 230;
    // Unchanged since the last drawing (a kNN chart between evaluations): nothing to paint.
    const shown = JSON.stringify([w, h, dpr, this.range, this.log, this.series.map((s) => [s.points.length, s.points[0], s.points[s.points.length - 1]])]);
    if (shown === this.shown) return;
    this.shown = shown;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const L = 56, R = 12, T = 34, B = 26, pw = w - L - R, ph = h - T - B;
    // Loops rather than spreads: a long job holds more points than a call's arguments may.
    let count = 0, last = 1;
    for (const s of this.series) for (const p of s.points) { count++; if (p[0] > last) last = p[0]; }
    let x0 = this.range ? this.range[0] : 0;
    let x1 = this.range ? this.range[1] : last;
    if (x1 <= x0) x1 = x0 + 1;
    const inRange = (p) => p[0] >= x0 && p[0] <= x1 && isFinite(p[1]) && (!this.log || p[1] > 0);
    const vals = [];
    for (const s of this.series) for (const p of s.points) if (inRange(p)) vals.push(p[1]);
    const tf = (v) => (this.log ? Math.log10(v) : v);
    let y0 = vals.length ? Infinity : 0, y1 = vals.length ? -Infinity : 1;
    for (const v of vals) { const t = tf(v); if (t < y0) y0 = t; if (t > y1) y1 = t; }
    if (this.opts.zero && !this.log) y0 = Math.min(0, y0);
    if (this.opts.max !== undefined && !this.log) y1 = Math.max(y1, Math.min(this.opts.max, y1));
    if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
    const pad = (y1 - y0) * 0.05; y0 -= this.opts.zero && !this.log && y0 === 0 ? 0 : pad; y1 += pad;
    this.frame = { left: L, width: pw, x0, x1 };
    const X = (s) => L + pw * (s - x0) / (x1 - x0);
    const Y = (v) => T + ph * (1 - (tf(v) - y0) / (y1 - y0));
    // Title and legend.
    g.font = '600 12px system-ui, sans-serif'; g.fillStyle = '#1d2430'; g.textBaseline = 'alphabetic'; g.textAlign = 'left';
    g.fillText(this.title + (this.log ? ' (log)' : ''), L, 14);
    g.font = '11px system-ui, sans-serif';
    let lx = L;
    for (const s of this.series) {
      if (s.legend === false) continue;
      g.strokeStyle = s.color; g.fillStyle = s.color; g.lineWidth = 2; g.setLineDash(s.dash || []);
      if (s.dots) { g.beginPath(); g.arc(lx + 8, 25, 3, 0, 7); g.fill(); } else { g.beginPath(); g.moveTo(lx, 25); g.lineTo(lx + 16, 25); g.stroke(); }
      g.setLineDash([]); g.fillStyle = '#4b5563'; g.fillText(s.name, lx + 20, 29);
      lx += 28 + g.measureText(s.name).width + 8;
    }
    // Grid, ticks, labels.
    g.strokeStyle = '#e8ebef'; g.lineWidth = 1; g.fillStyle = '#6b7280';
    const yt = this.log ? niceTicks(Math.floor(y0), Math.ceil(y1), Math.max(1, Math.ceil(y1) - Math.floor(y0))).filter((v) => v >= y0 && v <= y1)
                        : niceTicks(y0, y1, 4).filter((v) => v >= y0 && v <= y1);
    const ySpacing = yt.length > 1 ? yt[1] - yt[0] : 1;
    g.textAlign = 'right';
    for (const t of yt) {
      const py = T + ph * (1 - (t - y0) / (y1 - y0));
      g.beginPath(); g.moveTo(L, py); g.lineTo(L + pw, py); g.stroke();
      g.fillText(this.log ? tickLabel(Math.pow(10, t), Math.pow(10, t)) : tickLabel(t, ySpacing), L - 5, py + 4);
    }
    const xt = niceTicks(x0, x1, 5).filter((v) => v >= x0 && v <= x1 && Number.isInteger(v));
    g.textAlign = 'center';
    for (const t of xt) {
      const px = X(t);
      g.beginPath(); g.moveTo(px, T); g.lineTo(px, T + ph); g.stroke();
      g.fillText(String(t), px, T + ph + 15);
    }
    g.strokeStyle = '#9aa3ad';
    g.beginPath(); g.moveTo(L, T); g.lineTo(L, T + ph); g.lineTo(L + pw, T + ph); g.stroke();
    // Series, clipped to the plot.
    g.save(); g.beginPath(); g.rect(L - 4, T - 4, pw + 8, ph + 8); g.clip();   // room for a point on the edge
    let drawn = 0;
    for (const s of this.series) {
      const pts = s.points.filter(inRange);
      g.strokeStyle = s.color; g.fillStyle = s.color; g.lineWidth = s.width || 1.5; g.setLineDash(s.dash || []);
      if (s.dots) {
        for (const p of pts) { g.beginPath(); g.arc(X(p[0]), Y(p[1]), 3, 0, 7); g.fill(); }
      } else if (pts.length) {
        g.beginPath();
        decimate(pts, X, pw).forEach((p, i) => (i ? g.lineTo(X(p[0]), Y(p[1])) : g.moveTo(X(p[0]), Y(p[1]))));
        if (pts.length === 1) g.arc(X(pts[0][0]), Y(pts[0][1]), 2, 0, 7);
        g.stroke();
      }
      if (s.count !== false) drawn += pts.length;
    }
    g.restore(); g.setLineDash([]);
    if (!count) { g.textAlign = 'center'; g.fillStyle = '#9aa3ad'; g.fillText('no points yet', L + pw / 2, T + ph / 2); }
    this.canvas.setAttribute('data-points', String(drawn));
  }
}

// A line's points cut to at most four a pixel column (its first, lowest, highest and last, in
// step order): the same picture as every point, at a cost set by the chart's width, not the
// job's length.
function decimate(pts, X, width) {
  if (pts.length <= 4 * width) return pts;
  const out = [];
  let col = null, first, lo, hi, lastP;
  const flush = () => {
    if (col === null) return;
    const keep = [first, lo, hi, lastP].sort((a, b) => a[0] - b[0]);
    for (let i = 0; i < keep.length; i++) if (i === 0 || keep[i] !== keep[i - 1]) out.push(keep[i]);
  };
  for (const p of pts) {
    const c = Math.floor(X(p[0]));
    if (c !== col) { flush(); col = c; first = lo = hi = lastP = p; continue; }
    if (p[1] < lo[1]) lo = p;
    if (p[1] > hi[1]) hi = p;
    lastP = p;
  }
  flush();
  return out;
}

function smoothed(points) {
  if (!points.length) return [];
  const alpha = Math.min(1, 2 / (Math.max(points.length * 0.02, 1) + 1));
  let m = points[0][1];
  return points.map((p) => { m += alpha * (p[1] - m); return [p[0], m]; });
}

// ---------- Server-sent events over fetch (EventSource cannot send a bearer header) ----------

async function followEvents(path, onEvent, signal) {
  const res = await api(path, { raw: true, signal, headers: { Accept: 'text/event-stream' } });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true }).replace(/\r\n/g, '\n');
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = 'message', data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data += (data ? '\n' : '') + line.slice(5).replace(/^ /, '');
      }
      if (data) { try { onEvent(name, JSON.parse(data)); } catch (e) { /* not JSON: ignored */ } }
    }
  }
}

// ---------- Job page ----------

function jobView(main, id) {
  const abort = new AbortController();
  let stopped = false;
  let job = null;
  const header = el('div', { id: 'job-header' }, el('p', { class: 'muted', text: 'Loading…' }));
  const summary = el('div', { class: 'summary', id: 'job-summary' });
  const fromInput = el('input', { type: 'number', min: 0, id: 'range-from', placeholder: 'from step' });
  const toInput = el('input', { type: 'number', min: 0, id: 'range-to', placeholder: 'to step' });
  const logBox = el('input', { type: 'checkbox', id: 'log-scale' });
  const liveNote = el('span', { class: 'muted', id: 'live-note' });
  const controls = el('div', { class: 'row controls' },
    el('label', {}, 'Steps ', fromInput), el('label', {}, '– ', toInput),
    el('button', { id: 'range-apply', text: 'Zoom', onclick: () => applyRange() }),
    el('button', { id: 'range-reset', text: 'All steps', onclick: () => { fromInput.value = ''; toInput.value = ''; applyRange(); } }),
    el('label', {}, logBox, ' log scale'), el('span', { class: 'spacer' }), liveNote);
  const chartsNode = el('div', { class: 'charts' });
  const checkpointsNode = el('div', { id: 'checkpoints' }, el('p', { class: 'muted', text: 'Loading…' }));
  const logNode = el('pre', { class: 'log', id: 'log' }, '');
  const evaluationsNode = el('div', { id: 'evaluations' });
  const curvesTitle = el('h2', { text: 'Curves' });
  const checkpointsTitle = el('h2', { text: 'Checkpoints' });
  const evaluationsTitle = el('h2', { text: 'Evaluations and embeddings' });
  main.append(header, summary, curvesTitle, controls, chartsNode,
    checkpointsTitle, checkpointsNode, evaluationsTitle, evaluationsNode, el('h2', { text: 'Log (last 200 lines)' }), logNode);
  let evaluationForm = null;

  // Series, filled from /metrics then live from /events.
  const S = {
    loss: [], chance: [], knn: [], lr: [], ips: [], acc: [], std: [],
  };
  const lossChart = new Chart('Loss', [
    { name: 'loss', color: '#aec7e8', points: S.loss, width: 1 },
    { name: 'smoothed', color: '#1f77b4', points: [], width: 2, count: false },
    { name: 'at chance', color: '#c62828', points: S.chance, dash: [5, 4], count: false },
  ], { key: 'loss' });
  const charts = [
    lossChart,
    new Chart('kNN top-1 %', [{ name: 'kNN top-1', color: '#ff7f0e', points: S.knn, dots: true }], { key: 'knn' }),
    new Chart('Learning rate', [{ name: 'lr', color: '#2ca02c', points: S.lr }], { key: 'lr', zero: true }),
    new Chart('Images/s', [{ name: 'images/s', color: '#9467bd', points: S.ips }], { key: 'ips', zero: true }),
    new Chart('Instance accuracy', [{ name: 'positive ranked first', color: '#8c564b', points: S.acc }], { key: 'acc', zero: true }),
    new Chart('Feature std', [{ name: 'std of normalized features', color: '#17becf', points: S.std }, { name: '1/√dim (healthy)', color: '#999', points: [], dash: [3, 3], count: false }], { key: 'std', zero: true }),
  ];
  chartsNode.append(...charts.map((c) => c.node));
  let lastStep = -1;
  let pending = false;
  let latest = null;   // the newest step point: the summary's live figures

  function addPoint(p) {
    if (p.kind === 'eval') {
      if (p.knn_top1 != null) S.knn.push([p.step, p.knn_top1]);
    } else {
      if (p.step <= lastStep) return;
      lastStep = p.step;
      latest = p;
      if (p.loss != null) S.loss.push([p.step, p.loss]);
      if (p.loss_at_chance != null) S.chance.push([p.step, p.loss_at_chance]);
      if (p.lr != null) S.lr.push([p.step, p.lr]);
      if (p.images_per_second != null) S.ips.push([p.step, p.images_per_second]);
      if (p.instance_accuracy != null) S.acc.push([p.step, p.instance_accuracy]);
      if (p.feature_std != null) S.std.push([p.step, p.feature_std]);
    }
  }

  // At most one redraw a second: points arrive with every step (several a second on a small
  // model), and redrawing six charts for each would cost the training machine's CPU when the
  // browser runs there.
  let lastDraw = 0;
  function redraw() {
    if (pending) return;
    pending = true;
    const wait = Math.max(0, 1000 - (performance.now() - lastDraw));
    setTimeout(() => requestAnimationFrame(() => {
      pending = false;
      lastDraw = performance.now();
      if (stopped) return;
      lossChart.series[1].points = smoothed(S.loss);
      const dim = job && job.spec && job.spec.model ? job.spec.model.dim : null;
      if (dim && S.std.length) charts[5].series[1].points = [[S.std[0][0], 1 / Math.sqrt(dim)], [S.std[S.std.length - 1][0], 1 / Math.sqrt(dim)]];
      for (const c of charts) c.draw();
      if (job) renderSummary();
      renderLog();
    }), wait);
  }

  function applyRange() {
    const a = parseInt(fromInput.value, 10), b = parseInt(toInput.value, 10);
    const range = isFinite(a) || isFinite(b) ? [isFinite(a) ? a : 0, isFinite(b) ? b : Math.max(lastStep, 1)] : null;
    for (const c of charts) { c.range = range; c.log = logBox.checked; }
    redraw();
  }
  logBox.addEventListener('change', applyRange);
  for (const c of charts) c.onSelect = (a, b) => { fromInput.value = a; toInput.value = b; applyRange(); };
  window.addEventListener('resize', redraw);

  let headerShown = null;
  function renderHeader() {
    const j = job;
    const shown = JSON.stringify([j.name, j.state, j.reason, j.kind]);
    if (shown === headerShown) return;
    headerShown = shown;
    const act = (label, path, cls, enabled) => el('button', {
      class: cls, id: 'btn-' + label.toLowerCase(), text: label, disabled: !enabled,
      onclick: async (ev) => {
        ev.target.disabled = true;
        try { job = await api(`/v1/jobs/${id}/${path}`, { method: 'POST' }); renderHeader(); renderSummary(); }
        catch (e) { ev.target.disabled = false; if (!(e instanceof Unauthorized)) alertIn(header, e); }
      },
    });
    header.replaceChildren(
      el('div', { class: 'row' },
        el('h1', { text: j.name }), badge(j.state), el('span', { class: 'muted mono', text: j.id }), el('span', { class: 'spacer' }),
        j.kind === 'train' ? act('Pause', 'pause', '', j.state === 'running' || j.state === 'queued') : null,
        j.kind === 'train' ? act('Resume', 'resume', '', j.state === 'paused') : null,
        act('Cancel', 'cancel', 'danger', !STATES_DONE.has(j.state))),
      el('p', { class: j.state === 'failed' ? 'error' : 'muted', id: 'job-reason', text: j.reason ? 'Reason: ' + j.reason : '' }));
    if (STATES_DONE.has(j.state)) liveNote.textContent = j.state;
  }

  function alertIn(node, e) {
    node.append(el('p', { class: 'error', text: String(e.message || e) }));
  }

  // The job record's figures; while it runs, the newest step point's (live, without a poll).
  // A training job's figures change in place: only the numbers that changed are set.
  let summaryShown = null, summaryValues = null;
  function renderSummary() {
    const j = job, s = j.spec || {};
    let p = j.progress, lastLoss = j.last_loss, best = j.best_knn_top1;
    if (j.kind === 'train' && j.state === 'running' && latest && latest.step >= p.step) {
      p = { step: latest.step, total_steps: latest.total_steps, epoch: latest.epoch, eta_seconds: latest.eta_seconds, images_per_second: latest.images_per_second };
      if (latest.loss != null) lastLoss = latest.loss;
    }
    for (const k of S.knn) if (best == null || k[1] > best) best = k[1];
    const item = (label, value) => el('div', {}, el('b', { text: value }), el('span', { text: label }));
    if (j.kind !== 'train') {
      const shown = JSON.stringify([j.state, p, j.result]);
      if (shown === summaryShown) return;
      summaryShown = shown;
      summaryValues = null;
      const r = j.result || {}, e = j.evaluation || {};
      summary.replaceChildren(
        item('kind', j.kind + (e.kind && e.kind !== j.kind ? ' (' + e.kind + ')' : '')),
        el('div', {}, el('b', {}, el('a', { href: '#/jobs/' + j.parent_id, text: j.parent_id })), el('span', { text: 'training job' })),
        item('checkpoint', e.checkpoint || '–'),
        item('images encoded', p.total_steps ? `${p.step} / ${p.total_steps}` : String(p.step)),
        item('ETA', j.state === 'running' ? fmtDuration(p.eta_seconds) : '–'),
        r.top1 != null ? item('top-1', fmtNum(r.top1) + ' %') : null,
        r.top5 != null ? item('top-5', fmtNum(r.top5) + ' %') : null,
        r.shape ? item('embedding', r.shape.join(' × ') + ' float32') : null);
      return;
    }
    const values = [
      ['method', s.method || '–'],
      ['step', p.total_steps ? `${p.step} / ${p.total_steps}` : String(p.step)],
      ['epoch', String(p.epoch) + (s.optim ? ' / ' + s.optim.epochs : '')],
      ['ETA', j.state === 'running' ? fmtDuration(p.eta_seconds) : '–'],
      ['last loss', fmtNum(lastLoss, 4)],
      ['best kNN top-1', best == null ? '–' : fmtNum(best) + ' %'],
      ['images/s', fmtNum(p.images_per_second, 0)],
      ['precision', j.precision || '–'],
    ];
    if (summaryValues && summaryValues.length === values.length && summary.children.length === values.length) {
      values.forEach((v, i) => { if (v[1] !== summaryValues[i][1]) summary.children[i].firstChild.textContent = v[1]; });
    } else {
      summary.replaceChildren(...values.map((v) => item(v[0], v[1])));
    }
    summaryValues = values;
  }

  async function refreshJob() {
    job = await api('/v1/jobs/' + id);
    renderHeader(); renderSummary();
    const training = job.kind === 'train';
    for (const n of [curvesTitle, controls, chartsNode, checkpointsTitle, checkpointsNode, evaluationsTitle, evaluationsNode]) n.hidden = !training;
    if (!training) renderArtifact();
  }

  // An embedding's NPY file, fetched with the token and checked against its sha256 like a checkpoint.
  function renderArtifact() {
    const r = job.result;
    if (!r || !r.artifact || document.getElementById('artifact')) return;
    const verdict = el('span', { class: 'verdict' });
    const c = { url: job.links.artifact, name: job.id + '-' + r.artifact, sha256: r.sha256 };
    const button = el('button', { text: 'Download ' + r.artifact, onclick: () => download(c, verdict, button) });
    summary.after(el('p', { id: 'artifact', class: 'row' }, button, el('span', { class: 'muted', text: fmtBytes(r.bytes) }), verdict));
  }

  async function refreshEvaluations(checkpoints) {
    const list = (await api(`/v1/jobs/${id}/evaluations`)).jobs;
    const rows = list.map((e) => el('tr', { 'data-evaluation': e.id },
      el('td', {}, el('a', { href: '#/jobs/' + e.id, text: e.evaluation ? e.evaluation.kind : e.kind })),
      el('td', {}, badge(e.state)),
      el('td', { class: 'mono', text: e.evaluation ? e.evaluation.checkpoint : '' }),
      el('td', { text: e.state === 'running' ? `${e.progress.step}/${e.progress.total_steps} images` : (e.reason || '') })));
    const table = list.length ? el('table', { id: 'evaluation-table' },
      el('thead', {}, el('tr', {}, el('th', { text: 'Kind' }), el('th', { text: 'State' }), el('th', { text: 'Checkpoint' }), el('th', { text: 'Result' }))),
      el('tbody', {}, rows)) : el('p', { class: 'muted', text: 'None yet.' });
    if (!evaluationForm && checkpoints && checkpoints.length) evaluationForm = makeEvaluationForm(checkpoints);
    evaluationsNode.replaceChildren(table, evaluationForm || el('p', { class: 'muted', text: 'A checkpoint is needed first.' }));
    return list.some((e) => !STATES_DONE.has(e.state));
  }

  // kNN, linear or embedding of a checkpoint; the data is the training job's evaluation split by default.
  function makeEvaluationForm(checkpoints) {
    const s = job.spec || {};
    const source = s.eval ? { format: s.eval.format, path: s.eval.path, split: s.eval.split, limit: s.eval.limit }
                          : { format: s.data.format, path: s.data.path, split: 'test', limit: null };
    const kind = el('select', { id: 'evaluation-kind' }, ['knn', 'linear', 'embedding'].map((k) => el('option', { value: k, text: k })));
    const checkpoint = el('select', { id: 'evaluation-checkpoint' }, checkpoints.slice().reverse().map((c) => el('option', { value: c.name, text: c.name })));
    const data = el('input', { id: 'evaluation-data', class: 'mono', size: 70, value: JSON.stringify(source) });
    const message = el('span', { id: 'evaluation-message' });
    const go = el('button', { id: 'evaluation-submit', text: 'Run', onclick: async () => {
      message.className = ''; message.textContent = '';
      let parsed;
      try { parsed = JSON.parse(data.value); } catch (e) { message.className = 'error'; message.textContent = 'data is not valid JSON'; return; }
      const embedding = kind.value === 'embedding';
      const body = embedding ? { checkpoint: checkpoint.value, data: parsed } : { kind: kind.value, checkpoint: checkpoint.value, data: parsed };
      go.disabled = true;
      try {
        await api(`/v1/jobs/${id}/${embedding ? 'embeddings' : 'evaluations'}`, { method: 'POST', json: body });
        pollEvaluations();
      } catch (e) {
        if (!(e instanceof Unauthorized)) {
          const details = (e.body && e.body.error && e.body.error.details) || [];
          message.className = 'error';
          message.textContent = e.message + (details.length ? ': ' + details.map((d) => d.field + ' ' + d.problem).join('; ') : '');
        }
      } finally { go.disabled = false; }
    } });
    return el('div', { class: 'row controls' }, kind, checkpoint, el('label', {}, 'data ', data), go, message);
  }

  let evaluationsPoll = null;
  function pollEvaluations() {
    if (evaluationsPoll) return;
    evaluationsPoll = every(3000, async () => {
      const open = await refreshEvaluations(lastCheckpoints).catch(() => false);
      if (!open && evaluationsPoll) { evaluationsPoll(); evaluationsPoll = null; }
    });
  }
  let lastCheckpoints = [];

  async function refreshCheckpoints() {
    const list = (await api(`/v1/jobs/${id}/checkpoints`)).checkpoints;
    const first = !lastCheckpoints.length && list.length;
    lastCheckpoints = list;
    if (first || evaluationForm === null) refreshEvaluations(list).then((open) => { if (open) pollEvaluations(); }).catch(() => {});
    if (!list.length) { checkpointsNode.replaceChildren(el('p', { class: 'muted', text: 'No checkpoints yet.' })); return; }
    const rows = list.map((c) => {
      const verdict = el('span', { class: 'verdict' });
      const button = el('button', { text: 'Download', 'data-name': c.name, onclick: () => download(c, verdict, button) });
      return el('tr', { 'data-checkpoint': c.name },
        el('td', { class: 'mono', text: c.name }), el('td', { class: 'num', text: c.epoch }), el('td', { class: 'num', text: c.step }),
        el('td', { class: 'num', text: c.knn_top1 == null ? '–' : fmtNum(c.knn_top1) + ' %' }),
        el('td', { class: 'num', text: fmtBytes(c.bytes) }),
        el('td', {}, el('span', { class: 'mono sha', title: c.sha256, 'data-sha256': c.sha256, text: c.sha256 })),
        el('td', {}, button, ' ', verdict));
    });
    checkpointsNode.replaceChildren(el('table', { id: 'checkpoint-table' },
      el('thead', {}, el('tr', {}, el('th', { text: 'Name' }), el('th', { class: 'num', text: 'Epoch' }), el('th', { class: 'num', text: 'Step' }),
        el('th', { class: 'num', text: 'kNN' }), el('th', { class: 'num', text: 'Size' }), el('th', { text: 'sha256' }), el('th', { text: '' }))),
      el('tbody', {}, rows)));
  }

  // Fetched with the token (a plain link could not carry it), checked against the listed sha256, then saved.
  async function download(c, verdict, button) {
    button.disabled = true;
    verdict.className = 'verdict muted';
    verdict.textContent = 'downloading…';
    try {
      const res = await api(c.url, { raw: true });
      const bytes = await res.arrayBuffer();
      const sum = await sha256Hex(bytes);
      const ok = sum === c.sha256;
      verdict.className = 'verdict ' + (ok ? 'ok' : 'error');
      verdict.textContent = ok ? 'sha256 matches' : 'sha256 differs: ' + sum;
      verdict.setAttribute('data-ok', String(ok));
      const url = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
      const a = el('a', { href: url, download: c.name, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (e) {
      if (!(e instanceof Unauthorized)) { verdict.className = 'verdict error'; verdict.textContent = String(e.message || e); }
    } finally {
      button.disabled = false;
    }
  }

  // The log's last 200 lines: fetched whole when the stream opens (or once, for a finished job)
  // and on each state change, then followed line by line from `log` events; drawn with the charts.
  let logLines = [], logDirty = false;
  async function refreshLog() {
    const res = await api(`/v1/jobs/${id}/logs?tail=200`, { raw: true });
    logLines = (await res.text()).split('\n').filter((l) => l);
    logDirty = true;
    renderLog();
  }
  function addLogLine(line) {
    // A line written while the whole log was being fetched may come both ways.
    if (logLines.slice(-20).includes(line)) return;
    logLines.push(line);
    if (logLines.length > 200) logLines.splice(0, logLines.length - 200);
    logDirty = true;
  }
  function renderLog() {
    if (!logDirty) return;
    logDirty = false;
    const text = logLines.length ? logLines.join('\n') + '\n' : '(empty)';
    if (text === logNode.textContent) return;   // unchanged: no relayout
    const atBottom = logNode.scrollTop + logNode.clientHeight >= logNode.scrollHeight - 4;
    logNode.textContent = text;
    if (atBottom) logNode.scrollTop = logNode.scrollHeight;
  }

  // Metric points after the last one held (all of them the first time), then live events until
  // the job ends; a dropped stream is followed again after catching up.
  async function catchUp() {
    for (;;) {
      const page = await api(`/v1/jobs/${id}/metrics?after_step=${lastStep}&max_points=100000`);
      for (const p of page.points) if (p.kind === 'eval' ? !S.knn.some((k) => k[0] === p.step) : true) addPoint(p);
      if (page.points.length < 100000) break;
    }
    redraw();
  }

  async function live() {
    while (!stopped) {
      try {
        await catchUp();
        if (job && STATES_DONE.has(job.state)) { liveNote.textContent = 'finished'; refreshLog().catch(() => {}); return; }
        liveNote.textContent = '● live';
        let opened = false;
        await followEvents(`/v1/jobs/${id}/events?interval_ms=${LIVE_INTERVAL_MS}`, (name, data) => {
          // The stream's first event is the job's state now: the log is fetched whole once the
          // stream follows it (no line falls between); the rest only if the state moved on.
          const first = !opened;
          opened = true;
          if (name === 'metric' || name === 'eval') { addPoint(data); redraw(); }
          else if (name === 'log') { addLogLine(data.line); redraw(); }
          else if (name === 'state') {
            refreshLog().catch(() => {});
            if (first && job && data.state === job.state) return;
            refreshJob().catch(() => {});
            if (job && job.kind === 'train') refreshCheckpoints().catch(() => {});
          } else if (name === 'checkpoint') refreshCheckpoints().catch(() => {});
        }, abort.signal);
        await refreshJob();
      } catch (e) {
        if (stopped || e instanceof Unauthorized) return;
        liveNote.textContent = 'reconnecting…';
      }
      if (!stopped) await new Promise((r) => setTimeout(r, 1500));
    }
  }

  // Nothing polls: the live stream brings points, log lines and state changes; the job record,
  // the log and the checkpoints are fetched again when its events say they changed.
  (async () => {
    try {
      await refreshJob();
      if (job.kind === 'train') refreshCheckpoints().catch((e) => showError(checkpointsNode, e));
      live();
    } catch (e) {
      showError(header, e);
    }
  })();

  return {
    stop() {
      stopped = true;
      abort.abort();
      if (evaluationsPoll) evaluationsPoll();
      window.removeEventListener('resize', redraw);
    },
  };
}

// ---------- Submit form ----------

function submitView(main) {
  let stopped = false;
  let timer = null;
  let seq = 0;
  const methods = ['moco_v2', 'moco_v1', 'simclr', 'moco_v3'];
  const preset = el('select', { id: 'preset' }, methods.map((m) => el('option', { value: m, text: m })));
  const editor = el('textarea', { class: 'spec', id: 'spec', spellcheck: 'false', autocomplete: 'off' });
  const verdict = el('div', { id: 'dry-run' }, el('p', { class: 'muted', text: 'Pick a preset, then edit.' }));
  const submitButton = el('button', { class: 'primary', id: 'submit', text: 'Submit job', disabled: true });
  const submitError = el('div', { id: 'submit-error' });
  main.append(
    el('h1', { text: 'New job' }),
    el('p', { class: 'muted', text: 'The spec as JSON. Omitted fields take the method\'s preset; every change is checked by a dry run.' }),
    el('div', { class: 'submit-grid' },
      el('div', {}, el('div', { class: 'row controls' }, el('label', {}, 'Preset ', preset),
        el('button', { id: 'load-preset', text: 'Load preset', onclick: loadPreset })), editor),
      el('div', {}, el('div', { class: 'card' }, el('h2', { text: 'Check' }), verdict, el('div', { class: 'row' }, submitButton), submitError))));

  async function loadPreset() {
    try {
      const spec = await api('/v1/presets/' + preset.value);
      editor.value = JSON.stringify(spec, null, 2);
      check();
    } catch (e) { showError(verdict, e); }
  }

  function scheduleCheck() {
    clearTimeout(timer);
    timer = setTimeout(check, 350);
  }

  async function check() {
    const mine = ++seq;
    submitButton.disabled = true;
    try {
      JSON.parse(editor.value);
    } catch (e) {
      editor.classList.add('invalid');
      verdict.replaceChildren(el('p', { class: 'error', id: 'json-error', text: 'Not valid JSON: ' + e.message }));
      return;
    }
    editor.classList.remove('invalid');
    try {
      const r = await api('/v1/jobs?dry_run=true', { method: 'POST', json: editor.value });
      if (mine !== seq || stopped) return;
      verdict.replaceChildren(
        el('p', { class: 'ok', id: 'spec-valid', text: 'Valid.' }),
        el('p', {}, 'Memory estimate: ', el('b', { id: 'memory-estimate', text: fmtBytes(r.estimate.memory_bytes) })),
        el('p', {}, 'Learning rate after scaling: ', el('b', { text: String(r.estimate.learning_rate) })),
        r.checks.queue_multiple_of_batch === false ? el('p', { class: 'error', text: 'The queue is not a multiple of the batch size.' }) : null);
      submitButton.disabled = false;
    } catch (e) {
      if (mine !== seq || stopped || e instanceof Unauthorized) return;
      const details = (e.body && e.body.error && e.body.error.details) || [];
      verdict.replaceChildren(
        el('p', { class: 'error', text: e.message }),
        el('ul', { class: 'issues', id: 'spec-issues' }, details.map((d) =>
          el('li', { 'data-field': d.field }, el('code', { text: d.field }), ' ', d.problem))));
    }
  }

  submitButton.addEventListener('click', async () => {
    submitButton.disabled = true;
    submitError.replaceChildren();
    try {
      const job = await api('/v1/jobs', { method: 'POST', json: editor.value });
      location.hash = '#/jobs/' + job.id;
    } catch (e) {
      if (!(e instanceof Unauthorized)) submitError.replaceChildren(el('p', { class: 'error', text: e.message }));
      submitButton.disabled = false;
    }
  });
  editor.addEventListener('input', scheduleCheck);
  loadPreset();
  return { stop() { stopped = true; clearTimeout(timer); } };
}

// ---------- Start ----------

async function showDaemonInfo() {
  try {
    const info = await api('/v1/info');
    document.getElementById('daemon-info').textContent =
      `v${info.version} · ${info.threads} threads · ${info.kernel_isa}` + (info.bf16 && info.bf16.supported ? ' · bf16' : '');
  } catch (e) { /* the token prompt is up, or the daemon is away */ }
}

window.addEventListener('hashchange', route);
document.addEventListener('DOMContentLoaded', () => {
  setupAuth();
  const meta = document.querySelector('meta[name="mocod-auth"]');
  if (meta && meta.content === 'on' && !sessionStorage.getItem(TOKEN_KEY)) {
    // Ask first: no request is sent (and refused) before there is a token.
    askForToken();
    return;
  }
  route();
  showDaemonInfo();
});
