/* Switchboard portal: an inbox for supervisors, live without polling.

   Every view has its own address (/portal/conversations/12, /portal/activity/34, ...): back,
   forward and reload work. What changes reaches the page over one WebSocket (/portal/live): the
   server says which conversations and activities changed, and the page fetches just those; it
   resumes from its last marks after a drop and asks nothing while nothing happens. New messages
   never move a reader who scrolled up: a "new messages" button appears instead. Nothing anyone
   wrote is ever read as HTML (text nodes only). */
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (typeof value === "function") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
};

const state = {
  me: null, csrf: null, view: "conversations", id: null,
  inbox: [], filter: { view: "all", channel: "", status: "", people: "visitors" }, readUpTo: {},
  conversation: null, messages: [], lastMessageId: 0, takeover: null,
  marks: { last_message_id: null, last_event_id: null }, socket: null, attempt: 0,
  wanting: new Set(), inboxLoaded: false, activities: [], activity: null, refreshTimer: null,
};

/* ---------- HTTP ---------- */
async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (options.method && options.method !== "GET") {
    headers["X-CSRF-Token"] = state.csrf;
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
  if (response.status === 401) { showLogin(); throw new Error("logged out"); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) { const error = new Error(body.detail || response.statusText); error.status = response.status; throw error; }
  return body;
}
function toast(text) {
  const node = el("div", { class: "toast", role: "status", text });
  document.body.append(node);
  setTimeout(() => node.remove(), 4000);
}
async function act(promise) {
  try { return await promise; } catch (error) { toast(error.message); return null; }
}
/* A list that could not be read says so, with a way to try again, instead of "Loading…" for
   ever; one already drawn stays as it is (the toast says what failed). */
function unreadable(node, what, again) {
  // (already saying so: left as it is, so the keyboard keeps its place on "Try again")
  if (!node || node.querySelector(".conv, table, .stat, [role=alert]")) return;
  node.replaceChildren(el("div", { class: "empty", role: "alert" }, el("p", { text: `Could not load ${what}.` }),
    el("button", { class: "btn", type: "button", text: "Try again", onclick: again })));
}

/* ---------- words ---------- */
const initials = (name) => (name || "?").split(/\s+/).filter(Boolean).slice(0, 2).map((w) => w[0].toUpperCase()).join("") || "?";
const clock = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
const day = (iso) => new Date(iso).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
function ago(iso) {
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}
const statusPill = (status) => el("span", { class: `status ${status}`, text: status.replace(/_/g, " ") });

/* ---------- unread: each supervisor's read marks, kept by the server (the same on every device) ---------- */
const unreadText = (n) => (n >= 100 ? "99+" : String(n));
async function markRead(id, messageId) {
  if ((state.readUpTo[id] || 0) >= messageId) return;
  state.readUpTo[id] = messageId;
  const mark = await api(`/api/v1/conversations/${id}/read`, { method: "POST", body: JSON.stringify({ message_id: messageId }) }).catch(() => null);
  const row = state.inbox.find((r) => r.id === id);
  if (mark && row && row.unread) { row.unread = 0; renderInbox(); }
}

/* ---------- routing ---------- */
function go(path, replace = false) {
  if (location.pathname !== path) history[replace ? "replaceState" : "pushState"]({}, "", path);
  route();
}
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href^='/portal']");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  go(link.getAttribute("href"));
});
window.addEventListener("popstate", route);
function route() {
  const [, , view = "conversations", id] = location.pathname.split("/");
  const views = { conversations: showConversations, approvals: showApprovals, reviews: showReviews, activity: showActivity, workers: showWorkers };
  state.view = views[view] ? view : "conversations";
  state.id = id && /^\d+$/.test(id) ? Number(id) : null;
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    if (link.dataset.view === state.view) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  (views[state.view])();
}

/* ---------- live ---------- */
function connect() {
  if (state.socket) state.socket.close();
  const socket = new WebSocket(`${location.origin.replace(/^http/, "ws")}/portal/live`);
  state.socket = socket;
  socket.onopen = () => socket.send(JSON.stringify({ csrf: state.csrf, ...state.marks }));
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === "ready") {
      advance(frame);
      state.attempt = 0;
      // What changed between the page's first reads and the watch's start: read once more.
      changed({ conversations: state.conversation ? [state.conversation.id] : [], activities: [] });
    } else if (frame.type === "changed") {
      advance(frame);
      changed(frame);
    }
  };
  socket.onclose = () => {
    if (state.socket !== socket || !state.me) return;
    const delay = Math.min(15000, 500 * 2 ** state.attempt) * (0.75 + Math.random() / 2);
    state.attempt += 1;
    setTimeout(connect, delay);
  };
}
function advance(frame) {  // marks only move forward (a catch-up frame may trail the live ones)
  const mark = (key) => Math.max(state.marks[key] || 0, frame[key]);
  state.marks = { last_message_id: mark("last_message_id"), last_event_id: mark("last_event_id") };
}
function changed(frame) {
  if (state.view === "conversations" && state.conversation && frame.conversations.includes(state.conversation.id)) refreshConversation();
  clearTimeout(state.refreshTimer);  // a burst of changes: one refresh
  state.refreshTimer = setTimeout(() => {
    refreshCounts();
    if (state.view === "conversations") loadInbox();
    else if (state.view === "approvals") loadApprovals();
    else if (state.view === "activity") loadActivities(frame.activities);
    else if (state.view === "reviews") loadReviews(frame.activities);
    else if (state.view === "workers") loadWorkers();
  }, 100);
}

/* ---------- conversations ---------- */
function layout(kind) {
  $("app").className = kind;  // (the person's panel closed, too)
  state.conversation = null;  // a view drawn afresh shows no conversation until one is opened
  const view = $("view");
  view.replaceChildren();
  return view;
}
function showConversations() {
  if (!$("inbox")) {
    const view = layout("");
    const tabs = el("div", { class: "tabs", role: "group", "aria-label": "Whose" },
      ...[["all", "All"], ["mine", "Mine"], ["unassigned", "Unassigned"]].map(([value, label]) =>
        el("button", { type: "button", "data-filter": value, "aria-pressed": String(state.filter.view === value),
          onclick: () => { state.filter.view = value; for (const b of tabs.children) b.setAttribute("aria-pressed", String(b.dataset.filter === value)); loadInbox(); }, text: label })));
    const channel = el("select", { id: "f-channel", "aria-label": "Channel", onchange: () => { state.filter.channel = channel.value; loadInbox(); } },
      el("option", { value: "", text: "Every channel" }));
    const people = el("select", { id: "f-people", "aria-label": "Whose conversations", onchange: () => { state.filter.people = people.value; loadInbox(); } },
      el("option", { value: "visitors", text: "Visitors" }), el("option", { value: "staff", text: "Staff" }), el("option", { value: "everyone", text: "Everyone" }));
    const status = el("select", { id: "f-status", "aria-label": "Status", onchange: () => { state.filter.status = status.value; renderInbox(); } },
      el("option", { value: "", text: "Any status" }), el("option", { value: "person", text: "Asked for a person" }),
      el("option", { value: "waiting", text: "Waiting for an answer" }), el("option", { value: "taken", text: "Taken over" }));
    view.append(
      el("section", { class: "column", "aria-labelledby": "h-inbox" },
        el("header", {}, el("h1", { id: "h-inbox", text: "Conversations" }), tabs, el("div", { class: "filters" }, people, channel, status)),
        el("div", { class: "scroll", id: "inbox", role: "list", "aria-label": "Conversations" }, el("div", { class: "empty", text: "Loading…" }))),
      el("main", { id: "conversation", "aria-live": "off" }, el("div", { class: "empty", text: "Choose a conversation." })),
      el("aside", { id: "person", "aria-label": "About the person" }));
    loadInbox();
  } else renderInbox();
  if (state.id !== null) openConversation(state.id);
  else {
    state.conversation = null;
    $("conversation").replaceChildren(el("div", { class: "empty", text: "Choose a conversation." }));
    $("person").replaceChildren(el("p", { class: "muted", text: "Who is behind a conversation shows here when you open it." }));
  }
}
async function loadInbox() {
  const params = new URLSearchParams({ view: state.filter.view, people: state.filter.people, limit: "100" });
  if (state.filter.channel) params.set("channel", state.filter.channel);
  const rows = await act(api(`/api/v1/inbox?${params}`));
  if (!rows) { unreadable($("inbox"), "the conversations", () => loadInbox()); return; }
  notifyNew(rows);
  state.inbox = rows;
  const select = $("f-channel");
  if (select) {
    const known = new Set([...select.options].map((o) => o.value));
    for (const channel of new Set(rows.map((r) => r.channel))) if (!known.has(channel)) select.append(el("option", { value: channel, text: channel }));
  }
  renderInbox();
}
function notifyNew(rows) {
  const wanting = new Set(rows.filter((r) => r.wants_person).map((r) => r.id));
  const fresh = [...wanting].filter((id) => !state.wanting.has(id));
  if (state.inboxLoaded) {  // not for what was already waiting when the page opened
    for (const id of fresh) {
      const row = rows.find((r) => r.id === id);
      if ("Notification" in window && Notification.permission === "granted") {
        new Notification("A person is asked for", { body: `${row.name} (${row.channel}): ${row.last_text}`, tag: `conversation-${id}` });
      }
    }
  }
  // Remembered across views: switching filters shows no one twice.
  for (const r of rows) { if (r.wants_person) state.wanting.add(r.id); else state.wanting.delete(r.id); }
  state.inboxLoaded = true;
  const count = $("nav-person");
  count.hidden = wanting.size === 0;
  count.textContent = String(wanting.size);
}
/* Redrawing a list keeps the keyboard's place: the row that had the focus has it again. */
function keepingFocus(list, key, draw) {
  const had = list.contains(document.activeElement) ? document.activeElement.dataset[key] : undefined;
  draw();
  if (had === undefined) return;
  const again = list.querySelector(`[data-${key}="${had}"]`);
  if (again) again.focus({ preventScroll: true });
}
function renderInbox() {
  const list = $("inbox");
  if (!list) return;
  keepingFocus(list, "conversation", () => drawInbox(list));
}
function drawInbox(list) {
  const keep = list.scrollTop;
  const rows = state.inbox.filter((r) => !state.filter.status
    || (state.filter.status === "person" && r.wants_person)
    || (state.filter.status === "waiting" && r.waiting_since)
    || (state.filter.status === "taken" && r.taken_over));
  if (!rows.length) { list.replaceChildren(el("div", { class: "empty", text: "No conversation here." })); return; }
  list.replaceChildren(...rows.map((r) => {
    const unread = r.unread;
    const current = state.conversation && state.conversation.id === r.id;
    const last = `${r.last_direction === "outbound" ? "↩ " : ""}${r.last_text || "—"}`;
    return el("a", { href: `/portal/conversations/${r.id}`, class: `conv${r.wants_person ? " wants" : ""}`, role: "listitem",
      "data-conversation": String(r.id), "aria-current": current ? "true" : null },
      el("span", { class: "avatar", "aria-hidden": "true", text: initials(r.name) }),
      el("span", { class: "name", text: r.name }),
      el("span", { class: "when", "data-at": r.last_at || "", text: r.last_at ? ago(r.last_at) : "" }),
      el("span", { class: "last", text: last }),
      el("span", { class: "tags" },
        unread && !current ? el("span", { class: "pill unread", "aria-label": `${unreadText(unread)} unread`, text: unreadText(unread) }) : null),
      el("span", { class: "sub" },
        r.wants_person ? el("span", { class: "pill person", "data-badge": "person", text: "asked for a person" }) : null,
        el("span", { text: r.channel }),
        r.waiting_since ? el("span", { "data-at": r.waiting_since, "data-prefix": "waiting ", text: `waiting ${ago(r.waiting_since)}` }) : null,
        r.taken_over ? el("span", { class: "pill taken", text: r.assignee_name ? `with ${r.assignee_name}` : "taken over" }) : null,
        !r.taken_over && r.assignee_name ? el("span", { text: `→ ${r.assignee_name}` }) : null));
  }));
  list.scrollTop = keep;
}
async function openConversation(id) {
  if (!state.conversation || state.conversation.id !== id) {
    state.conversation = { id };
    state.messages = [];
    state.lastMessageId = 0;
    $("conversation").replaceChildren(el("div", { class: "empty", text: "Loading…" }));
  }
  renderInbox();
  await refreshConversation(true);
  loadPerson(id);
}
async function refreshConversation(opening = false) {
  const id = state.conversation.id;
  const [fresh, takeover] = await Promise.all([
    // Opening: the latest 200; then whatever came after the last one shown, and again those
    // still on their way (their delivery moves on: "pending" becomes "delivered").
    act(api(`/api/v1/conversations/${id}/messages?${opening ? "latest=true&limit=200" : `after=${readFrom()}&limit=500`}`)),
    api(`/api/v1/conversations/${id}/takeover`).catch(() => null),
  ]);
  if (!fresh || !state.conversation || state.conversation.id !== id) return;
  const row = state.inbox.find((r) => r.id === id);
  state.takeover = takeover;
  if (opening || !$("transcript")) {
    renderConversationShell(row);  // a fresh transcript: everything fetched is drawn
    state.messages = [];
    opening = true;
  } else renderConversationHeader(row);
  // Messages already shown may have moved on (a delivery): drawn again in place, not appended.
  const shown = new Map(state.messages.map((m) => [m.id, m]));
  const added = fresh.filter((m) => !shown.has(m.id));
  for (const m of fresh) if (shown.has(m.id)) Object.assign(shown.get(m.id), m);
  state.messages.push(...added);
  state.lastMessageId = Math.max(state.lastMessageId, ...fresh.map((m) => m.id));
  appendMessages(added, opening);
  readIfAtBottom();
}
const IN_FLIGHT = new Set(["pending", "sending", "queued", "sent"]);
function readFrom() {  // (among the latest 50: what is older and still "sent" is not re-read forever)
  const moving = state.messages.slice(-50).filter((m) => m.direction === "outbound" && IN_FLIGHT.has(m.delivery)).map((m) => m.id);
  return moving.length ? Math.min(...moving) - 1 : state.lastMessageId;
}
function readIfAtBottom() {
  // What the reader has in front of them, read to the end, is no longer unread.
  const transcript = $("transcript");
  if (!transcript || !state.conversation || !atBottom(transcript)) return;
  if (state.lastMessageId) markRead(state.conversation.id, state.lastMessageId);
}
function renderConversationShell(row) {
  const main = $("conversation");
  const transcript = el("div", { class: "transcript", id: "transcript", role: "log", "aria-label": "Messages", tabindex: "0" });
  const newer = el("button", { class: "newer", id: "newer", type: "button", hidden: true, onclick: () => { transcript.scrollTop = transcript.scrollHeight; newer.hidden = true; } });
  transcript.addEventListener("scroll", () => {
    if (!atBottom(transcript)) return;
    newer.hidden = true;
    newer.dataset.count = "0";
    readIfAtBottom();
  });
  main.replaceChildren(el("header", { id: "conv-header" }), el("div", { class: "transcript-wrap" }, transcript, newer), el("div", { id: "composer" }));
  renderConversationHeader(row);
}
function renderConversationHeader(row) {
  const id = state.conversation.id;
  const mine = state.takeover && state.takeover.by === state.me.user.id;
  const name = row ? row.name : `Conversation #${id}`;
  const sub = row ? [row.channel, row.language ? `language ${row.language}` : null, row.assignee_name ? `assigned to ${row.assignee_name}` : "unassigned"].filter(Boolean).join(" · ") : "";
  const actions = el("div", { class: "actions" });
  if (!state.takeover) actions.append(el("button", { class: "btn primary", type: "button", id: "take-over", text: "Take over", onclick: () => conversationAction(id, "takeover") }));
  else if (mine) actions.append(el("button", { class: "btn", type: "button", id: "hand-back", text: "Hand back to the bot", onclick: () => conversationAction(id, "handback") }));
  const assignedToMe = row && row.assignee_user_id === state.me.user.id;
  actions.append(assignedToMe
    ? el("button", { class: "btn", type: "button", text: "Unassign", onclick: () => assign(id, null) })
    : el("button", { class: "btn", type: "button", text: "Assign to me", onclick: () => assign(id, state.me.user.id) }));
  actions.append(el("button", { class: "btn compact-only", type: "button", id: "about-toggle", "aria-controls": "person",
    "aria-expanded": String($("app").classList.contains("show-person")), text: "About", onclick: () => showPerson(!$("app").classList.contains("show-person")) }));
  $("conv-header").replaceChildren(
    el("span", { class: "avatar", "aria-hidden": "true", text: initials(name) }),
    el("div", { class: "title" }, el("h2", { text: name }), el("div", { class: "sub", text: sub })),
    el("div", { class: "badges" },
      row && row.wants_person ? el("span", { class: "pill person", text: "asked for a person" }) : null,
      state.takeover ? el("span", { class: "pill taken", text: mine ? "you have it" : "taken over" }) : el("span", { class: "pill", text: "the bot answers" })),
    actions);
  const composer = $("composer");
  if (mine) {
    if (!$("reply-form")) {
      const text = el("textarea", { id: "reply-text", maxlength: "4000", "aria-label": "Reply to the person", placeholder: "Write to the person… (Enter sends)" });
      text.addEventListener("keydown", (event) => { if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); } });
      const form = el("form", { class: "composer", id: "reply-form" }, text, el("button", { class: "btn primary", type: "submit", text: "Send" }));
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const value = text.value.trim();
        if (!value) return;
        if (await act(api(`/api/v1/conversations/${id}/reply`, { method: "POST", body: JSON.stringify({ text: value }) }))) text.value = "";
      });
      composer.replaceChildren(form);
    }
  } else composer.replaceChildren(el("div", { class: "notice", text: state.takeover ? "Someone else has taken this conversation over." : "The bot answers this conversation. Take it over to write yourself." }));
}
const atBottom = (node) => node.scrollHeight - node.scrollTop - node.clientHeight < 48;
function appendMessages(added, opening) {
  const transcript = $("transcript");
  if (!transcript) return;
  const stay = opening || atBottom(transcript);
  for (const m of state.messages) {
    const node = transcript.querySelector(`[data-message="${m.id}"]`);
    if (node && !added.includes(m)) { const meta = node.querySelector(".meta"); if (meta) meta.textContent = metaText(m); }
  }
  const row = state.inbox.find((r) => r.id === state.conversation.id);
  for (const m of added) transcript.append(messageNode(m, row));
  if (!state.messages.length) transcript.replaceChildren(el("div", { class: "empty", text: "No message yet." }));
  if (stay) transcript.scrollTop = transcript.scrollHeight;
  else if (added.length) {
    const newer = $("newer");
    const count = (Number(newer.dataset.count) || 0) + added.length;
    newer.dataset.count = String(count);
    newer.textContent = `${count} new message${count === 1 ? "" : "s"} ↓`;
    newer.hidden = false;
  }
  if (stay) { const newer = $("newer"); newer.hidden = true; newer.dataset.count = "0"; }
}
function metaText(m) {
  const when = clock(m.received_at);
  if (m.direction === "inbound") return m.state === "human" ? `${when} · for you` : when;
  return `${when} · ${m.delivery || ""}`;
}
function messageNode(m, row) {
  const inbound = m.direction === "inbound";
  const kind = inbound ? "in" : m.author ? "out human" : "out bot";
  const who = inbound ? (row ? row.name : "person") : m.author || "Bot";
  return el("div", { class: `msg ${kind}`, "data-message": String(m.id) },
    el("span", { class: `avatar small${inbound ? "" : m.author ? " human" : " bot"}`, "aria-hidden": "true", text: inbound ? initials(who) : m.author ? initials(m.author) : "SB" }),
    el("div", { class: "body" }, el("span", { class: "who", text: who }), el("div", { class: "bubble", text: m.text }),
      m.choices && m.choices.length ? el("div", { class: "choices" }, ...m.choices.map((c) => el("span", { class: "pill", text: c.label }))) : null,
      el("span", { class: "meta", text: metaText(m) })));
}
async function conversationAction(id, what) {
  await act(api(`/api/v1/conversations/${id}/${what}`, { method: "POST" }));
  await loadInbox();
  await refreshConversation(false);
  // Where the hands go next: the reply box once it is yours, the way back to the bot otherwise.
  const next = $(what === "takeover" ? "reply-text" : "take-over");
  if (next) next.focus();
}
async function assign(id, userId) {
  await act(api(`/api/v1/conversations/${id}/assign`, { method: "POST", body: JSON.stringify({ user_id: userId }) }));
  await loadInbox();
  refreshConversation(false);
}
function showPerson(shown) {
  // On a tablet the person's panel opens over the conversation (Escape or its button closes it).
  $("app").classList.toggle("show-person", shown);
  const toggle = $("about-toggle");
  if (toggle) toggle.setAttribute("aria-expanded", String(shown));
  if (shown) { const close = $("about-close"); if (close) close.focus(); } else if (toggle) toggle.focus();
}
document.addEventListener("keydown", (event) => { if (event.key === "Escape" && $("app").classList.contains("show-person")) showPerson(false); });
async function loadPerson(id) {
  const person = await act(api(`/api/v1/conversations/${id}/person`));
  if (!person || !state.conversation || state.conversation.id !== id) return;
  $("person").replaceChildren(
    el("button", { class: "btn compact-only", type: "button", id: "about-close", text: "Close", onclick: () => showPerson(false) }),
    el("section", {}, el("h3", { text: "Person" }), el("dl", { class: "fields" },
      el("dt", { text: "Name" }), el("dd", { text: person.name }),
      el("dt", { text: "Role" }), el("dd", { text: person.role || "—" }),
      el("dt", { text: "Language" }), el("dd", { text: person.language || "not known yet" }))),
    el("section", {}, el("h3", { text: "Reached at" }), person.identities.length
      ? el("ul", { class: "plain" }, ...person.identities.map(([kind, address]) => el("li", { text: `${kind}: ${address}` })))
      : el("p", { class: "muted", text: "Only this conversation." })),
    el("section", {}, el("h3", { text: "Recent requests" }), person.recent.length
      ? el("ul", { class: "plain" }, ...person.recent.map((a) => el("li", {}, el("a", { href: `/portal/activity/${a.id}` }, el("span", { text: `#${a.id} ${a.action}` }), statusPill(a.status)))))
      : el("p", { class: "muted", text: "None yet." })));
}

/* ---------- activities and approvals ---------- */
function activityTable(items, { decide = false } = {}) {
  if (!items.length) return el("div", { class: "empty", text: decide ? "Nothing waits for a decision." : "No activity yet." });
  return el("table", {}, el("thead", {}, el("tr", {}, ...[["#"], ["Request"], ["Asked by"], ["Status"], ["Channel", "roomy"], ["When", "roomy"]].map(([h, kind]) => el("th", { text: h, class: kind })))),
    el("tbody", {}, ...items.map((a) => {
      const row = el("tr", { tabindex: "0", "data-activity": String(a.id), "aria-current": state.id === a.id ? "true" : null,
        onclick: () => go(`/portal/${state.view}/${a.id}`), onkeydown: (e) => { if (e.key === "Enter") go(`/portal/${state.view}/${a.id}`); } },
        el("td", { text: `#${a.id}` }),
        el("td", {}, el("span", { class: "req", text: a.request_text || a.action_description || `${a.agent_name}.${a.action_type}` }),
          el("span", { class: "muted", text: a.action_description || `${a.agent_name}.${a.action_type}` })),
        el("td", { text: a.actor_name || (a.details.provenance || {}).api || "—" }),
        el("td", {}, statusPill(a.status)), el("td", { class: "roomy", text: a.source_channel || "api" }), el("td", { class: "roomy", text: ago(a.created_at), "data-at": a.created_at }));
      return row;
    })));
}
function fields(object, depth = 0) {
  // Labelled fields, nested ones within (a money amount reads "120 EUR"); the raw JSON is
  // behind its own toggle.
  const entries = Object.entries(object || {});
  if (!entries.length) return el("p", { class: "muted", text: "—" });
  const shown = (value) => {
    if (value === null || value === undefined) return el("span", { class: "muted", text: "—" });
    if (Array.isArray(value)) return value.every((v) => typeof v !== "object" || v === null) ? document.createTextNode(value.join(", ")) : document.createTextNode(JSON.stringify(value));
    if (typeof value !== "object") return document.createTextNode(String(value));
    const keys = Object.keys(value);
    if (keys.length === 2 && "value" in value && "currency" in value) return document.createTextNode(`${value.value} ${value.currency}`);
    return depth < 2 ? fields(value, depth + 1) : document.createTextNode(JSON.stringify(value));
  };
  return el("dl", { class: "fields" }, ...entries.flatMap(([key, value]) => [
    el("dt", { text: key.replace(/_/g, " ") }), el("dd", {}, shown(value))]));
}
async function renderDetail(id, into) {
  const a = await act(api(`/api/v1/activities/${id}`));
  if (!a) { into.replaceChildren(el("div", { class: "empty", text: "No such activity." })); return; }
  state.activity = a;
  const actions = el("div", { class: "actions" });
  const then = async (promise) => { if (await act(promise)) { renderDetail(id, into); refreshCounts(); } };
  if (a.status === "awaiting_approval") {
    actions.append(el("button", { class: "btn good", type: "button", text: "Approve", onclick: () => then(api(`/api/v1/activities/${id}/approve`, { method: "POST" })) }),
      el("button", { class: "btn bad", type: "button", text: "Reject", onclick: () => then(api(`/api/v1/activities/${id}/reject`, { method: "POST" })) }));
  }
  if (["queued", "awaiting_approval", "pending", "in_progress"].includes(a.status)) {
    actions.append(el("button", { class: "btn", type: "button", text: "Cancel", onclick: () => then(api(`/api/v1/activities/${id}/cancel`, { method: "POST" })) }));
  }
  if (["failed", "cancelled", "expired"].includes(a.status)) {
    actions.append(el("button", { class: "btn", type: "button", text: "Retry", onclick: async () => { const r = await act(api(`/api/v1/activities/${id}/retry`, { method: "POST" })); if (r) go(`/portal/${state.view}/${r.activity_id}`); } }));
  }
  const result = a.details.result || {};
  into.replaceChildren(
    el("header", {}, el("h2", { id: "detail-title", text: `#${a.id} ${a.action_description || `${a.agent_name}.${a.action_type}`}` }), el("div", {}, statusPill(a.status))),
    actions,
    el("section", {}, el("h3", { text: "Request" }), el("dl", { class: "fields" },
      el("dt", { text: "Asked" }), el("dd", { text: a.request_text || "—" }),
      el("dt", { text: "By" }), el("dd", { text: a.actor_name || "—" }),
      el("dt", { text: "Channel" }), el("dd", { text: a.source_channel || "api" }),
      el("dt", { text: "Action" }), el("dd", { text: `${a.agent_name}.${a.action_type}` }),
      el("dt", { text: "Priority" }), el("dd", { text: a.priority }),
      el("dt", { text: "Created" }), el("dd", { text: day(a.created_at) }))),
    el("section", {}, el("h3", { text: "Payload" }), fields(a.details.payload)),
    el("section", {}, el("h3", { text: "Result" }), result.text ? el("p", { text: result.text }) : null,
      Object.keys(result).some((k) => k !== "text") || !result.text ? fields(Object.fromEntries(Object.entries(result).filter(([k]) => k !== "text"))) : null,
      a.details.error ? el("p", { class: "error", text: a.details.error.message || a.details.error.reason }) : null),
    el("details", { class: "raw" }, el("summary", { text: "Raw JSON" }), el("pre", { text: JSON.stringify(a.details, null, 2) })),
    el("section", {}, el("h3", { text: "Timeline" }), el("ol", { class: "timeline" },
      ...a.events.map((e) => el("li", { text: `${day(e.at)} — ${e.kind}${e.status ? ` (${e.status})` : ""} · ${e.actor_name || e.actor}` })))));
}
function showListWithDetail(title, loader) {
  const view = layout("wide");
  view.append(
    el("section", { class: "column", "aria-labelledby": "h-list" }, el("header", {}, el("h1", { id: "h-list", text: title })),
      el("div", { class: "scroll", id: "list" }, el("div", { class: "empty", text: "Loading…" }))),
    el("section", { class: "detail", id: "detail", "aria-labelledby": "detail-title", "aria-live": "polite" },
      el("div", { class: "empty", text: "Choose a row to see it here." })));
  loader();  // it opens the row of the address, if any, once the list is there
}
const showActivity = () => showListWithDetail("Activity", () => loadActivities());
const showApprovals = () => showListWithDetail("Waiting for approval", () => loadApprovals());
async function loadActivities(changedIds = null) {
  const page = await act(api("/api/v1/activities?limit=50"));
  if (!page) { unreadable($("list"), "the activity", () => loadActivities()); return; }
  if (!$("list")) return;
  keepingFocus($("list"), "activity", () => $("list").replaceChildren(activityTable(page.items)));
  if (state.id !== null && (!changedIds || changedIds.includes(state.id))) renderDetail(state.id, $("detail"));
}
async function loadApprovals() {
  const page = await act(api("/api/v1/activities?status=awaiting_approval&limit=100"));
  if (!page) { unreadable($("list"), "the approvals", () => loadApprovals()); return; }
  if (!$("list")) return;
  keepingFocus($("list"), "activity", () => $("list").replaceChildren(activityTable(page.items, { decide: true })));
  if (state.id !== null) renderDetail(state.id, $("detail"));
}
/* ---------- reviews: what external agents handed in, for a person to release ---------- */
function showReviews() {
  const view = layout("wide");
  const tabs = el("div", { class: "tabs", role: "group", "aria-label": "Which tasks" },
    ...[["in_review", "To review"], ["", "All tasks"]].map(([value, label]) =>
      el("button", { type: "button", "data-filter": value, "aria-pressed": String((state.reviewFilter ?? "in_review") === value),
        onclick: () => { state.reviewFilter = value; for (const b of tabs.children) b.setAttribute("aria-pressed", String(b.dataset.filter === value)); loadReviews(); }, text: label })));
  view.append(
    el("section", { class: "column", "aria-labelledby": "h-list" }, el("header", {}, el("h1", { id: "h-list", text: "Reviews" }), tabs),
      el("div", { class: "scroll", id: "list" }, el("div", { class: "empty", text: "Loading…" }))),
    el("section", { class: "detail", id: "detail", "aria-labelledby": "detail-title", "aria-live": "polite" },
      el("div", { class: "empty", text: "Work that agents hand in for a person's review appears here." })));
  loadReviews();
}
async function loadReviews(changedIds = null) {
  const filter = state.reviewFilter ?? "in_review";
  const items = await act(api(`/api/v1/tasks?limit=100${filter ? `&status=${filter}` : ""}`));
  if (!items) { unreadable($("list"), "the reviews", () => loadReviews()); return; }
  if (!$("list")) return;
  keepingFocus($("list"), "task", () => $("list").replaceChildren(taskTable(items)));
  if (state.id !== null && (!changedIds || changedIds.includes(state.id))) renderReview(state.id, $("detail"));
}
function taskTable(items) {
  if (!items.length) return el("div", { class: "empty", text: "Nothing waits for a review." });
  return el("table", {}, el("thead", {}, el("tr", {}, ...[["#"], ["Request"], ["Asked by"], ["Status"], ["Channel", "roomy"]].map(([h, kind]) => el("th", { text: h, class: kind })))),
    el("tbody", {}, ...items.map((t) => el("tr", { tabindex: "0", "data-task": String(t.id), "aria-current": state.id === t.id ? "true" : null,
      onclick: () => go(`/portal/reviews/${t.id}`), onkeydown: (e) => { if (e.key === "Enter") go(`/portal/reviews/${t.id}`); } },
      el("td", { text: `#${t.id}` }),
      el("td", {}, el("span", { class: "req", text: t.request_text || t.title }), el("span", { class: "muted", text: t.title })),
      el("td", { text: t.requester || "—" }), el("td", {}, statusPill(t.status)), el("td", { class: "roomy", text: t.channel || "api" })))));
}
async function renderReview(id, into) {
  const t = await act(api(`/api/v1/tasks/${id}`));
  if (!t) { into.replaceChildren(el("div", { class: "empty", text: "No such task." })); return; }
  $("app").classList.add("reviewing");  // the work under review takes the room (diffs, proposals side by side)
  const decide = async (decision, comment) => {
    // The round on screen goes with the decision: if the task moved on meanwhile, it is refused.
    if (await act(api(`/api/v1/tasks/${id}/review`, { method: "POST", body: JSON.stringify({ decision, comment, round: t.review_round }) }))) { renderReview(id, into); refreshCounts(); }
  };
  const actions = el("div", { class: "review-actions" });
  if (t.status === "in_review") {
    const comment = el("textarea", { id: "review-comment", rows: "3", maxlength: "4000", "aria-label": "Comment for the agent (what to change, or why not)", placeholder: "What to change, or why not (needed to send back or reject)" });
    const needs = (decision) => () => { if (!comment.value.trim()) { comment.focus(); toast("Write what to change, or why not, first."); return; } decide(decision, comment.value.trim()); };
    actions.append(comment, el("div", { class: "actions" },
      el("button", { class: "btn good", type: "button", id: "review-approve", text: "Approve", onclick: () => decide("approve", comment.value.trim()) }),
      // (a council's proposal is approved or rejected: it has no one to send changes to)
      t.council.length ? null : el("button", { class: "btn", type: "button", id: "review-changes", text: "Request changes", onclick: needs("request_changes") }),
      el("button", { class: "btn bad", type: "button", id: "review-reject", text: "Reject", onclick: needs("reject") })));
  }
  const round = t.artifacts.filter((a) => a.round === t.review_round);
  const earlier = t.artifacts.filter((a) => a.round !== t.review_round);
  into.replaceChildren(...[  // (what is absent is left out, never drawn as "null")
    el("header", {}, el("h2", { id: "detail-title", text: `#${t.id} ${t.title}` }), el("div", {}, statusPill(t.status), t.review_round ? el("span", { class: "muted", text: ` round ${t.review_round}` }) : null)),
    actions,
    el("section", {}, el("h3", { text: "Request" }), el("dl", { class: "fields" },
      el("dt", { text: "Asked" }), el("dd", { text: t.request_text || "—" }),
      el("dt", { text: "By" }), el("dd", { text: t.requester || "—" }),
      el("dt", { text: "Channel" }), el("dd", { text: t.channel || "api" }),
      el("dt", { text: "Language" }), el("dd", { text: t.language || "—" }),
      el("dt", { text: "Action" }), el("dd", { text: t.action }),
      el("dt", { text: "Claims" }), el("dd", { text: String(t.attempts) }))),
    el("section", {}, el("h3", { text: "Payload" }), fields(t.payload)),
    el("section", {}, el("h3", { text: round.length ? "Work handed in" : "Nothing handed in yet" }), ...round.map(artifactView)),
    t.council.length ? el("section", { id: "council-run" }, el("h3", { text: "How the council got there" }),
      councilRun(t.council, ((round[0] && round[0].summary && round[0].summary.council) || {}).chosen)) : null,
    t.notes.length ? el("section", {}, el("h3", { text: "Said about it" }), el("ol", { class: "timeline" },
      ...t.notes.map((n) => el("li", { text: `${day(n.at)} — ${n.kind.replace(/_/g, " ")}: ${n.text}` })))) : null,
    t.conversation.length ? el("details", { class: "raw" }, el("summary", { text: `The requester's conversation (${t.conversation.length})` }),
      el("ol", { class: "timeline" }, ...t.conversation.map((l) => el("li", { text: `${l.direction === "inbound" ? (t.requester || "requester") : (l.author || "bot")}: ${l.text}` })))) : null,
    earlier.length ? el("details", { class: "raw" }, el("summary", { text: `Earlier rounds (${earlier.length})` }), ...earlier.map(artifactView)) : null,
  ].filter(Boolean));
}
/* An artifact as what it is — never as HTML: a diff per file with its additions and deletions
   marked, code with its words coloured, a screenshot as an image, text as text. */
function councilView(council) {
  // How a council chose: each member's proposal ranked (checks, judges' weighted score), and what it cost.
  return el("div", { class: "council" },
    el("p", { class: "muted", text: `Chosen: ${council.chosen} · ${council.calls} calls · ${council.tokens} tokens${council.ended === "budget" ? " · ended by its budget" : ""}` }),
    council.rationale ? el("p", { class: "rationale", text: `The architect: ${council.rationale}` }) : null,
    el("table", {}, el("thead", {}, el("tr", {}, ...["Member", "Checks", "Score"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...council.ranking.map((r) => el("tr", { "data-member": r.member },
        el("td", { text: r.member === council.chosen ? `${r.member} ✓` : r.member }),
        el("td", { text: r.passed ? "passed" : r.failures.join("; ") }),
        el("td", { text: r.score === null ? "—" : r.score.toFixed(2) }))))));
}
function councilRun(steps, chosen) {
  // Every member's proposal side by side (as revised, its first draft, the critique it got, each
  // check), what each member cost, and each judge's scores per criterion. All of it is text the
  // members wrote: shown as text, never as HTML.
  const of = (step, member, target) => steps.filter((s) => s.step === step
    && (member === undefined || s.member === member) && (target === undefined || s.target === target));
  const last = (list) => list[list.length - 1];
  // The chosen first, then the others that answered, then those dropped.
  const dropped = (m) => of("draft", m).every((s) => !s.ok);
  const members = [...new Set(of("draft").map((s) => s.member))]
    .sort((a, b) => (b === chosen) - (a === chosen) || dropped(a) - dropped(b));
  const column = (m) => {
    const draft = last(of("draft", m));
    const revised = last(of("revise", m).filter((s) => s.ok));
    const shown = revised || (draft && draft.ok ? draft : null);
    return el("section", { class: "proposal", "data-member": m },
      el("h4", { text: m === chosen ? `${m} ✓ chosen` : m }),
      draft && !draft.ok ? el("p", { class: "bad", text: `Dropped: ${draft.error}` }) : null,
      shown ? el("p", { class: "artifact-text", text: shown.text }) : null,
      revised && draft && draft.ok ? el("details", {}, el("summary", { text: "Its first draft" }), el("p", { class: "artifact-text", text: draft.text })) : null,
      ...of("critique", undefined, m).map((c) => el("div", { class: "critique" }, el("b", { text: `Critique by ${c.member}` }),
        el("p", { class: "artifact-text", text: c.ok ? c.text : `(none: ${c.error})` }))),
      ...of("check", m).map((c) => el("ul", { class: "checks" }, el("li", { class: c.ok ? "good" : "bad",
        text: `${(c.data && c.data.kind) || c.target}: ${c.ok ? "passed" : c.error}` }))));
  };
  const cost = new Map();
  for (const s of steps) {
    const c = cost.get(s.member) || { calls: 0, tokens: 0, ms: 0 };
    if (s.step !== "check") c.calls += (s.data && s.data.calls) || 1;
    c.tokens += s.tokens; c.ms += s.latency_ms;
    cost.set(s.member, c);
  }
  const scores = of("score");
  const criteria = [...new Set(scores.filter((s) => s.ok).flatMap((s) => Object.values(s.data.scores).flatMap((v) => Object.keys(v))))];
  const scoreRows = scores.flatMap((s) => (s.ok
    ? Object.entries(s.data.labels || {}).map(([label, member]) => el("tr", {}, el("td", { text: s.member }), el("td", { text: member }),
      ...criteria.map((c) => el("td", { text: String((s.data.scores[label] || {})[c] ?? "—") }))))
    : [el("tr", {}, el("td", { text: s.member }), el("td", { colspan: String(criteria.length + 1), class: "muted", text: `no score: ${s.error}` }))]));
  return el("div", { class: "council" },
    el("div", { class: "proposals" }, ...members.map(column)),
    scoreRows.length ? el("table", { id: "council-scores" }, el("caption", { text: "Each judge's scores (0–10), per criterion" }),
      el("thead", {}, el("tr", {}, ...["Judge", "Proposal", ...criteria].map((h) => el("th", { text: h })))), el("tbody", {}, ...scoreRows)) : null,
    el("table", { id: "council-cost" }, el("caption", { text: "What each took (its drafts, critiques, revisions and scores)" }),
      el("thead", {}, el("tr", {}, ...["Member", "Calls", "Tokens", "Time"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...[...cost.entries()].map(([m, c]) => el("tr", { "data-member": m }, el("td", { text: m }),
        el("td", { text: String(c.calls) }), el("td", { text: String(c.tokens) }), el("td", { text: c.ms < 1000 ? `${Math.round(c.ms)} ms` : `${(c.ms / 1000).toFixed(1)} s` }))))));
}
function artifactView(a) {
  const head = el("div", { class: "artifact-head" }, el("b", { text: a.title || a.type }), el("span", { class: "pill", text: a.type }),
    el("span", { class: "muted", text: `${(a.size_bytes / 1024).toFixed(1)} KB` }));
  if (a.summary && a.summary.council) return el("article", { class: "artifact", "data-artifact": String(a.id) }, head, el("p", { class: "artifact-text", text: a.content || "" }), councilView(a.summary.council));
  let body;
  if (a.type === "diff") body = diffView(a.content || "", a.summary);
  else if (a.type === "code") body = codeView(a.content || "");
  else if (a.type === "screenshot") body = el("img", { class: "shot", alt: a.title || "screenshot", src: `data:${a.summary.media_type || "image/png"};base64,${a.content}` });
  else body = el("p", { class: "artifact-text", text: a.content || "" });
  return el("article", { class: "artifact", "data-artifact": String(a.id) }, head, body);
}
function diffView(text, summary) {
  const files = [];
  let file = null;
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i];
    if (line.startsWith("--- ") && (lines[i + 1] || "").startsWith("+++ ")) {
      const path = lines[i + 1].slice(4).replace(/^b\//, "").split("\t")[0];
      file = { path, rows: [] };
      files.push(file);
      i += 1;
      continue;
    }
    if (!file) continue;  // "diff --git", "index ..." before the first file
    const kind = line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("\\") ? "meta" : "ctx";
    if (line.startsWith("diff --git") || line.startsWith("index ")) continue;
    file.rows.push([kind, line]);
  }
  const counts = new Map(((summary && summary.files) || []).map((f) => [f.path, f]));
  return el("div", { class: "diff" }, ...files.map((f) => {
    const c = counts.get(f.path);
    return el("section", { class: "diff-file" },
      el("header", {}, el("span", { class: "path", text: f.path }), c ? el("span", { class: "counts" }, el("span", { class: "plus", text: `+${c.added}` }), el("span", { class: "minus", text: ` −${c.removed}` })) : null),
      el("pre", {}, ...f.rows.map(([kind, line]) => el("span", { class: `dl ${kind}`, text: line }))));
  }));
}
const KEYWORDS = new Set(["def", "class", "return", "if", "else", "elif", "for", "while", "import", "from", "as", "with", "try", "except", "finally", "raise", "async", "await", "lambda", "yield", "pass", "None", "True", "False", "and", "or", "not", "in", "is", "function", "const", "let", "var", "new", "this", "null", "undefined", "true", "false", "export", "public", "private", "static", "void", "int", "string", "fn", "pub", "struct", "impl", "match", "switch", "case", "break", "continue", "package", "func", "type", "interface"]);
function codeView(text) {
  // Words coloured by a small tokenizer: comments, strings, numbers, keywords (text nodes only).
  const token = /(#[^\n]*|\/\/[^\n]*|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|\b\d+(?:\.\d+)?\b|\b[A-Za-z_][A-Za-z0-9_]*\b)/g;
  const pre = el("pre", { class: "code" });
  let last = 0;
  for (const match of text.matchAll(token)) {
    if (match.index > last) pre.append(document.createTextNode(text.slice(last, match.index)));
    const word = match[0];
    const kind = word.startsWith("#") || word.startsWith("//") ? "cm" : /^["']/.test(word) ? "st" : /^\d/.test(word) ? "nu" : KEYWORDS.has(word) ? "kw" : null;
    pre.append(kind ? el("span", { class: kind, text: word }) : document.createTextNode(word));
    last = match.index + word.length;
  }
  if (last < text.length) pre.append(document.createTextNode(text.slice(last)));
  return pre;
}
function showWorkers() {
  const view = layout("no-side");
  view.append(el("section", { class: "column", style: "grid-column: 2 / 4" }, el("header", {}, el("h1", { text: "Workers & queue" })),
    el("div", { class: "stats", id: "stats" }, el("div", { class: "empty", text: "Loading…" })),
    el("div", { class: "page", id: "workers" })));
  loadWorkers();
}
async function loadWorkers() {
  const [summary, queue, workers] = await Promise.all([
    act(api("/api/v1/metrics/summary?window_s=3600")), act(api("/api/v1/queue")), act(api("/api/v1/workers"))]);
  if (!summary || !queue || !workers) { unreadable($("stats"), "the figures", () => loadWorkers()); return; }
  if (!$("stats")) return;
  const total = Object.values(summary.by_status).reduce((a, b) => a + b, 0);
  const waiting = Object.values(queue.queue.waiting).reduce((a, b) => a + b, 0);
  const stats = [["requests in the last hour", total], ["success rate", summary.success_rate == null ? "—" : `${Math.round(summary.success_rate * 100)} %`],
    ["workers", workers.length], ["jobs waiting", waiting], ["jobs running", queue.queue.running], ["messages to read", queue.database.messages_awaiting_dispatch]];
  $("stats").replaceChildren(...stats.map(([label, value]) => el("div", { class: "stat" }, el("b", { text: String(value) }), el("span", { text: label }))));
  const unix = (t) => new Date(t * 1000).toISOString();
  $("workers").replaceChildren(workers.length ? el("table", {}, el("thead", {}, el("tr", {}, ...["Worker", "Host", "Running", "Done", "Failed", "Up since", "Seen"].map((h) => el("th", { text: h })))),
    el("tbody", {}, ...workers.map((w) => el("tr", {}, el("td", { text: w.id }), el("td", { text: `${w.host} (pid ${w.pid})` }),
      el("td", { text: String(w.jobs_running) }), el("td", { text: String(w.jobs_done) }), el("td", { text: String(w.jobs_failed) }),
      el("td", { text: day(unix(w.started_at)) }), el("td", { text: ago(unix(w.last_seen)), "data-at": unix(w.last_seen) })))))
    : el("div", { class: "empty", text: "No worker is running." }));
}

/* ---------- counts in the navigation ---------- */
async function refreshCounts() {
  const [page, reviews] = await Promise.all([
    api("/api/v1/activities?status=awaiting_approval&limit=100").catch(() => null),
    api("/api/v1/tasks?status=in_review&limit=100").catch(() => null)]);
  for (const [id, n] of [["nav-approvals", page && page.items.length], ["nav-reviews", reviews && reviews.length]]) {
    if (n === null || n === undefined) continue;
    $(id).hidden = n === 0;
    $(id).textContent = String(n);
  }
}

/* ---------- session ---------- */
function showLogin() {
  state.me = null;
  if (state.socket) { state.socket.close(); state.socket = null; }
  $("app").hidden = true; $("login").hidden = false; $("name").focus();
}
function showApp(me) {
  state.me = me; state.csrf = me.csrf;
  $("who").textContent = `${me.user.name} · ${me.user.role}`;
  $("login").hidden = true; $("app").hidden = false;
  $("notify").hidden = !("Notification" in window) || Notification.permission !== "default";
  if (location.pathname === "/portal" || location.pathname === "/portal/") history.replaceState({}, "", "/portal/conversations");
  route();
  refreshCounts();
  connect();
}
$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  const response = await fetch("/portal/login", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: $("name").value, password: $("password").value }) });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) { $("login-error").textContent = body.detail || "could not log in"; return; }
  $("password").value = "";
  showApp(body);
});
$("logout").addEventListener("click", async () => {
  await fetch("/portal/logout", { method: "POST", headers: { "X-CSRF-Token": state.csrf } });
  showLogin();
});
$("notify").addEventListener("click", async () => {
  await Notification.requestPermission();
  $("notify").hidden = Notification.permission !== "default";
});
// "3 min ago" labels move on by themselves, with no request.
setInterval(() => {
  for (const node of document.querySelectorAll("[data-at]")) if (node.dataset.at) node.textContent = `${node.dataset.prefix || ""}${ago(node.dataset.at)}`;
}, 30000);
fetch("/portal/me").then((r) => (r.ok ? r.json().then(showApp) : showLogin()), showLogin);
