// imrobots console: plain JS, no dependencies, works offline.
"use strict";

const state = {
  pages: [],
  page: null,              // name of the selected page (a platform, or a robot of a config)
  conversation: null,      // base id of the selected conversation
  user: "alice",
  data: {},                // page -> {messages, cards, calls, outcomes, ratings, platformIds}
  stick: true,             // keep the timeline scrolled to the newest item
  pending: new Map(),      // "card/button" -> {user, label, time}: presses not yet answered
  pressErrors: new Map(),  // card id -> why a press failed
  transcript: null,        // {name, data} of a loaded transcript, shown instead of the chat
  waiters: [],             // functions re-checked after every event (replay)
};

const $ = (id) => document.getElementById(id);
const escapeHtml = window.escapeHtml;
const renderMarkdown = window.renderMarkdown;

async function api(path, body) {
  const options = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error("the console is not reachable");
  }
  let data = null;
  try { data = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) throw new Error((data && data.error) || response.statusText || `HTTP ${response.status}`);
  return data;
}

function clock(seconds) {
  if (!seconds) return "";
  return new Date(seconds * 1000).toLocaleTimeString([], { hour12: false });
}

function platformData(name) {
  if (!state.data[name]) {
    state.data[name] = { messages: new Map(), cards: new Map(), calls: [], outcomes: new Map(), ratings: [], platformIds: {} };
  }
  return state.data[name];
}

function currentPage() { return state.pages.find((p) => p.name === state.page); }

function currentConversation() {
  const p = currentPage();
  return p ? p.conversations.find((c) => c.base === state.conversation) : null;
}

function userName(id) {
  const p = currentPage();
  const user = p && p.users.find((u) => u.id === id);
  return user ? user.name : id;
}

// ------------------------------------------------------------------ panels (narrow screens)
function showView(view) {
  $("layout").dataset.view = view;
  for (const b of document.querySelectorAll("#view-tabs button")) b.classList.toggle("active", b.dataset.view === view);
  if (view === "chat") scrollToBottom();
}
for (const b of document.querySelectorAll("#view-tabs button")) b.onclick = () => showView(b.dataset.view);

// ------------------------------------------------------------------ rendering
function renderTabs() {
  const nav = $("platform-tabs");
  nav.innerHTML = "";
  for (const p of state.pages) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = p.title;
    b.dataset.platform = p.name;
    b.className = p.name === state.page ? "active" : "";
    b.onclick = () => selectPage(p.name);
    nav.appendChild(b);
  }
}

function renderSidebar() {
  const p = currentPage();
  const list = $("conversations");
  list.innerHTML = "";
  if (!p) return;
  for (const c of p.conversations) {
    const li = document.createElement("li");
    li.textContent = (c.group ? "# " : "@ ") + c.title;
    li.dataset.conversation = c.base;
    li.className = c.base === state.conversation ? "active" : "";
    li.onclick = () => { state.conversation = c.base; state.stick = true; renderAll(); showView("chat"); };
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
  $("robot-note").textContent = p.robot_here ? `robot: ${p.robot}` : "the robot runs in another process";
}

function ratingsOf(cardId) {
  const data = platformData(state.page || "");
  return data.ratings.filter((r) => r.card_id === cardId);
}

function buttonState(card, button) {
  const mine = ratingsOf(card.id).filter((r) => r.user_id === state.user);
  const recorded = mine.find((r) => r.recorded);
  const lastRefused = mine.filter((r) => !r.recorded).slice(-1)[0];
  const classes = [];
  if (button.style === "primary") classes.push("primary");
  if (state.pending.has(`${card.id}/${button.id}`)) classes.push("pending");
  if (recorded && recorded.label === button.label) classes.push("chosen");
  else if (lastRefused && lastRefused.label === button.label) classes.push("refused");
  return classes.join(" ");
}

function cardFeedback(card) {
  const lines = [];
  for (const r of ratingsOf(card.id)) {
    const known = userName(r.user_id);
    const who = escapeHtml(known !== r.user_id ? known : (r.user_name || r.user_id));
    if (r.recorded) lines.push(`<div class="recorded">✓ ${who} rated “${escapeHtml(r.label)}” (${clock(r.time)})</div>`);
    else lines.push(`<div class="refused">${who} pressed “${escapeHtml(r.label)}”: not recorded, already rated “${escapeHtml(r.kept || "?")}”</div>`);
  }
  for (const [key, press] of state.pending) {
    if (key.startsWith(card.id + "/")) lines.push(`<div class="muted">${escapeHtml(userName(press.user))} pressed “${escapeHtml(press.label)}”…</div>`);
  }
  if (state.pressErrors.has(card.id)) lines.push(`<div class="failed">${escapeHtml(state.pressErrors.get(card.id))}</div>`);
  return lines.join("");
}

function cardElement(card, readOnly) {
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
        b.className = buttonState(card, button);
        b.disabled = !!readOnly;
        b.onclick = () => press(card, button);
        row.appendChild(b);
      }
      body.appendChild(row);
    }
  }
  const feedback = document.createElement("div");
  feedback.className = "card-feedback";
  feedback.innerHTML = readOnly ? (card.ratings || []).map((r) => `<div class="${r.recorded ? "recorded" : "refused"}">${escapeHtml(r.user_name || r.user_id)}: “${escapeHtml(r.label)}”${r.recorded ? "" : " (not recorded)"}</div>`).join("") : cardFeedback(card);
  if (feedback.innerHTML) body.appendChild(feedback);
  el.appendChild(body);
  const meta = document.createElement("div");
  meta.className = "meta";
  const updated = card.updated && card.updated !== card.created ? `, last ${clock(card.updated)}` : "";
  meta.innerHTML = `<span class="item-time">${clock(card.created)}</span><span>${card.updates || 0} update${card.updates === 1 ? "" : "s"}${updated}</span>`;
  el.appendChild(meta);
  return el;
}

function outcomeText(outcome, robotHere) {
  if (!outcome) return robotHere ? ["sent", "sent"] : ["", ""];
  if (outcome.status === "rejected") {
    const reason = outcome.reason || "";
    if (reason === "robot not mentioned") return ["rejected", "ignored: not mentioned"];
    return ["rejected", `ignored: ${reason}`];
  }
  if (outcome.status === "answered") return ["answered", outcome.answer && outcome.answer !== "final" ? `answer: ${outcome.answer}` : "answered"];
  return ["received", "received"];
}

function messageElement(message, readOnly) {
  const b = document.createElement("div");
  b.className = "bubble " + (message.from_robot ? "robot" : "user");
  b.dataset.messageId = message.id;
  const who = escapeHtml(message.user_name || message.user_id || "");
  // users type plain text (line breaks kept); robots send markdown
  const body = message.from_robot ? `<div class="md">${renderMarkdown(message.text)}</div>` : `<div class="text">${escapeHtml(message.text)}</div>`;
  b.innerHTML = `<div class="who"><span>${who}</span><span class="item-time">${clock(message.time)}</span></div>${body}`;
  if (!message.from_robot) {
    const page = currentPage();
    const outcome = readOnly ? message.outcome : platformData(state.page).outcomes.get(message.id);
    const [kind, text] = outcomeText(outcome, page && page.robot_here);
    const row = document.createElement("div");
    row.className = `outcome ${kind}`;
    b.dataset.outcome = kind;
    if (text) row.innerHTML = `<span class="chip">${escapeHtml(text)}</span>`;
    if (!readOnly) {
      const again = document.createElement("button");
      again.type = "button";
      again.className = "redeliver";
      again.title = "The platform pushes this message to the robot again, as after a lost acknowledgement";
      again.textContent = "redeliver";
      again.onclick = () => redeliver(message.id);
      row.appendChild(again);
    }
    b.appendChild(row);
  }
  return b;
}

function timelineItems() {
  if (state.transcript) {
    return state.transcript.data.items.map((v) => ({ key: `${v.kind}:${v.id}`, t: v.time || v.created || 0, kind: v.kind, v }));
  }
  const data = platformData(state.page || "");
  const conversation = currentConversation();
  const id = conversation ? conversation.id : null;
  const items = [];
  for (const m of data.messages.values()) if (m.conversation_id === id) items.push({ key: `message:${m.id}`, t: m.time, kind: "message", v: m });
  for (const c of data.cards.values()) if (c.conversation_id === id) items.push({ key: `card:${c.id}`, t: c.created, kind: "card", v: c });
  items.sort((a, b) => a.t - b.t);
  return items;
}

function signature(item) {
  const data = platformData(state.page || "");
  if (item.kind === "card") {
    const pending = [...state.pending.keys()].filter((k) => k.startsWith(item.v.id + "/"));
    return JSON.stringify([item.v, ratingsOf(item.v.id), pending, state.pressErrors.get(item.v.id) || "", state.user, !!state.transcript]);
  }
  return JSON.stringify([item.v, data.outcomes.get(item.v.id) || null, !!state.transcript]);
}

function atBottom() {
  const t = $("timeline");
  return t.scrollHeight - t.scrollTop - t.clientHeight < 48;
}

function scrollToBottom() {
  const t = $("timeline");
  t.scrollTop = t.scrollHeight;
  $("jump").hidden = true;
}

function renderTimeline() {
  const timeline = $("timeline");
  timeline.className = `timeline platform-${(currentPage() || {}).platform || ""}`;
  const stick = state.stick;
  const existing = new Map();
  for (const child of timeline.children) if (child.dataset.key) existing.set(child.dataset.key, child);
  const items = timelineItems();
  let previous = null;
  let changed = false;
  const keep = new Set();
  for (const item of items) {
    const sig = signature(item);
    let el = existing.get(item.key);
    if (!el || el.dataset.sig !== sig) {
      const fresh = item.kind === "card" ? cardElement(item.v, !!state.transcript) : messageElement(item.v, !!state.transcript);
      fresh.dataset.key = item.key;
      fresh.dataset.sig = sig;
      if (el) el.replaceWith(fresh);
      el = fresh;
      changed = true;
    }
    const expected = previous ? previous.nextSibling : timeline.firstChild;
    if (el !== expected) timeline.insertBefore(el, expected);
    previous = el;
    keep.add(item.key);
  }
  for (const child of [...timeline.children]) if (!keep.has(child.dataset.key)) { child.remove(); changed = true; }
  if (!items.length) {
    const empty = document.createElement("div");
    empty.className = "empty";
    empty.dataset.key = "empty";
    empty.textContent = state.transcript ? "The transcript is empty." : "No messages yet. Say something to the robot.";
    timeline.appendChild(empty);
  }
  if (stick) scrollToBottom();
  else if (changed) $("jump").hidden = false;
}

function renderCalls() {
  const data = platformData(state.page || "");
  const body = $("calls");
  body.innerHTML = "";
  const calls = data.calls.slice(-200).reverse();
  for (const call of calls) {
    const tr = document.createElement("tr");
    tr.className = call.rate_limited ? "rate-limited" : (call.status >= 400 ? "failed" : "");
    const status = call.error ? `${call.status} ${call.error}` : String(call.status);
    tr.innerHTML = `<td>${escapeHtml(clock(call.time))}</td><td>${escapeHtml(call.method + " " + call.route)}</td><td>${escapeHtml(status)}</td>`;
    tr.title = "Show this call";
    tr.onclick = () => openCall(call);
    body.appendChild(tr);
  }
  const limited = data.calls.filter((c) => c.rate_limited).length;
  $("call-count").textContent = `${data.calls.length} calls, ${limited} rate-limited`;
}

function json(value) {
  if (value === undefined || value === null) return null;
  if (typeof value === "string") {
    try { return JSON.stringify(JSON.parse(value), null, 2); } catch (e) { return value; }
  }
  return JSON.stringify(value, null, 2);
}

function openCall(call) {
  $("call-detail-title").textContent = `${call.method} ${call.route}`;
  const rows = [
    ["time", new Date(call.time * 1000).toLocaleString([], { hour12: false })],
    ["status", call.error ? `${call.status} ${call.error}` : String(call.status)],
    ["latency", call.latency_ms === undefined || call.latency_ms === null ? "not measured" : `${call.latency_ms} ms`],
    ["rate limited", call.rate_limited ? "yes" : "no"],
  ];
  $("call-detail-summary").innerHTML = rows.map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd>${escapeHtml(v)}</dd>`).join("");
  const none = "(this platform's emulator does not record it)";
  $("call-detail-request").textContent = json(call.request) || none;
  $("call-detail-response").textContent = json(call.response) || none;
  $("call-detail-raw").textContent = JSON.stringify(call, null, 2);
  const dialog = $("call-detail");
  if (!dialog.open) dialog.showModal();
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

function renderTranscriptBanner() {
  const banner = $("transcript-banner");
  banner.hidden = !state.transcript;
  if (state.transcript) {
    const t = state.transcript.data;
    const saved = t.saved ? new Date(t.saved * 1000).toLocaleString([], { hour12: false }) : "?";
    $("transcript-name").textContent = `Transcript ${state.transcript.name}: ${t.items.length} items from ${t.page || "?"}, saved ${saved}`;
  }
  const composing = !state.transcript;
  $("message-input").disabled = !composing;
  $("send").disabled = !composing;
}

function renderAll() {
  renderTabs();
  renderSidebar();
  renderTranscriptBanner();
  renderTimeline();
  renderCalls();
}

// ------------------------------------------------------------------ actions
async function selectPage(name) {
  state.page = name;
  state.stick = true;
  const p = currentPage();
  if (!p.conversations.some((c) => c.base === state.conversation)) state.conversation = p.conversations[0].base;
  try { await loadState(name); } catch (e) { showError(`Could not load ${name}: ${e.message}`); }
  renderAll();
}

async function loadState(name) {
  const snapshot = await api(`/api/${name}/state`);
  const data = platformData(name);
  for (const m of snapshot.messages) data.messages.set(m.id, m);
  for (const c of snapshot.cards) data.cards.set(c.id, c);
  data.calls = snapshot.calls;
  for (const [id, outcome] of Object.entries(snapshot.outcomes || {})) data.outcomes.set(id, outcome);
  data.ratings = snapshot.ratings || [];
  data.platformIds = snapshot.platform_ids || {};
}

async function reloadPages() {
  state.pages = await api("/api/platforms");
}

function showError(text) {
  const box = $("send-error");
  box.textContent = text;
  box.hidden = !text;
}

async function press(card, button) {
  const key = `${card.id}/${button.id}`;
  state.pending.set(key, { user: state.user, label: button.label, time: Date.now() / 1000 });
  state.pressErrors.delete(card.id);
  renderTimeline();
  const page = state.page;
  try {
    await api(`/api/${page}/press`, { card_id: card.id, button_id: button.id, user_id: state.user });
    setTimeout(renderFeedback, 300);
    setTimeout(() => {
      if (state.pending.delete(key)) {
        const p = currentPage();
        if (!(p && p.robot_here)) state.pressErrors.set(card.id, `pressed “${button.label}” (the robot runs in another process)`);
        else state.pressErrors.set(card.id, `pressed “${button.label}”; the robot has not recorded it yet`);
        renderTimeline();
      }
    }, 10000);
  } catch (e) {
    state.pending.delete(key);
    state.pressErrors.set(card.id, `Could not press “${button.label}”: ${e.message}`);
    renderTimeline();
  }
}

async function redeliver(messageId) {
  try {
    await api(`/api/${state.page}/redeliver`, { message_id: messageId });
    $("fault-status").textContent = `message ${messageId} redelivered (the robot should drop it as a duplicate)`;
  } catch (e) {
    $("fault-status").textContent = `Could not redeliver: ${e.message}`;
  }
  showView("chat");
}

async function send(text, mention) {
  const conversation = currentConversation();
  return api(`/api/${state.page}/messages`, {
    text, conversation_id: conversation.id, group: conversation.group,
    user_id: state.user, mention: !conversation.group || mention,
  });
}

function growInput() {
  const input = $("message-input");
  input.style.height = "";
  if (input.value) input.style.height = `${Math.min(input.scrollHeight + 2, 160)}px`;
}

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("message-input");
  const text = input.value;
  if (!text.trim() || !state.page || state.transcript) return;
  $("send").disabled = true;
  try {
    await send(text, $("mention").checked);
    input.value = "";            // only once sent: a failed send keeps what was typed
    growInput();
    showError("");
    state.stick = true;
    scrollToBottom();
  } catch (e) {
    showError(`Could not send: ${e.message}. Your message is still in the box.`);
  } finally {
    $("send").disabled = false;
    input.focus();
  }
});

$("message-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("message-input").addEventListener("input", growInput);

$("user-picker").addEventListener("change", (e) => { state.user = e.target.value; renderTimeline(); });

$("timeline").addEventListener("scroll", () => {
  state.stick = atBottom();
  if (state.stick) $("jump").hidden = true;
});
$("jump").onclick = () => { state.stick = true; scrollToBottom(); };

async function fault(kind, value) {
  try {
    await api(`/api/${state.page}/faults`, { kind, value });
    $("fault-status").textContent = kind === "drop" ? "connection dropped; the robot reconnects" : `${kind} set to ${value}`;
  } catch (e) {
    $("fault-status").textContent = e.message;
  }
}
$("fault-drop").onclick = () => fault("drop", null);
$("fault-errors").onchange = (e) => fault("errors", parseFloat(e.target.value));
$("fault-rate-limit").onchange = (e) => fault("rate_limit", parseFloat(e.target.value));
$("fault-latency").onchange = (e) => fault("latency", parseFloat(e.target.value));
$("redeliver-last").onclick = () => {
  const conversation = currentConversation();
  const data = platformData(state.page || "");
  const mine = [...data.messages.values()].filter((m) => !m.from_robot && conversation && m.conversation_id === conversation.id);
  const last = mine[mine.length - 1];
  if (!last) { $("fault-status").textContent = "no message to redeliver in this conversation"; return; }
  redeliver(last.id);
};

// ------------------------------------------------------------------ transcripts
$("save-transcript").onclick = async () => {
  const conversation = currentConversation();
  if (!conversation) return;
  try {
    const transcript = await api(`/api/${state.page}/transcript?conversation_id=${encodeURIComponent(conversation.id)}`);
    const blob = new Blob([JSON.stringify(transcript, null, 2)], { type: "application/json" });
    const a = document.createElement("a");
    const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
    a.href = URL.createObjectURL(blob);
    a.download = `transcript-${state.page}-${conversation.base}-${stamp}.json`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    $("transcript-status").textContent = `saved ${transcript.items.length} items`;
  } catch (e) {
    $("transcript-status").textContent = `Could not save: ${e.message}`;
  }
};

$("load-transcript").onchange = async (event) => {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  try {
    const data = JSON.parse(await file.text());
    if (!data || !data.imrobots_transcript || !Array.isArray(data.items)) throw new Error("not an imrobots transcript");
    state.transcript = { name: file.name, data };
    state.stick = true;
    $("transcript-status").textContent = `loaded ${file.name}`;
    renderAll();
    showView("chat");
  } catch (e) {
    $("transcript-status").textContent = `Could not load ${file.name}: ${e.message}`;
  }
};

$("close-transcript").onclick = () => { state.transcript = null; state.stick = true; renderAll(); };

function waitFor(predicate, timeout) {
  return new Promise((resolve) => {
    const started = Date.now();
    const check = () => {
      if (predicate() || Date.now() - started > timeout) { state.waiters = state.waiters.filter((w) => w !== check); resolve(); return true; }
      return false;
    };
    if (!check()) state.waiters.push(check);
    setTimeout(check, timeout + 10);
  });
}

$("replay-transcript").onclick = async () => {
  const transcript = state.transcript;
  if (!transcript) return;
  const said = transcript.data.items.filter((i) => i.kind === "message" && !i.from_robot);
  state.transcript = null;
  state.stick = true;
  renderAll();
  const data = platformData(state.page);
  for (const [n, message] of said.entries()) {
    const mention = /^@\S+\s/.test(message.text);
    const text = mention ? message.text.replace(/^@\S+\s+/, "") : message.text;
    $("transcript-status").textContent = `replaying ${n + 1} of ${said.length}…`;
    let sent;
    try { sent = await send(text, mention); } catch (e) { $("transcript-status").textContent = `replay stopped: ${e.message}`; return; }
    const conversation = currentConversation();
    await waitFor(() => {
      const outcome = data.outcomes.get(sent.view_id);
      if (!outcome) return false;
      if (outcome.status !== "received") return true;
      const busy = [...data.cards.values()].some((c) => c.conversation_id === conversation.id && (c.status === "thinking" || c.status === "streaming"));
      return !busy;
    }, 60000);
  }
  $("transcript-status").textContent = `replayed ${said.length} messages`;
};

$("clear-conversation").onclick = async () => {
  const conversation = currentConversation();
  if (!conversation) return;
  try {
    await api(`/api/${state.page}/clear`, { conversation_id: conversation.id });
    await reloadPages();
    state.stick = true;
    renderAll();
    $("transcript-status").textContent = "a fresh conversation: the robot starts without history";
  } catch (e) {
    $("transcript-status").textContent = `Could not clear: ${e.message}`;
  }
};

// ------------------------------------------------------------------ live events
function onEvent(e) {
  const data = platformData(e.platform);
  if (e.type === "card") data.cards.set(e.card.id, e.card);
  else if (e.type === "message") data.messages.set(e.message.id, e.message);
  else if (e.type === "call") data.calls.push(e.call);
  else if (e.type === "outcome") data.outcomes.set(e.outcome.message_id, e.outcome);
  else if (e.type === "rating") {
    data.ratings.push(e.rating);
    for (const [key, p] of state.pending) {
      if (key.startsWith(e.rating.card_id + "/") && p.user === e.rating.user_id && p.label === e.rating.label) state.pending.delete(key);
    }
    renderFeedback();
  } else if (e.type === "feedback") renderFeedback();
  if (e.platform === state.page && !state.transcript) {
    if (e.type === "call") renderCalls(); else renderTimeline();
  }
  for (const check of [...state.waiters]) check();
}

function connectEvents() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/events`);
  ws.onopen = async () => {
    $("connection").textContent = "live";
    $("connection").className = "pill ok";
    if (state.page) { try { await loadState(state.page); renderAll(); } catch (e) { /* shown on the next event */ } }
  };
  ws.onclose = () => {
    $("connection").textContent = "disconnected";
    $("connection").className = "pill";
    setTimeout(connectEvents, 1000);
  };
  ws.onmessage = (event) => onEvent(JSON.parse(event.data));
}

async function main() {
  try {
    await reloadPages();
  } catch (e) {
    showError(`The console's server is not reachable: ${e.message}`);
    return;
  }
  if (state.pages.length) await selectPage(state.pages[0].name);
  connectEvents();
  renderFeedback();
}

main();
