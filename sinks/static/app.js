// cvm dashboard: fetches /api/* every few seconds and draws the page (index.html) with Chart.js (static/vendor).
// Every panel draws itself from one endpoint and shows "no data" or the endpoint's one-line error on its own, so an
// empty table or a failing query never blanks the rest of the page. The customer view is a drawer opened by the
// URL hash: #customer=<id>.
"use strict";

const REFRESH_MS = 5000;
const css = getComputedStyle(document.documentElement);
const color = (name) => css.getPropertyValue(name).trim();
const TIER = { A: color("--tier-a"), B: color("--tier-b"), C: color("--tier-c") };
const BAND = { low: color("--risk-low"), medium: color("--risk-medium"), high: color("--risk-high"), unscored: color("--muted") };
const BAND_LABEL = { low: "Low", medium: "Medium", high: "High", unscored: "Not scored" };
const $ = (sel, root = document) => root.querySelector(sel);

let currency = "EUR";
let token = sessionStorage.getItem("cvm-token") || "";
const state = { highRisk: null, charts: {} };

// --- formatting ------------------------------------------------------------------------------------------------------

const num = (n, digits = 0) =>
  n === null || n === undefined ? "–" : Number(n).toLocaleString("en", { maximumFractionDigits: digits });
function money(n, compact = true) {
  if (n === null || n === undefined) return "–";
  // Compact for figures read at a glance (€1.2M, €340), exact cents where a single amount is shown.
  const big = Math.abs(n) >= 1000;
  const opts = compact
    ? { style: "currency", currency, notation: big ? "compact" : "standard", minimumFractionDigits: 0, maximumFractionDigits: big ? 1 : 0 }
    : { style: "currency", currency, minimumFractionDigits: 2, maximumFractionDigits: 2 };
  try {
    return Number(n).toLocaleString("en", opts);
  } catch (e) { // an unknown currency code in the data
    return num(n, 2) + " " + currency;
  }
}
const pct = (x, digits = 0) => (x === null || x === undefined ? "–" : (100 * x).toFixed(digits) + "%");
const parseTime = (s) => (s ? new Date(s) : null);
function ago(s) {
  const t = parseTime(s);
  if (!t) return "–";
  const secs = Math.max(0, (Date.now() - t.getTime()) / 1000);
  if (secs < 60) return Math.round(secs) + " s ago";
  if (secs < 3600) return Math.round(secs / 60) + " min ago";
  if (secs < 86400) return Math.round(secs / 3600) + " h ago";
  if (secs < 3 * 86400) return Math.round(secs / 86400) + " d ago";
  return day(s); // replayed history: a date reads better than "511 d ago"
}
function day(s) { return s ? new Date(s).toLocaleDateString("en", { day: "numeric", month: "short", year: "numeric", timeZone: "UTC" }) : "–"; }
const stamp = (s) => (s ? new Date(s).toISOString().replace("T", " ").slice(0, 16) + " UTC" : "–");
const bandOf = (p, low = 0.3, high = 0.6) => (p === null || p === undefined ? null : p < low ? "low" : p < high ? "medium" : "high");

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}
const tierChip = (t) => el("span", { class: "tier " + (t || "none"), text: t || "–", title: t ? `value tier ${t}` : "not rated yet" });
function churnCell(p) {
  if (p === null || p === undefined) return el("span", { class: "churn", text: "–" });
  const band = bandOf(p);
  return el("span", { class: "churn band-" + band },
    el("span", { class: "bar" }, el("i", { style: `width:${Math.round(100 * p)}%;background:${BAND[band]}` })),
    el("b", { text: pct(p) }));
}

// --- fetching --------------------------------------------------------------------------------------------------------

class HttpError extends Error {}

async function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const res = await fetch(path, { cache: "no-store", headers });
  let body = null;
  try { body = await res.json(); } catch (e) { /* not JSON: reported below */ }
  if (res.status === 401) $("#token-bar").hidden = false;
  if (!res.ok) throw new HttpError((body && body.error) || `HTTP ${res.status}`);
  return body;
}

// Runs one panel: fetch, draw, and show its error (or clear it) in the card.
async function panel(card, path, draw) {
  const error = $(".error", card);
  try {
    draw(await api(path));
    if (error) error.hidden = true;
    return true;
  } catch (e) {
    if (error) { error.textContent = e.message; error.hidden = false; }
    return false;
  }
}
const setEmpty = (card, empty) => { $(".empty", card).hidden = !empty; };

// --- Chart.js setup --------------------------------------------------------------------------------------------------

Chart.defaults.font.family = color("--font");
Chart.defaults.font.size = 12;
Chart.defaults.color = color("--muted");
Chart.defaults.animation = false;
Chart.defaults.maintainAspectRatio = false;
Chart.defaults.plugins.legend.labels.boxWidth = 10;
Chart.defaults.plugins.legend.labels.boxHeight = 10;
const GRID = { color: "#eef2f7" };

// Draws a dashed vertical line and dot at the whale curve's peak (the chart's `peak` option, in data units).
const peakMarker = {
  id: "peakMarker",
  afterDatasetsDraw(chart, args, opts) {
    if (!opts || opts.x === null || opts.x === undefined) return;
    const { ctx, chartArea, scales } = chart;
    const x = scales.x.getPixelForValue(opts.x), y = scales.y.getPixelForValue(opts.y);
    ctx.save();
    ctx.strokeStyle = color("--ink-2");
    ctx.setLineDash([4, 4]);
    ctx.beginPath(); ctx.moveTo(x, chartArea.bottom); ctx.lineTo(x, y); ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = color("--ink"); ctx.beginPath(); ctx.arc(x, y, 4.5, 0, 2 * Math.PI); ctx.fill();
    ctx.restore();
  },
};

function chart(id, config) {
  if (!state.charts[id]) state.charts[id] = new Chart(document.getElementById(id), config);
  return state.charts[id];
}

// --- KPIs ------------------------------------------------------------------------------------------------------------

function kpi(id, value, sub, alarm = false) {
  const card = document.getElementById(id);
  $(".value", card).textContent = value;
  const s = $(".sub", card);
  s.replaceChildren(...(Array.isArray(sub) ? sub : [sub || "\u00a0"]));
  s.title = s.textContent; // the whole line on hover, when the card is too narrow for it
  card.classList.toggle("alarm", alarm);
}
function change(now, before, label) {
  if (!before) return label;
  const d = (now - before) / Math.abs(before);
  const size = pct(Math.abs(d), Math.abs(d) < 0.1 ? 1 : 0);
  return [el("span", { class: d >= 0 ? "pos" : "neg", text: (d >= 0 ? "▲ " : "▼ ") + size }), " " + label];
}

function drawKpis(k) {
  currency = k.currency || currency;
  const p = k.period;
  const span = !p.end ? "no transactions yet" : p.days ? `${p.days} days to ${day(p.end)}` : `since ${day(p.start)}`;
  kpi("kpi-customers", num(k.customers), `${num(k.active_customers)} active · ${num(k.tier_a)} tier A`);
  kpi("kpi-revenue", money(k.revenue),
    p.end && p.days && k.previous_revenue ? change(k.revenue, k.previous_revenue, `vs previous ${p.days} d`) : span);
  kpi("kpi-margin", money(k.gross_margin), k.revenue ? `${pct(k.gross_margin / k.revenue, 1)} of revenue` : span);
  kpi("kpi-alerts", num(k.alerts_today),
    k.latest_alert_time ? `${num(k.alerts_total)} in all · latest ${ago(k.latest_alert_time)}` : "none raised yet",
    k.alerts_today > 0);
  $("#kpi-alerts").title = k.alerts_day
    ? `Alerts raised by events of ${day(k.alerts_day)} (UTC), the stream's latest day` : "";
  const w = k.writer;
  kpi("kpi-flow", k.events_per_s === null ? "–" : num(k.events_per_s, 1),
    !w ? "no writer in this process" : w.paused ? "PAUSED: ClickHouse refuses inserts" : `lag ${num(k.lag)} records`,
    Boolean(w && (w.paused || w.last_error)));
  kpi("kpi-auc", k.roc_auc === null ? "–" : k.roc_auc.toFixed(3),
    k.roc_auc === null ? "no evaluation yet" : `model v${k.model_version} · ${ago(k.model_time)}`);
  $("#kpi-revenue h2").textContent = "Revenue" + (p.days ? ` · ${p.days} d` : " · all");
  $("#kpi-margin h2").textContent = "Gross margin" + (p.days ? ` · ${p.days} d` : " · all");
}

// --- whale curve -----------------------------------------------------------------------------------------------------

function drawWhale(w) {
  const card = $(".card.whale");
  setEmpty(card, w.customers === 0);
  const note = $("#whale-note");
  if (w.peak && w.peak.pct_of_total !== null) {
    const bottom = 1 - w.peak.share;
    note.replaceChildren("Top ", el("b", { text: pct(w.peak.share) }), " of customers carry ",
      el("b", { text: pct(w.peak.pct_of_total / 100) }), " of profit",
      bottom > 0 && w.loss < 0 ? "; the other " : "", bottom > 0 && w.loss < 0 ? el("b", { text: pct(bottom) }) : "",
      bottom > 0 && w.loss < 0 ? ` destroy ${money(-w.loss)}` : "");
    note.title = `${num(w.customers)} customers, total profit ${money(w.total_profit, false)}`;
  } else if (w.customers) {
    note.textContent = `${num(w.customers)} customers, total profit ${money(w.total_profit)}`;
  }
  const data = w.points.map((p) => ({ x: 100 * p.share, y: p.cumulative_profit }));
  const c = chart("whale-chart", {
    type: "line",
    data: { datasets: [{
      label: "Cumulative profit", data, borderColor: color("--tier-a"), borderWidth: 2, pointRadius: 0,
      fill: { target: "origin", above: "rgba(37, 99, 235, .10)", below: "rgba(220, 38, 38, .12)" }, tension: 0,
    }] },
    options: {
      parsing: false,
      scales: {
        x: { type: "linear", min: 0, max: 100, grid: GRID, title: { display: true, text: "share of customers, most profitable first" },
          ticks: { callback: (v) => v + "%", stepSize: 20 } },
        y: { grid: GRID, ticks: { callback: (v) => money(v) }, title: { display: true, text: "cumulative profit" } },
      },
      plugins: {
        legend: { display: false },
        tooltip: { callbacks: {
          title: (items) => `top ${items[0].parsed.x.toFixed(1)}% of customers`,
          label: (item) => ` cumulative profit ${money(item.parsed.y)}`,
        } },
        peakMarker: {},
      },
    },
    plugins: [peakMarker],
  });
  c.data.datasets[0].data = data;
  c.options.plugins.peakMarker = w.peak ? { x: 100 * w.peak.share, y: w.peak.cumulative_profit } : {};
  c.update("none");
}

// --- value × risk matrix ---------------------------------------------------------------------------------------------

function tint(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

function drawMatrix(m) {
  const card = $(".card.matrix");
  setEmpty(card, m.customers === 0);
  const cells = {};
  let maxValue = 0;
  for (const c of m.cells) { cells[c.tier + "|" + c.band] = c; maxValue = Math.max(maxValue, c.value_at_risk); }
  const head = el("tr", {}, el("th", { text: "" }),
    ...m.bands.map((b) => el("th", { style: `color:${BAND[b.name]}` }, BAND_LABEL[b.name] + (b.from === null ? "" : " risk"),
      el("small", { text: b.from === null ? "no churn model yet" : b.name === "high" ? `≥ ${b.from}` : `${b.from}–${b.to}` }))));
  const rows = m.tiers.map((t) => el("tr", {}, el("th", {}, tierChip(t)), ...m.bands.map((b) => {
    const c = cells[t + "|" + b.name];
    const strength = maxValue > 0 ? 0.08 + 0.42 * (c.value_at_risk / maxValue) : 0.08;
    return el("td", {
      class: t === "A" && b.name === "high" && c.customers > 0 ? "focus" : null,
      style: `background:${tint(BAND[b.name], c.customers ? strength : 0.04)}`,
      title: `${c.customers} customers, tier ${t || "unrated"}, ${b.name} churn risk: ${money(c.value_at_risk, false)} ` +
        `at stake, expected loss ${money(c.expected_loss, false)}`,
    }, el("span", { class: "n", text: num(c.customers) }), el("span", { class: "v", text: money(c.value_at_risk) }));
  })));
  const high = m.cells.filter((c) => c.band === "high");
  state.highRisk = {
    value: high.reduce((a, c) => a + c.value_at_risk, 0),
    loss: high.reduce((a, c) => a + c.expected_loss, 0),
    customers: high.reduce((a, c) => a + c.customers, 0),
  };
  $("#matrix").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
  kpi("kpi-risk", money(state.highRisk.value),
    `${num(state.highRisk.customers)} high-risk customers`, state.highRisk.value > 0);
  $("#kpi-risk").title = `CLV (else profit) of customers with churn probability ≥ ${pct(m.bands[2].from)}; ` +
    `expected loss ${money(state.highRisk.loss, false)}`;
}

// --- at-risk list ----------------------------------------------------------------------------------------------------

function drawAlerts(a) {
  const card = $(".card.alerts");
  setEmpty(card, a.count === 0);
  const rows = a.alerts.map((x) => el("tr", { "data-customer": x.customer_id },
    el("td", { class: "when", title: stamp(x.alert_time), text: ago(x.alert_time) }),
    el("td", { class: "cust" }, el("a", { href: "#customer=" + encodeURIComponent(x.customer_id), text: x.customer_id })),
    el("td", {}, tierChip(x.value_tier)),
    el("td", { class: "num", text: money(x.value) }),
    el("td", {}, churnCell(x.churn_probability)),
    el("td", {}, el("span", { class: "sev " + x.severity, text: x.severity, title: "rule: " + x.rule })),
    el("td", { class: "reasons" }, ...x.reasons.map((r) => el("span", { class: "reason", text: r }))),
  ));
  $("#alerts tbody").replaceChildren(...rows);
  $("#alerts-note").textContent = a.count
    ? `Latest ${a.count} alerts, newest first: click a customer for its history`
    : "Latest alerts, newest first";
}

// --- segment migration -----------------------------------------------------------------------------------------------

function drawMigration(m) {
  const card = $(".card.migration");
  setEmpty(card, m.days.length === 0);
  const top = [...m.flows].sort((a, b) => b.customers - a.customers).slice(0, 2)
    .map((f) => `${f.from}→${f.to} ${num(f.customers)}`).join(", ");
  $("#migration-note").textContent = m.moved
    ? `${num(m.moved)} moves in 90 days; most ${top}`
    : "Tier changes per day (event time)";
  const labels = m.days.map((d) => d.day);
  const c = chart("migration-chart", {
    type: "bar",
    data: { labels, datasets: [
      { label: "up a tier", data: [], backgroundColor: color("--up"), stack: "s" },
      { label: "down a tier", data: [], backgroundColor: color("--down"), stack: "s" },
    ] },
    options: {
      scales: {
        x: { stacked: true, grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 14,
          callback(v) { return new Date(this.getLabelForValue(v)).toLocaleDateString("en", { day: "numeric", month: "short" }); } } },
        y: { stacked: true, grid: GRID, ticks: { precision: 0, callback: (v) => Math.abs(v) } },
      },
      plugins: {
        legend: { position: "top", align: "end" },
        tooltip: { callbacks: { label: (i) => ` ${i.dataset.label}: ${Math.abs(i.parsed.y)}` } },
      },
    },
  });
  c.data.labels = labels;
  c.data.datasets[0].data = m.days.map((d) => d.up);
  c.data.datasets[1].data = m.days.map((d) => -d.down);
  c.update("none");
}

// --- model quality ---------------------------------------------------------------------------------------------------

const METRICS = {
  roc_auc: { label: "ROC AUC", color: color("--tier-a"), axis: "y" },
  log_loss: { label: "log loss", color: color("--down"), axis: "y2" },
  brier: { label: "Brier", color: color("--risk-medium"), axis: "y2", hidden: true },
  ece: { label: "ECE", color: color("--muted"), axis: "y2", hidden: true },
};

function drawModel(m) {
  const card = $(".card.model");
  // The four headline metrics; the rest (windows, drift, counts) stay in /api/model for analysts.
  const names = Object.keys(m.series).filter((name) => METRICS[name]);
  setEmpty(card, names.length === 0);
  const latest = Object.entries(m.latest).filter(([k]) => METRICS[k])
    .map(([k, v]) => `${METRICS[k].label} ${v.toFixed(3)}`).join(" · ");
  $("#model-note").textContent = latest ? `Latest: ${latest}` : "Churn model, evaluated on labels as they mature";
  const datasets = names.map((name) => {
    const look = METRICS[name];
    return {
      label: look.label, hidden: Boolean(look.hidden), yAxisID: look.axis, borderColor: look.color,
      backgroundColor: look.color, borderWidth: 2, pointRadius: m.series[name].length > 40 ? 0 : 2.5, tension: 0.2,
      data: m.series[name].map((p) => ({ x: new Date(p.time).getTime(), y: p.value })),
    };
  });
  const c = chart("model-chart", {
    type: "line",
    data: { datasets },
    options: {
      parsing: false,
      scales: {
        x: { type: "linear", grid: GRID, ticks: { maxTicksLimit: 5, maxRotation: 0,
          callback: (v) => new Date(v).toLocaleDateString("en", { day: "numeric", month: "short" }) } },
        y: { position: "left", suggestedMin: 0.5, suggestedMax: 1, grid: GRID, title: { display: true, text: "AUC" } },
        y2: { position: "right", beginAtZero: true, grid: { display: false }, title: { display: true, text: "loss" } },
      },
      plugins: {
        legend: { position: "top", align: "end" },
        tooltip: { callbacks: { title: (items) => stamp(new Date(items[0].parsed.x).toISOString()) } },
      },
    },
  });
  // Keep the legend's hidden choices across refreshes.
  const hidden = Object.fromEntries(c.data.datasets.map((d, i) => [d.label, !c.isDatasetVisible(i)]));
  for (const d of datasets) if (d.label in hidden) d.hidden = hidden[d.label];
  c.data.datasets = datasets;
  c.update("none");
}

// --- alert outcomes --------------------------------------------------------------------------------------------------

const RULE_COLOR = { high_value_at_risk: color("--risk-high"), cancellation_request: color("--risk-medium"), p_alive_drop: color("--tier-b") };
const ruleName = (r) => r.replace(/_/g, " ");
const days = (d) => (d === null || d === undefined ? "–" : Math.round(d) + " d");
// A month's share is drawn once its outcomes are mostly known (at most a tenth pending): before, it is the share of
// the few that resolved first, which says little.
const known = (m, value) => (m.resolved > 0 && m.pending <= 0.1 * (m.resolved + m.pending) ? value : null);

function drawOutcomes(o) {
  const card = $(".card.outcomes");
  setEmpty(card, o.rules.length === 0);
  const base = o.base_rate.window;
  const w = o.window;
  const span = w.start_ms === null ? "" : `${day(new Date(w.start_ms).toISOString())} – ${day(new Date(w.end_ms).toISOString())}`;
  const s = o.settings;
  $("#outcomes-note").replaceChildren(
    "Window ", el("b", { text: span || "–" }), " · tier-A base rate ", el("b", { text: pct(base.base_rate, 1) }),
    ` · left: no sign of life for ${s.silence_days} d, or asked to cancel and no purchase in ${s.grace_days} d`);
  $("#outcomes-note").title = `Leaving observed in event time, as of ${stamp(o.as_of)}. An alert is right when its ` +
    `customer left within ${s.horizon_days} days after it; outcomes not known yet are pending.`;
  const rows = o.rules.map((r) => {
    const x = r.window;
    const lift = x.lift === null ? "–" : x.lift.toFixed(1) + "×";
    return el("tr", { "data-rule": r.rule },
      el("td", { class: "rule" }, el("i", { class: "dot", style: `background:${RULE_COLOR[r.rule] || color("--muted")}` }), ruleName(r.rule)),
      el("td", { class: "num", text: num(x.alerts) }),
      el("td", { class: "num", title: `${x.left} left, ${x.late} already gone when alerted, ${x.stayed} stayed, ${x.pending} pending` },
        num(x.resolved), x.pending ? el("small", { text: `+${num(x.pending)} pending` }) : null),
      el("td", { class: "num precision", text: pct(x.precision, 1) }),
      el("td", { class: "num lift" + (x.lift !== null && x.lift >= 3 ? " good" : ""), text: lift }),
      el("td", { class: "num", text: num(x.leavers) }),
      el("td", { class: "num caught", title: `${x.caught} of ${x.leavers} alerted 30 days or more before leaving`, text: pct(x.caught_share) }),
      el("td", { class: "num lead", text: days(x.median_lead_days) }));
  });
  $("#outcomes tbody").replaceChildren(...rows);
  const months = o.base_rate.months.map((m) => m.month);
  const datasets = o.rules.filter((r) => r.months.some((m) => known(m, 1))).map((r) => ({
    label: "precision · " + ruleName(r.rule), borderColor: RULE_COLOR[r.rule] || color("--muted"),
    backgroundColor: RULE_COLOR[r.rule] || color("--muted"), borderWidth: 2, pointRadius: 2.5, tension: 0.2, spanGaps: true,
    data: r.months.map((m) => known(m, m.precision)), pending: r.months.map((m) => m.pending),
  }));
  datasets.push({ label: "tier-A base rate", borderColor: color("--ink-2"), backgroundColor: color("--ink-2"), borderDash: [5, 4],
    borderWidth: 1.5, pointRadius: 0, data: o.base_rate.months.map((m) => known(m, m.base_rate)),
    pending: o.base_rate.months.map((m) => m.pending) });
  const c = chart("outcomes-chart", {
    type: "line",
    data: { labels: months, datasets: [] },
    options: {
      scales: {
        x: { grid: { display: false } },
        y: { beginAtZero: true, grid: GRID, ticks: { callback: (v) => pct(v) }, title: { display: true, text: "left within 90 d" } },
      },
      plugins: {
        legend: { position: "top", align: "end" },
        tooltip: { callbacks: { label: (i) => ` ${i.dataset.label}: ${pct(i.parsed.y, 1)}` +
          (i.dataset.pending[i.dataIndex] ? ` (${i.dataset.pending[i.dataIndex]} pending)` : "") } },
      },
    },
  });
  c.data.labels = months;
  c.data.datasets = datasets;
  c.update("none");
}

// --- why customers leave ---------------------------------------------------------------------------------------------

const SIGNAL_LABEL = {
  cancellation: "asked to cancel", silence: "silent against own rhythm", purchases: "fewer purchases than usual",
  spend: "spend down", complaints: "complaints", contacts: "more contacts than usual", unresolved: "unresolved contacts",
  payments: "late or failed payments", refunds: "refunds",
};
const SIGNAL_COLOR = ["#dc2626", "#2563eb", "#d97706", "#7c3aed", "#0d9488", "#64748b", "#db2777", "#65a30d", "#0891b2"];

function drawDefection(d) {
  const card = $(".card.defection");
  setEmpty(card, d.leavers === 0);
  const all = d.rows.filter((r) => r.period === "all");
  const byTier = Object.fromEntries(all.map((r) => [r.tier, r]));
  const tiers = all.map((r) => r.tier);
  $("#defection-note").textContent = d.leavers
    ? `${num(d.leavers)} customers left: share who showed each signal in the ${d.settings.lookback_days} days up to ` +
      "their last sign of life (grey: share of the other customers' scorings)"
    : "Signals before leaving, by value tier";
  const head = el("tr", {}, el("th", { text: "signal" }),
    ...tiers.map((t) => el("th", { class: "num" }, tierChip(t || null), el("small", { text: ` ${num(byTier[t].leavers)} left` }))));
  const rows = d.signals.map((name) => el("tr", { "data-signal": name },
    el("td", { class: "signal", text: SIGNAL_LABEL[name] || name }),
    ...tiers.map((t) => {
      const share = byTier[t].signals[name], other = byTier[t].others[name];
      return el("td", { class: "share", style: `background:${tint(color("--risk-high"), 0.04 + 0.5 * share)}`,
        title: `${pct(share, 1)} of tier ${t || "unrated"} leavers; ${pct(other, 1)} of the others' scorings` },
        el("b", { text: pct(share) }), el("small", { text: other === null ? "" : pct(other) }));
    })));
  $("#defection thead").replaceChildren(head);
  $("#defection tbody").replaceChildren(...rows);
  // Per month, every tier together: the leavers' share for the signals seen most.
  const monthly = d.rows.filter((r) => r.period !== "all");
  const months = [...new Set(monthly.map((r) => r.period))].sort();
  const top = [...d.signals].sort((a, b) => all.reduce((s, r) => s + r.leavers * (r.signals[b] - r.signals[a]), 0)).slice(0, 4);
  const datasets = top.map((name, k) => ({
    label: SIGNAL_LABEL[name] || name, borderColor: SIGNAL_COLOR[d.signals.indexOf(name)], backgroundColor: SIGNAL_COLOR[d.signals.indexOf(name)],
    borderWidth: 2, pointRadius: 2, tension: 0.2,
    data: months.map((m) => {
      const rs = monthly.filter((r) => r.period === m);
      const n = rs.reduce((s, r) => s + r.leavers, 0);
      return n ? rs.reduce((s, r) => s + r.leavers * r.signals[name], 0) / n : null;
    }),
  }));
  const c = chart("defection-chart", {
    type: "line",
    data: { labels: months, datasets: [] },
    options: {
      scales: { x: { grid: { display: false } }, y: { beginAtZero: true, max: 1, grid: GRID, ticks: { callback: (v) => pct(v) } } },
      plugins: { legend: { position: "top", align: "end" }, tooltip: { callbacks: { label: (i) => ` ${i.dataset.label}: ${pct(i.parsed.y)}` } } },
    },
  });
  c.data.labels = months;
  c.data.datasets = datasets;
  c.update("none");
}

// --- customer drawer -------------------------------------------------------------------------------------------------

function customerFromHash() {
  const m = location.hash.match(/^#customer=(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

// The latest few of each kind, merged by time: a heavy buyer's purchases must not hide its contacts and payments.
const EVENTS_PER_KIND = 8;
function eventRows(ev) {
  const rows = [];
  for (const t of ev.transactions.slice(0, EVENTS_PER_KIND)) rows.push([t.event_time, "transaction",
    (t.currency === currency ? money(t.amount, false)
      : `${num(t.amount, 2)} ${t.currency} (` + (t.amount_base === null ? "no rate: not counted" : money(t.amount_base, false)) + ")") +
    ` · ${t.category} via ${t.channel}` +
    (t.gross_margin_base === null || t.gross_margin_base === undefined ? "" : ` · margin ${money(t.gross_margin_base, false)}`)]);
  for (const c of ev.contacts.slice(0, EVENTS_PER_KIND)) rows.push([c.event_time, "contact",
    `${c.reason.replace(/_/g, " ")} by ${c.channel}` + (c.resolved ? "" : " · unresolved") + ` · ${Math.round(c.handle_time_s / 60)} min`]);
  for (const p of ev.payments.slice(0, EVENTS_PER_KIND)) rows.push([p.event_time, "payment",
    `${p.status} · ${money(p.amount_paid, false)} of ${money(p.amount_due, false)} (invoice ${p.invoice_id})`]);
  rows.sort((a, b) => (a[0] < b[0] ? 1 : -1));
  return rows.map(([t, kind, text]) => el("tr", {},
    el("td", { class: "t", text: stamp(t) }), el("td", { class: "k" }, el("span", { class: "kind " + kind, text: kind })),
    el("td", { text })));
}

function featureValue(v) {
  if (Array.isArray(v)) return v.join(", ") || "–";
  if (typeof v === "number") return Number.isInteger(v) ? num(v) : num(v, 3);
  if (typeof v === "string" && /^\d{4}-\d\d-\d\dT/.test(v)) return v.startsWith("1970-01-01") ? "–" : stamp(v);
  return v === "" || v === null ? "–" : String(v);
}

function drawCustomer(c) {
  const s = c.snapshot || {};
  $("#c-title").textContent = c.customer_id;
  const sub = $("#c-sub");
  sub.replaceChildren(tierChip(s.value_tier), " ",
    s.as_of ? `scored as of ${stamp(s.as_of)} · ${num(s.n_transactions)} purchases, ${num(s.n_contacts)} contacts` : "not scored yet");
  // A model's output is NULL until a model has scored the customer: "–", never 0%.
  const model = (v, f) => (v === null || v === undefined ? "–" : f(v));
  const figures = [
    ["Profitability", money(s.profitability)], ["CLV", model(s.clv, money)],
    ["Churn probability", model(s.churn_probability, pct)], ["P(alive)", model(s.p_alive, pct)], ["Loyalty", s.loyalty_score === undefined ? "–" : num(s.loyalty_score, 2)],
    ["Recency", s.recency_days === undefined ? "–" : num(s.recency_days, 0) + " d"],
    ["Revenue", money(s.revenue)], ["Gross margin", money(s.gross_margin)], ["Cost to serve", money(s.cost_to_serve)],
  ];
  $("#c-figures").replaceChildren(...figures.map(([k, v]) => el("div", {}, el("span", { text: k }), el("b", { text: v }))));
  if (s.churn_reasons && s.churn_reasons.length) {
    $("#c-figures").append(el("div", { style: "grid-column: 1 / -1" }, el("span", { text: "Churn reasons" }),
      ...s.churn_reasons.map((r) => el("span", { class: "reason", style: "display:inline-block", text: r }))));
  }
  const h = c.history.map((r) => ({ ...r, x: new Date(r.as_of).getTime() }));
  const ch = chart("c-chart", {
    type: "line",
    data: { datasets: [
      { label: "profitability", yAxisID: "y", borderColor: color("--tier-a"), backgroundColor: color("--tier-a"), data: [] },
      { label: "CLV", yAxisID: "y", borderColor: color("--tier-b"), backgroundColor: color("--tier-b"), data: [] },
      { label: "churn probability", yAxisID: "y2", borderColor: color("--risk-high"), backgroundColor: color("--risk-high"), data: [] },
    ] },
    options: {
      parsing: false, elements: { point: { radius: 0 }, line: { borderWidth: 2 } },
      scales: {
        x: { type: "linear", grid: GRID, ticks: { maxTicksLimit: 6, maxRotation: 0,
          callback: (v) => new Date(v).toLocaleDateString("en", { day: "numeric", month: "short" }) } },
        y: { grid: GRID, ticks: { callback: (v) => money(v) } },
        y2: { position: "right", min: 0, max: 1, grid: { display: false }, ticks: { callback: (v) => pct(v) } },
      },
      plugins: { legend: { position: "top", align: "end" } },
    },
  });
  ch.data.datasets[0].data = h.map((r) => ({ x: r.x, y: r.profitability }));
  ch.data.datasets[1].data = h.map((r) => ({ x: r.x, y: r.clv }));
  ch.data.datasets[2].data = h.map((r) => ({ x: r.x, y: r.churn_probability }));
  ch.update("none");
  const events = eventRows(c.events);
  $("#c-events tbody").replaceChildren(...(events.length ? events : [el("tr", {}, el("td", { class: "t", text: "no events" }))]));
  const alerts = c.alerts.map((a) => el("tr", {}, el("td", { class: "t", text: stamp(a.alert_time) }),
    el("td", { class: "k" }, el("span", { class: "sev " + a.severity, text: a.severity })),
    el("td", {}, el("b", { text: a.rule.replace(/_/g, " ") + ": " }), a.reasons.join("; "))));
  $("#c-alerts tbody").replaceChildren(...(alerts.length ? alerts : [el("tr", {}, el("td", { class: "t", text: "no alerts" }))]));
  const skip = new Set(["customer_id", "churn_reasons"]);
  $("#c-features tbody").replaceChildren(...Object.entries(s).filter(([k]) => !skip.has(k))
    .map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { text: featureValue(v) }))));
}

async function refreshCustomer() {
  const id = customerFromHash();
  const drawer = $("#customer");
  drawer.hidden = $("#scrim").hidden = !id;
  if (!id) return;
  await panel(drawer, "/api/customer/" + encodeURIComponent(id), drawCustomer);
}

// --- the loop --------------------------------------------------------------------------------------------------------

// The outcome panels change slowly (a month's outcomes over weeks of event time) and cost more: once a minute.
const SLOW_MS = 60000;
const slowAt = {};
function slowPanel(card, path, draw) {
  if (slowAt[path] && Date.now() - slowAt[path] < SLOW_MS) return Promise.resolve(true);
  return panel(card, path, draw).then((ok) => { if (ok) slowAt[path] = Date.now(); return ok; });
}

let running = false;
async function refresh() {
  if (running) return;
  running = true;
  const period = $("#period").value;
  try {
    const results = await Promise.all([
      panel($(".kpis"), `/api/kpis?period=${period}`, drawKpis),
      panel($(".card.whale"), "/api/whale?points=200", drawWhale),
      panel($(".card.matrix"), "/api/matrix", drawMatrix),
      panel($(".card.alerts"), "/api/alerts?limit=100", drawAlerts),
      panel($(".card.migration"), "/api/migration?days=90", drawMigration),
      panel($(".card.model"), "/api/model", drawModel),
      slowPanel($(".card.outcomes"), "/api/outcomes?months=12", drawOutcomes),
      slowPanel($(".card.defection"), "/api/defection?months=12", drawDefection),
      refreshCustomer().then(() => true),
    ]);
    const ok = results.every(Boolean);
    $("#live").className = "live " + (ok ? "ok" : "bad");
    $("#updated").textContent = (ok ? "updated " : "partly updated ") + new Date().toLocaleTimeString("en", { hour12: false });
    document.body.dataset.loaded = "1"; // tests wait for this
  } finally {
    running = false;
  }
}

$("#period").addEventListener("change", refresh);
window.addEventListener("hashchange", refreshCustomer);
$("#scrim").addEventListener("click", () => { location.hash = ""; });
document.addEventListener("keydown", (e) => { if (e.key === "Escape" && customerFromHash()) location.hash = ""; });
$("#token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem("cvm-token", token);
  $("#token-bar").hidden = true;
  refresh();
});
refresh();
setInterval(refresh, REFRESH_MS);
