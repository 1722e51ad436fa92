// imrobots console: plain JS, no dependencies, works offline.
"use strict";

const state = {
  platforms: [],
  platform: null,          // name of the selected platform
  conversation: null,      // id of the selected conversation
  user: "alice",
  data: {},                // platform -> {messages: Map, cards: Map, calls: []}
  pressed: new Set(),
};

const $ = (id) => document.getElementById(id);

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// A small markdown renderer: headings, lists, bold, italics, code, links, paragraphs.
function inline(text) {
  let html = escapeHtml(text);
  html = html.replace(/`([^`]+)`/g, "<code>$1</code>");
  html = html.replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>");
  html = html.replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>");
  html = html.replace(/\[([^\]]+)\]\((https?:[^)\s]+)\)/g, '<a href="$2" target="_blank" rel="noopener">$1</a>');
  return html;
}

function renderMarkdown(text) {
  const lines = text.split("\n");
  const out = [];
  let list = null;
  let code = null;
  const closeList = () => { if (list) { out.push(`</${list}>`); list = null; } };
  for (const line of lines) {
    if (line.startsWith("```")) {
      if (code === null) { closeList(); code = []; } else { out.push(`<pre><code>${escapeHtml(code.join("\n"))}</code></pre>`); code = null; }
      continue;
    }
    if (code !== null) { code.push(line); continue; }
    let m;
    if ((m = line.match(/^(#{1,6})\s+(.*)$/))) { closeList(); const n = Math.min(m[1].length + 2, 6); out.push(`<h${n}>${inline(m[2])}</h${n}>`); }
    else if ((m = line.match(/^\s*[-*]\s+(.*)$/))) { if (list !== "ul") { closeList(); out.push("<ul>"); list = "ul"; } out.push(`<li>${inline(m[1])}</li>`); }
    else if ((m = line.match(/^\s*\d+[.)]\s+(.*)$/))) { if (list !== "ol") { closeList(); out.push("<ol>"); list = "ol"; } out.push(`<li>${inline(m[1])}</li>`); }
    else if (line.trim() === "") { closeList(); }
    else { closeList(); out.push(`<p>${inline(line)}</p>`); }
  }
  if (code !== null) out.push(`<pre><code>${escapeHtml(code.join("\n"))}</code></pre>`);
  closeList();
  return out.join("");
}

async function api(path, body) {
  const options = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function platformData(name) {
  if (!state.data[name]) state.data[name] = { messages: new Map(), cards: new Map(), calls: [] };
  return state.data[name];
}

function currentPlatform() {
  return state.platforms.find((p) => p.name === state.platform);
}

function currentConversation() {
  const p = currentPlatform();
  return p ? p.conversations.find((c) => c.id === state.conversation) : null;
}

// ------------------------------------------------------------------ rendering
function renderTabs() {
  const nav = $("platform-tabs");
  nav.innerHTML = "";
  for (const p of state.platforms) {
    const b = document.createElement("button");
    b.textContent = p.title;
    b.dataset.platform = p.name;
    b.className = p.name === state.platform ? "active" : "";
    b.onclick = () => selectPlatform(p.name);
    nav.appendChild(b);
  }
}

function renderSidebar() {
  const p = currentPlatform();
  const list = $("conversations");
  list.innerHTML = "";
  if (!p) return;
  for (const c of p.conversations) {
    const li = document.createElement("li");
    li.textContent = (c.group ? "# " : "@ ") + c.title;
    li.dataset.conversation = c.id;
    li.className = c.id === state.conversation ? "active" : "";
    li.onclick = () => { state.conversation = c.id; renderAll(); };
    list.appendChild(li);
  }
  const picker = $("user-picker");
  if (picker.options.length !== p.users.length) {
    picker.innerHTML = "";
    for (const u of p.users) {
      const o = document.createElement("option");
      o.value = u.id; o.textContent = u.name;
      picker.appendChild(o);
    }
    picker.value = state.user;
  }
  const conversation = currentConversation();
  $("mention").parentElement.style.display = conversation && conversation.group ? "" : "none";
  $("mention-label").textContent = "@" + (p.robot || "robot");
  $("chat-title").textContent = conversation ? `${conversation.title} · ${p.title}` : "";
}

function cardElement(card) {
  const el = document.createElement("div");
  el.className = `card status-${card.status || "unknown"}`;
  el.dataset.cardId = card.id;
  el.dataset.status = card.status || "";
  const header = document.createElement("div");
  header.className = "card-header";
  header.innerHTML = `<span class="title">${escapeHtml(card.title || "")}</span><span class="status">${escapeHtml(card.status || "")}</span>`;
  el.appendChild(header);
  const body = document.createElement("div");
  body.className = "card-body";
  for (const block of card.blocks || []) {
    if (block.type === "markdown") {
      const md = document.createElement("div");
      md.className = "md";
      md.innerHTML = renderMarkdown(block.text || "");
      body.appendChild(md);
    } else if (block.type === "divider") {
      body.appendChild(document.createElement("hr"));
    } else if (block.type === "note") {
      const note = document.createElement("div");
      note.className = "note";
      note.textContent = block.text || "";
      body.appendChild(note);
    } else if (block.type === "buttons") {
      const row = document.createElement("div");
      row.className = "card-buttons";
      for (const button of block.buttons || []) {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = button.label;
        b.dataset.buttonId = button.id;
        b.className = (button.style === "primary" ? "primary " : "") + (state.pressed.has(card.id + "/" + button.id) ? "pressed" : "");
        b.onclick = () => press(card, button);
        row.appendChild(b);
      }
      body.appendChild(row);
    }
  }
  el.appendChild(body);
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `${card.updates || 0} update${card.updates === 1 ? "" : "s"}`;
  el.appendChild(meta);
  return el;
}

function renderTimeline() {
  const timeline = $("timeline");
  const data = platformData(state.platform || "");
  const items = [];
  for (const m of data.messages.values()) if (m.conversation_id === state.conversation) items.push({ t: m.time, kind: "message", v: m });
  for (const c of data.cards.values()) if (c.conversation_id === state.conversation) items.push({ t: c.created, kind: "card", v: c });
  items.sort((a, b) => a.t - b.t);
  const atBottom = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 40;
  timeline.innerHTML = "";
  timeline.className = `timeline platform-${state.platform}`;
  for (const item of items) {
    if (item.kind === "card") {
      timeline.appendChild(cardElement(item.v));
    } else {
      const b = document.createElement("div");
      b.className = "bubble " + (item.v.from_robot ? "robot" : "user");
      b.innerHTML = `<div class="who">${escapeHtml(item.v.user_name || item.v.user_id)}</div><div class="md">${renderMarkdown(item.v.text)}</div>`;
      timeline.appendChild(b);
    }
  }
  if (atBottom) timeline.scrollTop = timeline.scrollHeight;
}

function renderCalls() {
  const data = platformData(state.platform || "");
  const body = $("calls");
  body.innerHTML = "";
  const calls = data.calls.slice(-200).reverse();
  for (const call of calls) {
    const tr = document.createElement("tr");
    tr.className = call.rate_limited ? "rate-limited" : (call.status >= 400 ? "failed" : "");
    const time = new Date(call.time * 1000).toLocaleTimeString([], { hour12: false });
    const status = call.error ? `${call.status} ${call.error}` : String(call.status);
    tr.innerHTML = `<td>${escapeHtml(time)}</td><td>${escapeHtml(call.method + " " + call.route)}</td><td>${escapeHtml(status)}</td>`;
    body.appendChild(tr);
  }
  const limited = data.calls.filter((c) => c.rate_limited).length;
  $("call-count").textContent = `${data.calls.length} calls, ${limited} rate-limited`;
}

async function renderFeedback() {
  try {
    const items = await api("/api/feedback");
    const list = $("feedback-list");
    list.innerHTML = "";
    for (const f of items.slice(-20).reverse()) {
      const li = document.createElement("li");
      li.textContent = `${f.user_id} on ${f.platform}: ${f.label} — “${f.question}”`;
      list.appendChild(li);
    }
  } catch (e) { /* the console keeps working without the list */ }
}

function renderAll() {
  renderTabs();
  renderSidebar();
  renderTimeline();
  renderCalls();
}

// ------------------------------------------------------------------ actions
async function selectPlatform(name) {
  state.platform = name;
  const p = currentPlatform();
  if (!p.conversations.some((c) => c.id === state.conversation)) state.conversation = p.conversations[0].id;
  await loadState(name);
  renderAll();
}

async function loadState(name) {
  const snapshot = await api(`/api/${name}/state`);
  const data = platformData(name);
  for (const m of snapshot.messages) data.messages.set(m.id, m);
  for (const c of snapshot.cards) data.cards.set(c.id, c);
  data.calls = snapshot.calls;
}

async function press(card, button) {
  state.pressed.add(card.id + "/" + button.id);
  try {
    await api(`/api/${state.platform}/press`, { card_id: card.id, button_id: button.id, user_id: state.user });
    setTimeout(renderFeedback, 300);
  } catch (e) {
    alert(`Could not press the button: ${e.message}`);
  }
  renderTimeline();
}

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("message-input");
  const text = input.value.trim();
  if (!text || !state.platform) return;
  input.value = "";
  const conversation = currentConversation();
  try {
    await api(`/api/${state.platform}/messages`, {
      text, conversation_id: conversation.id, group: conversation.group,
      user_id: state.user, mention: !conversation.group || $("mention").checked,
    });
  } catch (e) {
    alert(`Could not send: ${e.message}`);
  }
});

$("user-picker").addEventListener("change", (e) => { state.user = e.target.value; });

async function fault(kind, value) {
  try {
    await api(`/api/${state.platform}/faults`, { kind, value });
    $("fault-status").textContent = kind === "drop" ? "connection dropped" : `${kind} set to ${value}`;
  } catch (e) {
    $("fault-status").textContent = e.message;
  }
}
$("fault-drop").onclick = () => fault("drop", null);
$("fault-errors").onchange = (e) => fault("errors", parseFloat(e.target.value));
$("fault-latency").onchange = (e) => fault("latency", parseFloat(e.target.value));

// ------------------------------------------------------------------ live events
function connectEvents() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/events`);
  ws.onopen = () => { $("connection").textContent = "live"; $("connection").className = "pill ok"; };
  ws.onclose = () => {
    $("connection").textContent = "disconnected";
    $("connection").className = "pill";
    setTimeout(connectEvents, 1000);
  };
  ws.onmessage = (event) => {
    const e = JSON.parse(event.data);
    const data = platformData(e.platform);
    if (e.type === "card") data.cards.set(e.card.id, e.card);
    else if (e.type === "message") data.messages.set(e.message.id, e.message);
    else if (e.type === "call") data.calls.push(e.call);
    else if (e.type === "feedback") renderFeedback();
    if (e.platform === state.platform) {
      if (e.type === "call") renderCalls(); else renderTimeline();
    }
  };
}

async function main() {
  state.platforms = await api("/api/platforms");
  if (state.platforms.length) await selectPlatform(state.platforms[0].name);
  connectEvents();
  renderFeedback();
}

main();
