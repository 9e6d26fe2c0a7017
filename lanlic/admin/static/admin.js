// The lanlic admin page: plain JS over the JSON API (/api/openapi.json), no library.
// Every value from the server goes into the page as text (textContent), never as HTML.
"use strict";

const POLL_MS = 2000;
const CHART_MS = 15000;
const PAGE = 50;

const state = {
  csrf: null,
  user: null,
  tab: "dashboard",
  overview: null,
  holdersOffset: 0,
  historyOffset: 0,
  chartRange: "day",
  chartProduct: null,
  chartAt: 0,
  timer: null,
  busy: false,
  clockSkew: 0,   // server wall clock minus ours, seconds
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

// ---------------------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
    this.body = body;
  }
}

async function api(method, path, body, contentType) {
  const headers = {};
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  let payload;
  if (body instanceof ArrayBuffer || body instanceof Blob) {
    payload = body;
    headers["Content-Type"] = contentType || "application/octet-stream";
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  const res = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  let data = null;
  const type = res.headers.get("Content-Type") || "";
  if (type.includes("application/json")) data = await res.json();
  if (res.status === 401 && path !== "/api/login") {
    showLogin();
    throw new ApiError(res.status, data);
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// ------------------------------------------------------------------------- formatting

function pad(n) { return String(n).padStart(2, "0"); }

function fmtTime(t) {
  if (t === null || t === undefined) return "";
  const d = new Date(t * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtAgo(t) {
  const s = Math.max(0, Math.round(serverNow() - t));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`;
}

function fmtLeft(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${m} min`;
  if (m > 0) return `${m} min`;
  return `${s} s`;
}

function serverNow() { return Date.now() / 1000 + state.clockSkew; }

function flash(text, bad) {
  const f = $("flash");
  f.textContent = text;
  f.className = bad ? "flash bad" : "flash";
  f.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { f.hidden = true; }, 6000);
}

function fillTable(table, rows, emptyText) {
  const body = table.tBodies[0];
  const cols = table.tHead.rows[0].cells.length;
  body.replaceChildren();
  if (!rows.length) {
    body.append(el("tr", { class: "empty" }, el("td", { colspan: cols, text: emptyText })));
    return;
  }
  for (const r of rows) body.append(r);
}

function download(filename, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type: type || "application/octet-stream" }));
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---------------------------------------------------------------------- log in and out

function showLogin(message) {
  stopPolling();
  state.csrf = null;
  $("app").hidden = true;
  $("whoami").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
  $("login-password").focus();
}

function showApp(session) {
  state.csrf = session.csrf;
  state.user = session.user;
  $("login-view").hidden = true;
  $("app").hidden = false;
  $("whoami").hidden = false;
  $("user").textContent = session.open ? "open access (no password set)" : `logged in as ${session.user}`;
  $("open-banner").hidden = !session.open;
  $("logout").hidden = session.open;  // nothing to log out of
  startPolling();
}

async function boot() {
  let session = await api("GET", "/api/session");
  if (!session.authenticated && session.open) {
    session = await api("POST", "/api/login", { name: "local", password: "" });
  }
  if (session.authenticated) showApp(session);
  else showLogin();
}

async function login(ev) {
  ev.preventDefault();
  const button = $("login-submit");
  button.disabled = true;
  try {
    const session = await api("POST", "/api/login", {
      name: $("login-name").value, password: $("login-password").value,
    });
    $("login-password").value = "";
    showApp(session);
  } catch (e) {
    $("login-error").textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

async function logout() {
  try { await api("POST", "/api/logout"); } catch (e) { /* logged out anyway */ }
  showLogin("Logged out.");
}

// --------------------------------------------------------------------------- polling

function startPolling() {
  stopPolling();
  refresh();
  state.timer = setInterval(refresh, POLL_MS);
}

function stopPolling() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const ov = await api("GET", "/api/overview");
    state.overview = ov;
    state.clockSkew = ov.now - Date.now() / 1000;
    $("offline-banner").hidden = true;
    renderOverview(ov);
    await refreshTab(false);
  } catch (e) {
    if (!(e instanceof ApiError)) $("offline-banner").hidden = false;
  } finally {
    state.busy = false;
  }
}

async function refreshTab(force) {
  switch (state.tab) {
    case "dashboard":
      if (force || Date.now() - state.chartAt > CHART_MS) await loadChart();
      break;
    case "holders": await loadHolders(); break;
    case "borrows": await loadBorrows(); break;
    case "machines": await loadMachines(); break;
    case "history": await loadHistory(); break;
    case "settings":
      if (force) renderPolicy(state.overview);
      await loadQueue();
      if (force) await loadSeatPolicy();
      break;
    default: break;
  }
}

// -------------------------------------------------------------------------- overview

function renderOverview(ov) {
  $("customer").textContent = `${ov.key.customer} · server ${ov.server.id.slice(0, 19)}…`;
  $("count-holders").textContent = ov.counts.holders;
  $("count-borrows").textContent = ov.counts.borrows;
  $("count-machines").textContent = ov.counts.enrollments;
  const pend = $("pending-banner");
  pend.hidden = !ov.pending_key;
  if (ov.pending_key) pend.textContent = `New network key installed (expires ${ov.pending_key.expires}): ${ov.pending_key.message}`;
  const expiring = ov.key.days_left <= 30 ? ` (${ov.key.days_left} days left)` : "";
  $("key-line").replaceChildren(
    "Network key of ", el("strong", { text: ov.key.customer }),
    `, expires ${ov.key.expires}${expiring} · ${ov.counts.holders} seats in use, ${ov.counts.borrows} borrowed`,
  );
  renderProducts(ov.products);
  syncProductSelects(ov.products);
  renderServer(ov);
  if (state.tab === "settings" && !document.activeElement.closest("#policy-table")) renderPolicy(ov);
  $("footer").textContent = `lanlic ${ov.version} · ${ov.server.address} · updated ${fmtTime(ov.now)}`;
}

function bar(used, borrowed) {
  // Widths through the CSSOM: the page's CSP allows no inline style attribute.
  const u = el("div", { class: "u" }), b = el("div", { class: "b" });
  u.style.width = used;
  b.style.width = borrowed;
  return el("div", { class: "bar" }, u, b);
}

function renderProducts(products) {
  const box = $("products");
  const cards = products.map((p) => {
    const pct = (n) => `${p.seats ? (100 * n) / p.seats : 0}%`;
    const terms = p.key_borrowable > 0
      ? `borrowable: ${p.borrowable} of ${p.key_borrowable} seats, up to ${p.max_borrow_days} days`
      : "not borrowable";
    const versions = p.versions ? ` · versions ${p.versions[0]}–${p.versions[1]}` : "";
    return el("div", { class: "card product", id: `product-${p.name}` },
      el("h3", {}, el("span", { text: p.name }), p.addon ? el("span", { class: "tag", text: "add-on" }) : ""),
      el("div", { class: "nums" },
        el("div", {}, el("b", { class: "seats", text: p.seats }), el("span", { text: "seats" })),
        el("div", {}, el("b", { class: "in-use", text: p.in_use }), el("span", { text: "in use" })),
        el("div", {}, el("b", { class: "borrowed", text: p.borrowed }), el("span", { text: "borrowed" })),
        p.held ? el("div", { title: "held for clients reconnecting after a restart, each until it is reclaimed" },
          el("b", { class: "held", text: p.held }),
          el("span", { text: `held until ${new Date(p.held_until * 1000).toLocaleTimeString()}` })) : "",
        el("div", {}, el("b", { class: "free", text: p.free }), el("span", { text: "free" })),
      ),
      bar(pct(p.in_use), pct(p.borrowed)),
      el("div", { class: "terms", text: terms + versions }),
    );
  });
  box.replaceChildren(...cards);
}

function syncProductSelects(products) {
  const names = products.map((p) => p.name);
  for (const id of ["chart-product", "holders-product", "history-product"]) {
    const sel = $(id);
    const have = [...sel.options].map((o) => o.value).filter((v) => v);
    if (have.join() === names.join()) continue;
    const keep = sel.value;
    const first = id === "chart-product" ? [] : [el("option", { value: "", text: "All products" })];
    sel.replaceChildren(...first, ...names.map((n) => el("option", { value: n, text: n })));
    if (names.includes(keep)) sel.value = keep;
  }
  if (!state.chartProduct) state.chartProduct = $("chart-product").value;
}

function renderServer(ov) {
  const d = ov.discovery || {};
  const disc = !d.enabled ? "off (--no-mdns)"
    : `${d.state || "?"}${d.name ? ` as “${d.name}”` : ""}${d.interfaces ? ` on ${d.interfaces}` : ""}`;
  const facts = [
    ["Version", `lanlic ${ov.version}`],
    ["Server id (key fingerprint)", ov.server.id],
    ["Vendor key fingerprint", ov.server.vendor_fp],
    ["Licence address", ov.server.address],
    ["Admin page", ov.server.admin_address],
    ["Discovery (mDNS)", disc],
    ["Customer", ov.key.customer],
    ["Key serial", ov.key.serial],
    ["Key issued / expires", `${ov.key.issued} / ${ov.key.expires}`],
    ["Key file", ov.key.source || "(given at start)"],
    ["Borrowing kind", ov.key.borrow_kind === "act" ? "act (licence file bound to a machine)" : "key (portable key)"],
    ["Lease / heartbeat", `${ov.server.lease_seconds} s / ${ov.server.heartbeat_seconds} s`],
    ["Client connections", String(ov.server.connections)],
    ["Data folder", ov.server.data || "(none: nothing is kept)"],
  ];
  if (ov.cluster) {
    facts.push(["Cluster member", ov.cluster.member], ["Seats kept in", `etcd ${ov.cluster.etcd.join(", ")}`],
      ["History", ov.cluster.history_note]);
  }
  $("server-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { class: "mono", text: v })]));
}

// ----------------------------------------------------------------------------- chart

async function loadChart() {
  state.chartAt = Date.now();
  if (noChart()) {
    state.chartData = null;
    drawChart();
    const note = document.createElementNS("http://www.w3.org/2000/svg", "text");
    note.setAttribute("x", "20");
    note.setAttribute("y", "130");
    note.textContent = noChart();
    $("chart").append(note);
    $("chart").setAttribute("aria-label", noChart());
    return;
  }
  const data = await api("GET", `/api/usage?range=${state.chartRange}`);
  state.chartData = data;
  drawChart();
}

function drawChart() {
  const data = state.chartData;
  const svg = $("chart");
  const NS = "http://www.w3.org/2000/svg";
  const W = 900, H = 260, L = 40, R = 12, T = 12, B = 26;
  const mk = (tag, attrs) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    return n;
  };
  svg.replaceChildren();
  if (!data) return;
  const prod = data.products.find((p) => p.name === $("chart-product").value) || data.products[0];
  if (!prod) return;
  const pts = prod.points;
  const ymax = Math.max(1, prod.seats);
  const x = (t) => L + ((t - data.start) / (data.end - data.start)) * (W - L - R);
  const y = (v) => H - B - (v / ymax) * (H - T - B);
  const grid = mk("g", { class: "grid" });
  const step = ymax <= 10 ? 1 : Math.ceil(ymax / 5);
  for (let v = 0; v <= ymax; v += step) {
    grid.append(mk("line", { x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    const label = mk("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" });
    label.textContent = String(v);
    grid.append(label);
  }
  const span = data.end - data.start;
  const tick = span <= 86400 ? 3 * 3600 : span <= 7 * 86400 ? 86400 : 5 * 86400;
  const first = Math.ceil(data.start / tick) * tick;
  for (let t = first; t <= data.end; t += tick) {
    const d = new Date(t * 1000);
    const label = mk("text", { x: x(t), y: H - 8, "text-anchor": "middle" });
    label.textContent = span <= 86400 ? `${pad(d.getHours())}:${pad(d.getMinutes())}` : `${d.getMonth() + 1}/${d.getDate()}`;
    grid.append(label, mk("line", { x1: x(t), x2: x(t), y1: H - B, y2: H - B + 4 }));
  }
  svg.append(grid);
  // Step areas: in use from 0, borrowed stacked on top of it.
  const area = (lo, hi) => {
    let top = "", bottom = "";
    pts.forEach((p, i) => {
      const x0 = x(p[0]), x1 = x(i + 1 < pts.length ? pts[i + 1][0] : data.end);
      top += `${i ? "L" : "M"}${x0.toFixed(1)},${y(hi(p)).toFixed(1)} L${x1.toFixed(1)},${y(hi(p)).toFixed(1)} `;
      bottom = `L${x1.toFixed(1)},${y(lo(p)).toFixed(1)} L${x0.toFixed(1)},${y(lo(p)).toFixed(1)} ` + bottom;
    });
    return `${top}${bottom}Z`;
  };
  if (pts.length) {
    svg.append(mk("path", { class: "inuse", d: area(() => 0, (p) => p[1]) }));
    svg.append(mk("path", { class: "borrowed", d: area((p) => p[1], (p) => p[1] + p[2]) }));
  }
  svg.append(mk("line", { class: "seats", x1: L, x2: W - R, y1: y(prod.seats), y2: y(prod.seats) }));
  const peak = pts.reduce((m, p) => Math.max(m, p[1] + p[2]), 0);
  svg.setAttribute("aria-label", `${prod.name}: peak ${peak} of ${prod.seats} seats over the last ${data.range}`);
}

// ---------------------------------------------------------------------------- holders

async function loadHolders() {
  const q = new URLSearchParams({
    offset: state.holdersOffset, limit: PAGE,
    product: $("holders-product").value, q: $("holders-q").value,
  });
  const page = await api("GET", `/api/holders?${q}`);
  if (page.total && state.holdersOffset >= page.total) {
    state.holdersOffset = Math.max(0, Math.floor((page.total - 1) / PAGE) * PAGE);
    return loadHolders();
  }
  const rows = page.items.map((h) => el("tr", { "data-lease": h.lease },
    el("td", { text: h.user }), el("td", { text: h.host }), el("td", { text: h.app }),
    el("td", { text: h.version }), el("td", { text: h.product }),
    el("td", { text: fmtTime(h.since) }),
    // A seat held through another cluster member: that member keeps its heartbeats.
    el("td", { text: h.last_heartbeat === null ? `via ${h.member}` : fmtAgo(h.last_heartbeat) }),
    el("td", {}, el("button", { class: "small remove", type: "button", onclick: () => removeHolder(h) }, "Remove")),
  ));
  fillTable($("holders-table"), rows, "No seat is in use.");
  const end = page.offset + page.items.length;
  $("holders-range").textContent = page.total ? `${page.offset + 1}–${end} of ${page.total}` : "0 holders";
  $("holders-prev").disabled = page.offset === 0;
  $("holders-next").disabled = end >= page.total;
}

function confirmDialog(text) {
  return new Promise((resolve) => {
    const dlg = $("confirm");
    $("confirm-text").textContent = text;
    dlg.returnValue = "cancel";
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.showModal();
  });
}

async function removeHolder(h) {
  const ok = await confirmDialog(
    `Remove the ${h.product} seat of ${h.user} on ${h.host}? The application is told its seat is gone.`);
  if (!ok) return;
  try {
    await api("DELETE", `/api/holders/${h.lease}`);
    flash(`Removed the ${h.product} seat of ${h.user}@${h.host}.`);
  } catch (e) {
    flash(`Not removed: ${e.message}`, true);
  }
  await refresh();
}

// ---------------------------------------------------------------------- borrows, machines

async function loadBorrows() {
  const data = await api("GET", "/api/borrows");
  const rows = data.items.map((b) => el("tr", {},
    el("td", { text: b.user }), el("td", { text: b.host }), el("td", { text: b.product }),
    el("td", { text: fmtTime(b.start) }), el("td", { text: fmtTime(b.end) }),
    el("td", { class: "left", text: fmtLeft(b.end - data.now) }), el("td", { class: "mono", text: b.borrow_id }),
  ));
  fillTable($("borrows-table"), rows, "Nothing is borrowed.");
}

async function loadMachines() {
  const data = await api("GET", "/api/enrollments");
  const rows = data.items.map((e) => el("tr", {},
    el("td", { text: e.user }), el("td", { text: e.host }),
    el("td", { text: e.kind === "act" ? "machine" : "portable key" }),
    el("td", { class: "mono", text: e.container_fp.slice(0, 23) }),
    el("td", { class: "mono", text: e.machine_fp ? e.machine_fp.slice(0, 23) : "—" }),
    el("td", { text: fmtTime(e.enrolled_at) }), el("td", { text: e.via }),
  ));
  fillTable($("machines-table"), rows, "No machine is enrolled for borrowing.");
}

// ---------------------------------------------------------------------------- history

function historyQuery() {
  const q = new URLSearchParams();
  const product = $("history-product").value, event = $("history-event").value;
  const since = $("history-since").value;
  if (product) q.set("product", product);
  if (event) q.set("event", event);
  if (since) q.set("since", String(new Date(`${since}T00:00:00`).getTime() / 1000));
  return q;
}

// A cluster member without a history of its own (docs/cluster.md): the reason, else "".
function noHistory() {
  const c = state.overview && state.overview.cluster;
  return c && !c.history ? c.history_note : "";
}

// A cluster member without its database draws no usage chart: why, else "".
function noChart() {
  const c = state.overview && state.overview.cluster;
  return c ? c.chart_note : "";
}

async function loadHistory() {
  if (noHistory()) {
    fillTable($("history-table"), [], noHistory());
    $("history-range").textContent = "";
    return;
  }
  const q = historyQuery();
  $("history-csv").href = `/api/history.csv?${q}`;
  q.set("offset", state.historyOffset);
  q.set("limit", PAGE);
  const page = await api("GET", `/api/history?${q}`);
  // A cluster member's history is every member's: each row names the member that served it.
  const cluster = Boolean(state.overview && state.overview.cluster);
  $("history-member").hidden = !cluster;
  const rows = page.items.map((r) => el("tr", {},
    el("td", { text: fmtTime(r.at) }), el("td", { text: r.event }), el("td", { text: r.product }),
    el("td", { text: r.user }), el("td", { text: r.host }), el("td", { class: "detail", text: r.count > 1 ? `${r.detail} (×${r.count})` : r.detail }),
    ...(cluster ? [el("td", { class: "mono", text: r.member })] : []),
  ));
  fillTable($("history-table"), rows, "No history matches.");
  const end = page.offset + page.items.length;
  // page.more: a cluster's read stopped once it held the page; the total is a lower bound.
  const of = page.more ? `more than ${page.total}` : String(page.total);
  $("history-range").textContent = page.total ? `${page.offset + 1}–${end} of ${of}` : "0 rows";
  $("history-prev").disabled = page.offset === 0;
  $("history-next").disabled = end >= page.total;
}

// --------------------------------------------------------------------------- settings

function renderPolicy(ov) {
  if (!ov) return;
  const rows = ov.products.map((p) => {
    const borrowable = el("input", { type: "number", min: 0, max: p.key_borrowable, name: "borrowable",
      placeholder: `key: ${p.key_borrowable}` });
    const days = el("input", { type: "number", min: 0, max: p.key_max_borrow_days, name: "max_borrow_days",
      placeholder: `key: ${p.key_max_borrow_days}` });
    if (p.borrowable !== p.key_borrowable) borrowable.value = p.borrowable;
    if (p.max_borrow_days !== p.key_max_borrow_days) days.value = p.max_borrow_days;
    const disabled = p.key_borrowable === 0;
    if (disabled) { borrowable.disabled = true; days.disabled = true; }
    const save = el("button", { type: "button", class: "small save", onclick: () => savePolicy(p.name, borrowable, days) }, "Save");
    if (disabled) save.disabled = true;
    return el("tr", { "data-product": p.name },
      el("td", { text: p.name }),
      el("td", {}, borrowable, ` of ${p.key_borrowable} (now ${p.borrowable})`),
      el("td", {}, days, ` of ${p.key_max_borrow_days} (now ${p.max_borrow_days})`),
      el("td", {}, save));
  });
  fillTable($("policy-table"), rows, "No product.");
}

async function savePolicy(product, borrowable, days) {
  const num = (input) => (input.value === "" ? null : Number(input.value));
  // The table is drawn again before the message shows, so what the message says is what the
  // page shows (and a quick next edit is not lost to the redraw).
  let message, failed = false;
  try {
    const r = await api("PUT", `/api/policy/${encodeURIComponent(product)}`, {
      borrowable: num(borrowable), max_borrow_days: num(days),
    });
    message = `${product}: at most ${r.borrowable} seats borrowable, for up to ${r.max_borrow_days} days.`;
  } catch (e) {
    message = `Not saved: ${e.message}`;
    failed = true;
  }
  await refresh();
  renderPolicy(state.overview);
  flash(message, failed);
}

async function loadSeatPolicy() {
  const r = await api("GET", "/api/seat-policy");
  const box = $("seat-policy-text");
  if (document.activeElement !== box && !box.dataset.edited) box.value = r.text;
}

async function saveSeatPolicy() {
  const box = $("seat-policy-text");
  try {
    const r = await api("PUT", "/api/seat-policy", { text: box.value });
    delete box.dataset.edited;
    showResult("seat-policy-result", true, r.changes.length ? "Applied:" : "Applied: no change.", r.changes);
  } catch (e) {
    showResult("seat-policy-result", false, `Not applied: ${e.message}`);
  }
}

async function loadQueue() {
  const r = await api("GET", "/api/queue");
  const rows = r.items.map((w) => el("tr", { "data-ticket": w.ticket },
    el("td", { text: String(w.position) }), el("td", { text: w.product }),
    el("td", { text: w.user }), el("td", { text: w.host }), el("td", { text: fmtTime(w.since) }),
    el("td", {}, el("button", { class: "small remove", type: "button", onclick: () => removeWaiter(w) }, "Remove")),
  ));
  fillTable($("queue-table"), rows, "Nobody is waiting.");
}

async function removeWaiter(w) {
  const ok = await confirmDialog(`Take ${w.user} on ${w.host} out of the queue for ${w.product}? They are told at once.`);
  if (!ok) return;
  try {
    await api("DELETE", `/api/queue/${w.ticket}`);
    flash(`Removed ${w.user}@${w.host} from the queue for ${w.product}.`);
  } catch (e) {
    flash(`Not removed: ${e.message}`, true);
  }
  await loadQueue();
}

function showResult(id, ok, text, extra) {
  const box = $(id);
  box.className = ok ? "result ok" : "result bad";
  box.replaceChildren(text);
  if (extra && extra.length) box.append(el("ul", {}, ...extra.map((w) => el("li", { text: w }))));
}

async function installKey(ev) {
  ev.preventDefault();
  const file = $("key-file").files[0];
  if (!file) return;
  try {
    const r = await api("POST", "/api/key", await file.arrayBuffer());
    showResult("key-result", true, r.message, r.warnings);
    await refresh();
  } catch (e) {
    showResult("key-result", false, `Refused${e.code ? ` (${e.code})` : ""}: ${e.message}`);
  }
}

async function acceptEnrollment(ev) {
  ev.preventDefault();
  const file = $("enroll-file").files[0];
  if (!file) return;
  try {
    const r = await api("POST", "/api/enrollments", await file.arrayBuffer());
    showResult("enroll-result", true,
      `Accepted ${r.user}@${r.host}. The response file ${r.filename} is downloading: give it back to the user.`);
    download(r.filename, r.response, "application/json");
    await refresh();
  } catch (e) {
    showResult("enroll-result", false, `Refused${e.code ? ` (${e.code})` : ""}: ${e.message}`);
  }
}

// ------------------------------------------------------------------------------- tabs

function selectTab(name) {
  if (!$(`tab-${name}`)) name = "dashboard";
  state.tab = name;
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("on", a.dataset.tab === name);
  for (const s of document.querySelectorAll("section.tab")) s.hidden = s.id !== `tab-${name}`;
  if (name === "settings") renderPolicy(state.overview);
  if (state.csrf) refreshTab(true).catch(() => {});
}

function init() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("key-form").addEventListener("submit", installKey);
  $("enroll-form").addEventListener("submit", acceptEnrollment);
  $("seat-policy-save").addEventListener("click", saveSeatPolicy);
  $("seat-policy-text").addEventListener("input", () => { $("seat-policy-text").dataset.edited = "1"; });
  $("holders-prev").addEventListener("click", () => { state.holdersOffset = Math.max(0, state.holdersOffset - PAGE); loadHolders(); });
  $("holders-next").addEventListener("click", () => { state.holdersOffset += PAGE; loadHolders(); });
  $("holders-product").addEventListener("change", () => { state.holdersOffset = 0; loadHolders(); });
  let typing;
  $("holders-q").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.holdersOffset = 0; loadHolders(); }, 250);
  });
  $("history-form").addEventListener("submit", (ev) => { ev.preventDefault(); state.historyOffset = 0; loadHistory(); });
  $("history-prev").addEventListener("click", () => { state.historyOffset = Math.max(0, state.historyOffset - PAGE); loadHistory(); });
  $("history-next").addEventListener("click", () => { state.historyOffset += PAGE; loadHistory(); });
  $("chart-product").addEventListener("change", () => { state.chartProduct = $("chart-product").value; drawChart(); });
  for (const b of document.querySelectorAll("#chart-range button")) {
    b.addEventListener("click", () => {
      state.chartRange = b.dataset.range;
      for (const o of document.querySelectorAll("#chart-range button")) o.classList.toggle("on", o === b);
      loadChart();
    });
  }
  window.addEventListener("hashchange", () => selectTab(location.hash.slice(1)));
  selectTab(location.hash.slice(1) || "dashboard");
  boot().catch((e) => showLogin(e.message));
}

document.addEventListener("DOMContentLoaded", init);
