/* Switchboard chat widget: one tag adds a launcher and a chat panel to any page.

   <script src="https://bot.example.com/widget.js"
           data-switchboard-url="https://bot.example.com" async></script>

   Optional: data-title="Help", data-open="true" (open on load), data-name="Ana", and the
   greeting shown when a visitor first opens it, per language: data-greeting-en="Hi! …",
   data-greeting-es="¡Hola! …" (the browser's language picks; built-in ones otherwise).
   It renders in a shadow root (the host page's CSS cannot reach it), talks to the gateway's
   WebSocket (/chat/ws; the gateway checks the page's origin, SWITCHBOARD_WIDGET_ORIGINS), keeps
   the server-issued session in localStorage, gives every message a client id, re-sends what
   the server has not acknowledged after a reconnect (the server drops duplicates), reconnects
   with backoff, and never interprets anything as HTML. */
(() => {
  "use strict";
  const script = document.currentScript;
  const base = new URL((script && script.dataset.switchboardUrl) || (script && script.src) || location.href);
  const origin = base.origin;
  const title = (script && script.dataset.title) || "Switchboard";
  const startOpen = script && script.dataset.open === "true";
  const visitorName = script && script.dataset.name;
  const language = (navigator.language || "en").slice(0, 2).toLowerCase();
  const GREETINGS = {
    en: "Hi! How can I help? Write what you need, or tap one of the options after \"help\".",
    es: "¡Hola! ¿En qué puedo ayudarte? Escribe lo que necesites, o «ayuda» para ver las opciones.",
  };
  // The widget's own words, in the browser's language (English otherwise).
  const WORDS = {
    en: { connecting: "connecting…", online: "online", reconnecting: "reconnecting…", write: "Write a message…",
      send: "Send", open: "Open chat", close: "Close chat", unread: "unread", choices: "Choices", message: "Message" },
    es: { connecting: "conectando…", online: "en línea", reconnecting: "reconectando…", write: "Escribe un mensaje…",
      send: "Enviar", open: "Abrir el chat", close: "Cerrar el chat", unread: "sin leer", choices: "Opciones", message: "Mensaje" },
  };
  const words = WORDS[language] || WORDS.en;
  const greeting = (script && (script.dataset[`greeting${language[0].toUpperCase()}${language[1] || ""}`]
    || script.dataset.greeting)) || GREETINGS[language] || GREETINGS.en;
  const storeKey = `switchboard:${origin}`;
  const MAX_BACKOFF_MS = 15000;
  const TYPING_MAX_MS = 60000;

  const css = `
  :host { all: initial; }
  * { box-sizing: border-box; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  .launcher { position: fixed; right: 20px; bottom: 20px; width: 56px; height: 56px; border-radius: 50%;
    border: 0; background: #2563eb; color: #fff; cursor: pointer; box-shadow: 0 4px 14px rgba(0,0,0,.25);
    display: flex; align-items: center; justify-content: center; z-index: 2147483000; }
  .launcher:focus-visible, button:focus-visible, textarea:focus-visible { outline: 3px solid #93c5fd; outline-offset: 2px; }
  .badge { position: absolute; top: -4px; right: -4px; min-width: 20px; height: 20px; border-radius: 10px;
    background: #dc2626; color: #fff; font-size: 12px; line-height: 20px; padding: 0 5px; }
  .badge[hidden] { display: none; }
  .panel { position: fixed; right: 20px; bottom: 88px; width: 370px; height: min(600px, calc(100vh - 110px));
    background: #fff; border-radius: 14px; box-shadow: 0 8px 30px rgba(0,0,0,.25); display: flex;
    flex-direction: column; overflow: hidden; z-index: 2147483000; color: #111827; font-size: 15px; }
  .panel[hidden] { display: none; }
  header { background: #2563eb; color: #fff; padding: 12px 14px; display: flex; align-items: center; gap: 8px; }
  header h2 { font-size: 16px; margin: 0; flex: 1; font-weight: 600; }
  header .state { font-size: 12px; opacity: .85; }
  header button { background: transparent; border: 0; color: #fff; font-size: 22px; cursor: pointer; line-height: 1; }
  .log { flex: 1; overflow-y: auto; padding: 12px; display: flex; flex-direction: column; gap: 6px; background: #f9fafb; }
  .row { display: flex; flex-direction: column; max-width: 82%; }
  .row.me { align-self: flex-end; align-items: flex-end; }
  .row.bot, .row.human { align-self: flex-start; align-items: flex-start; }
  .row.human { flex-direction: row; gap: 6px; max-width: 88%; }
  .avatar { flex: none; width: 28px; height: 28px; border-radius: 50%; background: #7c3aed; color: #fff;
    font-size: 12px; font-weight: 600; display: flex; align-items: center; justify-content: center; margin-top: 16px; }
  .who { font-size: 12px; color: #6d28d9; font-weight: 600; margin: 0 4px 2px; }
  .human .bubble { background: #ede9fe; color: #1f1147; border-bottom-left-radius: 4px; }
  .greeting .bubble { background: #e0e7ff; }
  .bubble { display: inline-block; padding: 8px 12px; border-radius: 16px; white-space: pre-wrap;
    overflow-wrap: anywhere; line-height: 1.35; }
  .me .bubble { background: #2563eb; color: #fff; border-bottom-right-radius: 4px; }
  .bot .bubble { background: #e5e7eb; color: #111827; border-bottom-left-radius: 4px; }
  .err .bubble { background: #fee2e2; color: #991b1b; }
  .bubble a { color: inherit; text-decoration: underline; }
  .meta { font-size: 11px; color: #6b7280; margin: 2px 4px 0; }
  .choices { display: flex; flex-wrap: wrap; gap: 6px; margin: 2px 0 4px; }
  .choices button { border: 1px solid #2563eb; background: #fff; color: #1d4ed8; border-radius: 999px;
    padding: 5px 12px; cursor: pointer; font-size: 14px; }
  .choices button:disabled { border-color: #d1d5db; color: #9ca3af; cursor: default; }
  .typing { align-self: flex-start; background: #e5e7eb; border-radius: 16px; padding: 10px 14px; }
  .typing span { display: inline-block; width: 7px; height: 7px; margin: 0 2px; border-radius: 50%;
    background: #6b7280; animation: blink 1.2s infinite both; }
  .typing span:nth-child(2) { animation-delay: .2s; } .typing span:nth-child(3) { animation-delay: .4s; }
  @keyframes blink { 0%, 80%, 100% { opacity: .3; } 40% { opacity: 1; } }
  form { display: flex; gap: 8px; padding: 10px; border-top: 1px solid #e5e7eb; background: #fff; }
  textarea { flex: 1; resize: none; border: 1px solid #d1d5db; border-radius: 10px; padding: 8px 10px;
    font-size: 15px; height: 40px; max-height: 120px; }
  form button { border: 0; background: #2563eb; color: #fff; border-radius: 10px; padding: 0 14px;
    font-size: 15px; cursor: pointer; }
  .sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
  @media (max-width: 480px) {
    .panel { right: 0; left: 0; bottom: 0; width: 100%; height: 100%; border-radius: 0; }
    .launcher { right: 14px; bottom: 14px; }
  }`;

  // A custom element, not a div: no rule of the host page for its own elements matches it.
  const host = document.createElement("switchboard-widget");
  host.setAttribute("data-switchboard-widget", "");
  const root = host.attachShadow({ mode: "open" });
  const el = (tag, props = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key in node && typeof value !== "string") node[key] = value;
      else node.setAttribute(key, value);
    }
    node.append(...children);
    return node;
  };

  const style = el("style", { text: css });
  const badge = el("span", { class: "badge", hidden: true, "aria-hidden": "true" });
  const icon = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  icon.setAttribute("viewBox", "0 0 24 24");
  icon.setAttribute("width", "28");
  icon.setAttribute("height", "28");
  icon.setAttribute("aria-hidden", "true");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("fill", "currentColor");
  const CHAT_ICON = "M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4H4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z";
  const CLOSE_ICON = "M6.4 5 12 10.6 17.6 5 19 6.4 13.4 12 19 17.6 17.6 19 12 13.4 6.4 19 5 17.6 10.6 12 5 6.4z";
  path.setAttribute("d", CHAT_ICON);
  icon.append(path);
  const launcher = el("button", { class: "launcher", type: "button", "aria-label": `${words.open}: ${title}`,
    "aria-expanded": "false" }, icon, badge);
  const stateText = el("span", { class: "state", text: words.connecting, role: "status" });
  const closeButton = el("button", { type: "button", "aria-label": words.close, text: "×" });
  const log = el("div", { class: "log", role: "log", "aria-live": "polite", "aria-label": "Conversation" });
  const input = el("textarea", { rows: 1, maxlength: "4096", placeholder: words.write,
    "aria-label": words.message });
  const sendButton = el("button", { type: "submit", text: words.send });
  const form = el("form", {}, input, sendButton);
  const panel = el("section", { class: "panel", hidden: true, role: "dialog", "aria-label": title },
    el("header", {}, el("h2", { text: title }), stateText, closeButton), log, form);
  root.append(style, launcher, panel);

  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(storeKey) || "{}"); } catch (_) { saved = {}; }
  const state = {
    session: saved.session || null,
    outbox: saved.outbox || [],      // [{id, text, at}] sent but not acknowledged
    socket: null, attempt: 0, open: false, unread: 0,
    shown: new Set(), pending: new Map(), typingTimer: null, retryTimer: null,
  };
  const persist = () => {
    try { localStorage.setItem(storeKey, JSON.stringify({ session: state.session, outbox: state.outbox })); }
    catch (_) { /* private mode: the conversation lasts as long as the page */ }
  };

  const clock = (at) => {
    const when = at ? new Date(at) : new Date();
    return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  };
  const linkified = (text) => {
    const parts = [];
    const pattern = /https?:\/\/[^\s<>"']+/g;
    let last = 0;
    for (const match of text.matchAll(pattern)) {
      parts.push(document.createTextNode(text.slice(last, match.index)));
      const url = match[0].replace(/[.,;:!?)]+$/, "");
      parts.push(el("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: url }));
      last = match.index + url.length;
    }
    parts.push(document.createTextNode(text.slice(last)));
    return parts;
  };
  const scroll = () => { log.scrollTop = log.scrollHeight; };
  const typing = el("div", { class: "typing", "aria-label": "typing" }, el("span"), el("span"), el("span"));
  const showTyping = (on) => {
    clearTimeout(state.typingTimer);
    if (on) {
      log.append(typing);
      state.typingTimer = setTimeout(() => typing.remove(), TYPING_MAX_MS);
    } else typing.remove();
    scroll();
  };

  const initials = (name) => name.split(/\s+/).filter(Boolean).slice(0, 2).map((w) => w[0].toUpperCase()).join("");
  const MARKS = { "": "sending", "✓": "sent", "✓✓": "answered" };
  const bubble = (who, text, at, mark, author) => {
    const meta = el("div", { class: "meta" }, el("time", { text: clock(at) }));
    let markNode = null;
    if (mark !== undefined) {
      markNode = el("span", { class: "mark", text: mark, "aria-label": MARKS[mark] || "sent" });
      meta.append(" ", markNode);
    }
    const content = [el("div", { class: "bubble" }, ...linkified(text)), meta];
    const row = author
      // A person's reply: their name and initials beside it; the bot's carry neither.
      ? el("div", { class: "row human" }, el("span", { class: "avatar", "aria-hidden": "true", text: initials(author) }),
        el("div", {}, el("div", { class: "who", text: author }), ...content))
      : el("div", { class: `row ${who}` }, ...content);
    log.insertBefore(row, typing.isConnected ? typing : null);
    scroll();
    return { row, markNode };
  };
  const disableChoices = () => {
    for (const button of log.querySelectorAll(".choices button")) button.disabled = true;
  };
  const offer = (choices) => {
    if (!choices || !choices.length) return;
    const row = el("div", { class: "choices", role: "group", "aria-label": words.choices });
    for (const choice of choices) {
      const label = choice.label || choice.text;
      row.append(el("button", { type: "button", text: label, onclick: () => send(label) }));
    }
    log.insertBefore(row, typing.isConnected ? typing : null);
    scroll();
  };

  const transmit = (entry) => {
    if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return;
    const frame = { id: entry.id, text: entry.text, lang: navigator.language || undefined };
    if (visitorName) frame.name = visitorName;
    state.socket.send(JSON.stringify(frame));
  };
  const send = (text) => {
    text = text.trim();
    if (!text) return false;
    disableChoices();
    const entry = { id: `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`, text,
      at: new Date().toISOString() };
    state.outbox.push(entry);
    persist();
    state.pending.set(entry.id, bubble("me", text, entry.at, ""));
    transmit(entry);
    return true;
  };

  const labelLauncher = () => {
    const unread = state.unread ? ` (${state.unread} ${words.unread})` : "";
    launcher.setAttribute("aria-label", state.open ? `${words.close}: ${title}` : `${words.open}: ${title}${unread}`);
  };
  const setUnread = (count) => {
    state.unread = count;
    badge.hidden = count === 0;
    badge.textContent = String(count);
    labelLauncher();
  };
  const toggle = (open) => {
    state.open = open;
    panel.hidden = !open;
    launcher.setAttribute("aria-expanded", String(open));
    path.setAttribute("d", open ? CLOSE_ICON : CHAT_ICON);
    labelLauncher();
    if (open && !log.querySelector(".row")) bubble("bot greeting", greeting, null).row.setAttribute("data-greeting", "");
    if (open) { setUnread(0); input.focus(); scroll(); } else launcher.focus();
  };

  const onFrame = (frame) => {
    if (frame.type === "hello") {
      state.session = frame.session;
      state.attempt = 0;
      const history = frame.history || [];
      if (!log.querySelector(".row:not([data-greeting])")) {
        if (history.length) for (const shown of log.querySelectorAll("[data-greeting]")) shown.remove();
        history.forEach((past, n) => {
          state.shown.add(past.message_id);
          // A message of the visitor's that something answered since shows ✓✓, as it did.
          const answered = history.slice(n + 1).some((later) => later.direction !== "inbound");
          bubble(past.direction === "inbound" ? "me" : "bot", past.text, past.at,
            past.direction === "inbound" ? (answered ? "✓✓" : "✓") : undefined, past.author);
        });
        const last = history[history.length - 1];
        if (last && last.direction !== "inbound") offer(last.choices);  // still to be chosen
      } else {
        // Replies that came while we were away.
        for (const past of frame.history || []) {
          if (past.direction === "inbound" || state.shown.has(past.message_id)) continue;
          state.shown.add(past.message_id);
          bubble("bot", past.text, past.at, undefined, past.author);
          if (!state.open) setUnread(state.unread + 1);
        }
      }
      persist();
      for (const entry of state.outbox) {  // not acknowledged: again (the server drops repeats)
        if (!state.pending.has(entry.id)) state.pending.set(entry.id, bubble("me", entry.text, entry.at, ""));
        transmit(entry);
      }
    } else if (frame.type === "ack") {
      state.outbox = state.outbox.filter((entry) => entry.id !== frame.id);
      persist();
      const shown = state.pending.get(frame.id);
      if (shown && shown.markNode) { shown.markNode.textContent = "✓"; shown.markNode.setAttribute("aria-label", "sent"); }
      state.shown.add(frame.message_id);
      if (!frame.duplicate) showTyping(true);
    } else if (frame.type === "reply") {
      if (frame.message_id != null && state.shown.has(frame.message_id)) return;
      state.shown.add(frame.message_id);
      showTyping(false);
      const asked = frame.in_reply_to && state.pending.get(frame.in_reply_to);
      if (asked && asked.markNode) { asked.markNode.textContent = "✓✓"; asked.markNode.setAttribute("aria-label", "answered"); }
      bubble("bot", frame.text, frame.at, undefined, frame.author);
      offer(frame.choices);
      if (!state.open) setUnread(state.unread + 1);
    } else if (frame.type === "error") {
      const retry = frame.error === "unavailable" || frame.error === "rate_limited";
      const entry = frame.id && state.outbox.find((e) => e.id === frame.id);
      if (entry && retry) {
        // Not stored yet: sent again a little later (never dropped).
        setTimeout(() => transmit(entry), 1500 + Math.random() * 1000);
        return;
      }
      if (frame.id) {
        state.outbox = state.outbox.filter((e) => e.id !== frame.id);
        persist();
      }
      const row = bubble("err", `${frame.detail}`, null).row;
      row.classList.add("err");
    }
  };

  const connect = () => {
    clearTimeout(state.retryTimer);
    if (state.socket && state.socket.readyState <= WebSocket.OPEN) state.socket.close();
    const protocols = state.session ? ["switchboard", `session.${state.session}`] : ["switchboard"];
    const url = `${origin.replace(/^http/, "ws")}/chat/ws`;
    const socket = new WebSocket(url, protocols);
    state.socket = socket;
    socket.onopen = () => { stateText.textContent = words.online; };
    socket.onmessage = (event) => { try { onFrame(JSON.parse(event.data)); } catch (_) { /* not ours */ } };
    socket.onclose = () => {
      if (state.socket !== socket) return;
      showTyping(false);
      const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** state.attempt) * (0.75 + Math.random() / 2);
      state.attempt += 1;
      stateText.textContent = words.reconnecting;
      state.retryTimer = setTimeout(connect, delay);
    };
  };
  window.addEventListener("online", () => {
    if (!state.socket || state.socket.readyState === WebSocket.CLOSED) { state.attempt = 0; connect(); }
  });

  launcher.addEventListener("click", () => toggle(!state.open));
  closeButton.addEventListener("click", () => toggle(false));
  panel.addEventListener("keydown", (event) => { if (event.key === "Escape") toggle(false); });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (send(input.value)) input.value = "";
  });

  const mount = () => {
    document.body.append(host);
    connect();
    if (startOpen) toggle(true);
  };
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
