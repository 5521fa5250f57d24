// posterm control panel: live state by server-sent events, actions as JSON POSTs (docs/panel.md).
"use strict";
const API = "/api/v1";
const MAX_TRAFFIC = 200;
const states = {};      // terminal id -> last state
const traffic = {};     // terminal id -> entries (oldest first, capped)
let selected = null;
let codes = [];

const $ = (id) => document.getElementById(id);
function el(tag, props, ...kids) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  for (const k of kids) e.append(k);
  return e;
}

async function post(action, body) {
  if (!selected) return;
  const status = $("status");
  try {
    const r = await fetch(`${API}/terminals/${encodeURIComponent(selected)}/${action}`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body || {}),
    });
    const answer = await r.json();
    status.className = r.ok && answer.ok !== false ? "small" : "small err";
    status.textContent = r.ok ? `${action}: ${answer.result || answer.order_id || "ok"}` : `${action}: ${answer.error}`;
  } catch (e) {
    status.className = "small err";
    status.textContent = `${action}: ${e}`;
  }
}

function addTraffic(id, entries) {
  const log = traffic[id] || (traffic[id] = []);
  let last = log.length ? log[log.length - 1].n : 0;
  for (const e of entries || []) if (e.n > last) { log.push(e); last = e.n; }
  if (log.length > MAX_TRAFFIC) log.splice(0, log.length - MAX_TRAFFIC);
}

function renderList() {
  const nav = $("terminals");
  const ids = Object.keys(states).sort();
  nav.replaceChildren(...ids.map((id) => {
    const s = states[id];
    const b = el("button", { className: id === selected ? "sel" : "", type: "button" },
      el("b", { textContent: id }), el("span", { className: "tstate", textContent: `${s.state} · ${(s.display && s.display.text || "").split("\n").pop()}` }));
    b.dataset.testid = `terminal-${id}`;
    b.onclick = () => select(id);
    return b;
  }));
}

function renderDetail() {
  const s = states[selected];
  if (!s) return;
  $("detail").hidden = false;
  $("t-id").textContent = s.id;
  $("t-state").textContent = s.state;
  $("t-prompt").textContent = s.prompt ? `asks: ${s.prompt}` : "";
  $("t-display").textContent = (s.display && s.display.text) || "";
  const qr = $("t-qr");
  const qrData = s.display && s.display.qr_data;
  if (qrData) {
    const src = `${API}/terminals/${encodeURIComponent(s.id)}/qr.svg?v=${encodeURIComponent(qrData.length + ":" + qrData.slice(-12))}`;
    if (qr.dataset.src !== src) { qr.src = src; qr.dataset.src = src; }
    qr.hidden = false;
    $("t-qr-data").textContent = qrData;
  } else { qr.hidden = true; qr.dataset.src = ""; $("t-qr-data").textContent = ""; }
  const line = s.line || {};
  $("t-line").textContent = `${s.protocol} on ${s.port} · ${line.unplugged ? "CABLE OUT" : "cable in"} · in ${line.bytes_in} B, out ${line.bytes_out} B` +
    (line.restarts ? ` · restarts ${line.restarts}` : "") + (s.host && !s.host.online ? " · host offline" : "") + (s.error ? ` · ERROR ${s.error}` : "");
  $("manual").checked = s.customer === "manual";
  $("held").textContent = s.held && s.held.length ? `waiting for their prompt: ${s.held.join(", ")}` : "";
  const ans = s.host && s.host.answer;
  $("t-host").textContent = ans ? Object.entries(ans).map(([k, v]) => `${k}: ${v}`).join("\n") : "(none yet)";
  const res = s.last_result;
  $("t-result").textContent = res ? `${res.order_id}\n${res.outcome}${res.reason && res.reason !== "none" ? " / " + res.reason : ""}` : "(none yet)";
  const reg = s.register || {};
  $("register").textContent = reg.busy ? `charging order ${reg.order_id}…` :
    reg.result ? `order ${reg.result.order_id}: ${reg.result.outcome}${reg.result.reason && reg.result.reason !== "none" ? " / " + reg.result.reason : ""}` : "";
  $("t-receipts").replaceChildren(...(s.receipts || []).slice().reverse().map((r) =>
    el("pre", { className: "receipt", textContent: r.lines.join("\n") })));
  $("export").href = `${API}/terminals/${encodeURIComponent(s.id)}/scenario.toml`;
  renderTraffic();
}

function summary(e) {
  if (e.type === "event") return [`event ${e.event}`, Object.entries(e).filter(([k]) => !["n", "t", "from", "type", "event"].includes(k)).map(([k, v]) => `${k}=${v}`).join(" ")];
  const msg = e.msg || {};
  const fields = Object.entries(msg).filter(([k]) => k !== "type").map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
  return [`${e.kind || "frame"}${e.seq !== undefined ? " #" + e.seq : ""} ${msg.type || ""}`, fields.slice(0, 240)];
}

function renderTraffic() {
  const body = $("traffic").tBodies[0];
  const log = traffic[selected] || [];
  body.replaceChildren(...log.slice().reverse().map((e) => {
    const [what, fields] = summary(e);
    const tr = el("tr", { className: `${e.from} ${e.type}` },
      el("td", { textContent: e.n }), el("td", { textContent: e.t.toFixed(3) }), el("td", { textContent: e.from }),
      el("td", { textContent: what }), el("td", { className: "f", textContent: fields }));
    return tr;
  }));
}

function renderFleet(f) {
  $("fleet-count").textContent = f.terminals;
  $("fleet-fps").textContent = f.flows_per_second;
  $("fleet-states").textContent = Object.entries(f.by_state || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
  $("fleet-payments").textContent = Object.entries(f.payments || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
}

async function select(id) {
  selected = id;
  const r = await fetch(`${API}/terminals/${encodeURIComponent(id)}/state`);
  if (r.ok) {
    const s = await r.json();
    traffic[id] = [];
    addTraffic(id, s.traffic);
    delete s.traffic;
    states[id] = s;
  }
  renderList();
  renderDetail();
}

function buildControls() {
  const keypad = $("keypad");
  for (const k of ["1", "2", "3", "4", "5", "6", "7", "8", "9", "CLEAR", "0", "OK", "CANCEL"]) {
    const b = el("button", { type: "button", textContent: k, className: k });
    b.dataset.testid = `key-${k}`;
    b.onclick = () => post("keys", { keys: k });
    keypad.append(b);
  }
  const acts = {
    "present-code": () => post("present-code", { code: $("code").value }),
    "scan-qr": () => post("scan-qr", { code: $("code").value }),
    "pin": () => post("pin", {}),
    "pin-wrong": () => post("pin", { wrong: true }),
    "pin-cancel": () => post("pin", { cancel: true }),
    "fault-corrupt": () => post("fault", { fault: "corrupt" }),
    "fault-drop": () => post("fault", { fault: "drop" }),
  };
  for (const b of document.querySelectorAll("button[data-act]")) {
    const name = b.dataset.act;
    b.onclick = acts[name] || (() => post(name, {}));
  }
  $("manual").onchange = (e) => post("customer", { mode: e.target.checked ? "manual" : "automatic" });
  $("sale-form").onsubmit = (e) => { e.preventDefault(); post("sale", { amount: $("sale-amount").value, currency: $("sale-currency").value }); };
  $("code").onchange = () => { const c = codes.find((c) => c.code === $("code").value); $("code-does").textContent = c ? c.does : ""; };
}

async function start() {
  buildControls();
  const r = await fetch(`${API}/demo-codes`);
  codes = (await r.json()).codes;
  $("code").replaceChildren(...codes.map((c) => el("option", { value: c.code, textContent: `…${c.code.slice(-4)} ${c.does.split(/[;:(]/)[0]}` })));
  $("code").onchange();
  const es = new EventSource(`${API}/events`);
  es.onopen = () => { $("conn").textContent = "live"; };
  es.onerror = () => { $("conn").textContent = "reconnecting…"; };
  es.addEventListener("terminal", (ev) => {
    const s = JSON.parse(ev.data);
    addTraffic(s.id, s.frames);
    delete s.frames;
    states[s.id] = s;
    if (!selected) { select(s.id); return; }
    renderList();
    if (s.id === selected) renderDetail();
  });
  es.addEventListener("fleet", (ev) => renderFleet(JSON.parse(ev.data)));
}
document.addEventListener("DOMContentLoaded", start);
