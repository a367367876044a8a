"""The simulator's "phone": one self-contained HTML page served at ``/simulator/``.

It lists pending sessions (states 1 and 7) with their service name and address and offers
Approve / Deny, refreshing itself every second from the control API. Kept inline rather than
as a package data file so that no packaging setting can lose it, and free of external assets
so that the demo works offline. Stable hooks for headless-browser tests:

* each pending session: ``<article class="session" data-session="ID" data-secsignid="...">``
* its buttons: ``<button data-action="approve|deny" data-session="ID" id="approve-ID">``
* ``#empty`` is visible when nothing is pending; ``#history`` lists the last finished sessions
  as ``<li data-session="ID" data-state="N">``; ``#totp-id``, ``#totp-show``, ``#totp-code``
  show the current passcode of a SecSign ID.

Untrusted text (service names come from RADIUS attributes) is only ever set with
``textContent``, never as HTML.
"""

from __future__ import annotations

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<link rel="icon" href="data:,">
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SecSign ID simulator</title>
<style>
  body { margin: 0; background: #e8ebf0; font: 15px/1.4 system-ui, sans-serif; }
  .phone { max-width: 380px; min-height: 640px; margin: 24px auto; background: #fff;
           border: 12px solid #1d1f24; border-radius: 36px; padding: 16px;
           box-shadow: 0 8px 30px rgba(0,0,0,.25); }
  header { text-align: center; color: #1f5fa8; font-weight: 600; margin-bottom: 12px; }
  #status { font-size: 12px; color: #888; font-weight: normal; }
  .session { border: 1px solid #d5dbe5; border-radius: 14px; padding: 12px; margin: 10px 0; }
  .session h2 { font-size: 17px; margin: 0 0 4px; }
  .session p { margin: 2px 0; color: #444; word-break: break-all; }
  .session h2, #history li { overflow-wrap: anywhere; }
  .buttons { display: flex; gap: 8px; margin-top: 10px; }
  button { flex: 1; padding: 10px; border: 0; border-radius: 10px; font-size: 15px;
           cursor: pointer; color: #fff; }
  button[data-action=approve] { background: #2e9e4f; }
  button[data-action=deny] { background: #c23b3b; }
  button:disabled { opacity: .5; }
  #empty { text-align: center; color: #888; margin: 40px 0; }
  h3 { font-size: 13px; color: #666; margin: 20px 0 4px; }
  #history { font-size: 13px; color: #555; padding-left: 18px; }
  .totp { display: flex; gap: 6px; }
  .totp input { flex: 2; padding: 6px; }
  #totp-show { background: #1f5fa8; flex: 1; }
  #totp-code { font: 22px monospace; text-align: center; margin: 6px 0; }
</style>
</head>
<body>
<div class="phone">
  <header>SecSign ID <span id="status">connecting</span></header>
  <main id="sessions"></main>
  <p id="empty">No pending login requests.</p>
  <h3>Recent</h3>
  <ol id="history"></ol>
  <h3>Passcode</h3>
  <div class="totp">
    <input id="totp-id" placeholder="SecSign ID" autocomplete="off">
    <button id="totp-show" type="button">Show</button>
  </div>
  <div id="totp-code"></div>
</div>
<script>
"use strict";
const STATES = ["no state", "pending", "expired", "approved", "denied", "suspended",
                "canceled", "fetched", "invalid"];
const list = document.getElementById("sessions");
let lastText = "";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function button(session, action, label) {
  const b = el("button", label);
  b.type = "button";
  b.id = action + "-" + session.id;
  b.dataset.action = action;
  b.dataset.session = session.id;
  return b;
}

function card(s) {
  const node = el("article", undefined, "session");
  node.dataset.session = s.id;
  node.dataset.secsignid = s.secsignid;
  node.append(el("h2", s.servicename), el("p", s.serviceaddress),
              el("p", "SecSign ID: " + s.secsignid));
  const row = el("div", undefined, "buttons");
  row.append(button(s, "approve", "Approve"), button(s, "deny", "Deny"));
  node.append(row);
  return node;
}

function render(sessions) {
  const pending = sessions.filter(s => s.state === 1 || s.state === 7);
  list.replaceChildren(...pending.map(card));
  document.getElementById("empty").hidden = pending.length > 0;
  const done = sessions.filter(s => s.state !== 1 && s.state !== 7).slice(-5).reverse();
  document.getElementById("history").replaceChildren(...done.map(s => {
    const name = STATES[s.state] || String(s.state);
    const item = el("li", s.servicename + " (" + s.secsignid + "): " + name);
    item.dataset.session = s.id;
    item.dataset.state = s.state;
    return item;
  }));
}

async function refresh() {
  try {
    const response = await fetch("api/sessions", {cache: "no-store"});
    const text = await response.text();
    document.getElementById("status").textContent = "online";
    if (text !== lastText) { lastText = text; render(JSON.parse(text)); }
  } catch (error) {
    document.getElementById("status").textContent = "offline";
  }
}

async function post(url) {
  return fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"});
}

list.addEventListener("click", async event => {
  const b = event.target.closest("button[data-action]");
  if (!b) return;
  const card = b.closest("[data-session]") || b.parentElement;
  card.querySelectorAll("button[data-action]").forEach(x => { x.disabled = true; });
  const response = await post(
    "api/sessions/" + encodeURIComponent(b.dataset.session) + "/" + b.dataset.action);
  if (!response.ok) {
    document.getElementById("status").textContent = "that request is no longer pending";
  }
  lastText = "";
  refresh();
});

document.getElementById("totp-show").addEventListener("click", async () => {
  const id = document.getElementById("totp-id").value.trim();
  const out = document.getElementById("totp-code");
  if (!id) return;
  const response = await fetch("api/totp/" + encodeURIComponent(id), {cache: "no-store"});
  const data = await response.json();
  out.textContent = response.ok ? data.code : (data.errormsg || data.error || "error");
});

refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""
