// The sandbox console: customers on the left, the agent desk in the middle, deliveries on the
// right. State arrives from /sandbox/api/events (server-sent events) as keyed entities; each
// change updates only its own element, so nothing the user opened or typed is reset.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url);
const $ = (id) => document.getElementById(id);

const MESSENGERS = {
  sms_twilio: { label: "SMS", color: "#34a853" },
  whatsapp: { label: "WhatsApp", color: "#075e54" },
  email_smtp: { label: "Email", color: "#5b6bd6" },
};
const AGENT_STATES = { PENDING: "Sending…", SENT: "Sent", DELIVERED: "Delivered", READ: "Read", FAILED: "Failed" };

const store = new Map();        // key -> data
let selected = new URLSearchParams(location.hash.slice(1)).get("c");
let activeChannel = null;
const replyTo = new Map();      // channel -> entry replied to (mail)

// -- helpers -------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...kids(children));
  return node;
}
const kids = (list) => list.filter((c) => c !== null && c !== undefined && c !== false);
function fill(node, ...children) { node.replaceChildren(...kids(children)); return node; }
const norm = (a) => String(a || "").toLowerCase().replace(/^.*<|>.*$/g, "").replace(/[^a-z0-9@.]/g, "");
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const time = (ms) => (ms ? new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "");
const size = (n) => (n == null ? "" : n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(0)} KB` : `${(n / 1048576).toFixed(1)} MB`);
const messengerOf = (m) => MESSENGERS[m] || { label: m || "Channel", color: "#6b7280" };
const byPrefix = (prefix) => [...store.entries()].filter(([k]) => k.startsWith(prefix)).map(([, v]) => v);

function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
}

async function api(method, path, body) {
  const init = { method, headers: token ? { Authorization: "Bearer " + token } : {} };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const resp = await fetch("/sandbox/api" + path, init);
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw new Error((data && data.error) || `HTTP ${resp.status}`);
  return data;
}

function readFile(input) {
  const file = input.files && input.files[0];
  if (!file) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve({ name: file.name, mimeType: file.type || "application/octet-stream", data: String(reader.result).split(",", 2)[1] || "" });
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// Keeps a list's children in step with keyed items, touching only what changed.
function syncList(list, items, keyOf, build, update, orderOf) {
  const nodes = new Map([...list.children].map((n) => [n.dataset.key, n]));
  const wanted = new Set();
  for (const item of items) {
    const key = keyOf(item);
    wanted.add(key);
    let node = nodes.get(key);
    const sig = JSON.stringify(item);
    if (!node) {
      node = build(item);
      node.dataset.key = key;
      node.dataset.order = orderOf(item);
      node.dataset.sig = sig;
      update(node, item);
      const after = [...list.children].find((n) => Number(n.dataset.order) > Number(node.dataset.order));
      list.insertBefore(node, after || null);
    } else if (node.dataset.sig !== sig) {
      node.dataset.sig = sig;
      update(node, item);
    }
  }
  for (const [key, node] of nodes) if (!wanted.has(key)) node.remove();
}

// -- header: outage, fakes -----------------------------------------------------------------
function renderOutage() {
  const o = store.get("outage") || { active: false };
  $("outage-state").textContent = o.active
    ? `Unblu API down${o.remainingSeconds == null ? "" : ` · ${Math.ceil(o.remainingSeconds)} s left`}`
    : "";
  $("outage-start").hidden = o.active;
  $("outage-stop").hidden = !o.active;
}

function renderFakeLinks(customers) {
  const nav = $("fake-links");
  const links = customers.map((c) => {
    const m = messengerOf(c.messenger);
    return el("a", { href: c.url + (c.page || "/fake/messages"), target: "_blank", rel: "noopener", text: `${m.label} fake ↗`, title: `${c.title} fake at ${c.url}` });
  });
  const sig = JSON.stringify(customers.map((c) => [c.url, c.page]));
  if (nav.dataset.sig !== sig) { fill(nav, ...links); nav.dataset.sig = sig; }
}

// -- customers -----------------------------------------------------------------------------
function renderCustomers() {
  const rank = (c) => { const i = Object.keys(MESSENGERS).indexOf(c.messenger); return i < 0 ? 99 : i; };
  const customers = byPrefix("customer/").sort((a, b) => rank(a) - rank(b) || a.channel.localeCompare(b.channel));
  $("no-customers").hidden = customers.length > 0;
  renderFakeLinks(customers);
  if (!activeChannel || !customers.some((c) => c.channel === activeChannel)) activeChannel = customers[0] && customers[0].channel;
  syncList($("channel-tabs"), customers, (c) => c.channel, (c) => {
    const m = messengerOf(c.messenger);
    return el("button", { type: "button", role: "tab", id: `tab-${c.channel}`, "aria-controls": `device-${c.channel}`, style: `--c:${m.color}`, onclick: () => showChannel(c.channel) },
      el("span", { class: "dot", "aria-hidden": "true" }), el("span", { text: m.label }));
  }, () => {}, (c) => customers.indexOf(c));
  syncList($("devices"), customers, (c) => c.channel, buildDevice, updateDevice, (c) => customers.indexOf(c));
  for (const c of customers) renderThread(c);
  showChannel(activeChannel);
}

function showChannel(channel) {
  activeChannel = channel;
  for (const tab of $("channel-tabs").children) tab.setAttribute("aria-selected", String(tab.dataset.key === channel));
  for (const dev of $("devices").children) dev.hidden = dev.dataset.key !== channel;
}

function buildDevice(c) {
  const kind = c.kind || "sms";
  const m = messengerOf(c.messenger);
  const id = (s) => `${s}-${c.channel}`;
  const form = el("form", { class: "composer", "aria-label": `Write as the ${m.label} customer` });
  const subject = el("input", { type: "text", id: id("subject"), placeholder: "Subject" });
  const text = el("textarea", { id: id("text"), rows: "2", placeholder: kind === "email" ? "Write an email…" : "Text message" });
  const file = el("input", { type: "file", id: id("file") });
  const fileName = el("span", { class: "meta" });
  file.addEventListener("change", () => { fileName.textContent = file.files[0] ? file.files[0].name : ""; });
  const replying = el("div", { class: "replying", hidden: true });
  form.append(...kids([
    replying,
    kind === "email" ? el("label", { class: "sr-only", for: id("subject"), text: "Subject" }) : null,
    kind === "email" ? subject : null,
    el("label", { class: "sr-only", for: id("text"), text: "Message" }),
    text,
    el("div", { class: "composer-row" },
      c.files !== false ? el("label", { class: "file-button" }, kind === "email" ? "Attach a file" : "Add a picture or file", file) : null,
      fileName, el("span", { style: "flex:1" }),
      el("button", { type: "submit", id: id("send"), text: kind === "email" ? "Send email" : "Send" })),
  ]));
  text.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && kind !== "email") { ev.preventDefault(); form.requestSubmit(); }
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const from = $(id("from")).value.trim();
    const files = [];
    try {
      const f = await readFile(file);
      if (f) files.push(f);
    } catch (e) { toast("The file could not be read: " + e.message); return; }
    if (!text.value.trim() && !files.length) { text.focus(); return; }
    const body = { text: text.value, from: from || undefined };
    if (files.length) body.files = files;
    if (kind === "email") {
      body.subject = subject.value || undefined;
      const parent = replyTo.get(c.channel);
      if (parent) body.in_reply_to = parent.id;
    }
    const button = $(id("send"));
    button.disabled = true;
    try {
      await api("POST", `/customers/${encodeURIComponent(c.channel)}/messages`, body);
      text.value = ""; file.value = ""; fileName.textContent = "";
      if (kind === "email") { subject.value = ""; setReply(c.channel, null); }
    } catch (e) { toast(e.message); } finally { button.disabled = false; }
  });
  const head = el("div", { class: "device-head" },
    el("div", { class: "avatar", "aria-hidden": "true", text: m.label[0] }),
    el("div", { class: "who" }, el("strong", { class: "biz" }), el("small", { class: "biz-sub" })),
    el("a", { class: "fake-link", target: "_blank", rel: "noopener" }));
  const identity = el("div", { class: "identity" },
    el("label", { for: id("from"), text: kind === "email" ? "You are" : "Your number" }),
    el("input", { type: "text", id: id("from"), autocomplete: "off", oninput: (ev) => { ev.target.dataset.touched = "1"; renderThread(c); } }));
  return el("div", { class: `device kind-${kind}`, id: `device-${c.channel}`, role: "tabpanel", "aria-labelledby": `tab-${c.channel}` },
    head, identity, el("ol", { class: "thread", "aria-live": "polite", "aria-label": `${m.label} conversation on the customer's ${kind === "email" ? "mail client" : "phone"}` }),
    c.thread === false ? el("p", { class: "empty", text: "This fake does not show its customer's messages; what reached them is at its /fake/messages." }) : null,
    form);
}

function updateDevice(node, c) {
  const kind = c.kind || "sms";
  node.querySelector(".biz").textContent = kind === "email" ? "Sandbox Support" : (c.business || c.title);
  node.querySelector(".biz-sub").textContent = kind === "email" ? `${c.business} · channel ${c.channel}` : `${messengerOf(c.messenger).label} · channel ${c.channel}`;
  const link = node.querySelector(".fake-link");
  link.href = c.url + (c.page || "/fake/messages");
  link.textContent = c.page ? "open the fake" : "raw";
  const from = node.querySelector(`#from-${CSS.escape(c.channel)}`);
  if (!from.value && !from.dataset.touched) from.value = c.contact || "";
}

function setReply(channel, entry) {
  replyTo.set(channel, entry);
  const dev = $(`device-${channel}`);
  if (!dev) return;
  const bar = dev.querySelector(".replying");
  if (!entry) { bar.hidden = true; bar.replaceChildren(); return; }
  bar.hidden = false;
  fill(bar, el("span", { text: `Replying to “${entry.subject || "(no subject)"}”` }),
    el("button", { type: "button", class: "ghost small", text: "Cancel reply", onclick: () => setReply(channel, null) }));
  const subject = dev.querySelector(`#subject-${CSS.escape(channel)}`);
  if (subject) subject.value = /^re:/i.test(entry.subject || "") ? entry.subject : `Re: ${entry.subject || ""}`;
  dev.querySelector("textarea").focus();
}

function fileNode(f, base) {
  const url = f.url ? (f.url.startsWith("/") ? base + f.url : f.url) : null;
  const image = url && (f.mimeType || "").startsWith("image/");
  return el("div", { class: "file" },
    image ? el("img", { src: url, alt: f.name }) : el("span", { "aria-hidden": "true", text: "📎" }),
    image ? null : (url ? el("a", { href: url, target: "_blank", rel: "noopener", text: f.name }) : el("span", { text: f.name })),
    el("span", { class: "meta", text: size(f.size) }));
}

function stateNode(kind, e) {
  if (e.state === "failed") return el("span", { class: "state failed", text: "Not delivered" + (e.error ? ` · ${e.error}` : ""), title: e.error || "" });
  if (kind === "chat") {
    const ticks = { sending: "🕓", sent: "✓", delivered: "✓✓", read: "✓✓" }[e.state] || "";
    return el("span", { class: `ticks ${e.state}`, text: ticks, title: e.state, "aria-label": e.state || "" });
  }
  const words = { sending: "Sending…", sent: "Sent", delivered: "Delivered", read: "Read" };
  return el("span", { class: `state ${e.state || ""}`, text: words[e.state] || "" });
}

function renderThread(c) {
  const dev = $(`device-${c.channel}`);
  if (!dev) return;
  const kind = c.kind || "sms";
  const entries = byPrefix(`entry/${c.channel}/`).sort((a, b) => a.timestamp - b.timestamp);
  const me = norm(dev.querySelector(`#from-${CSS.escape(c.channel)}`).value || c.contact);
  syncList(dev.querySelector(".thread"), entries, (e) => e.id + (norm(e.contact) === me ? "" : " other"), (e) => el("li", {}), (node, e) => {
    const mine = e.sender === "customer";
    const other = norm(e.contact) !== me ? el("span", { class: "other", text: `${mine ? "from" : "to"} ${e.contact}` }) : null;
    const files = (e.files || []).map((f) => fileNode(f, c.url));
    if (kind === "email") {
      node.className = "mail" + (mine ? " mine" : "");
      fill(node,
        el("p", { class: "subject", text: e.subject || "(no subject)" }),
        el("div", { class: "from" }, el("span", { text: mine ? `You → ${c.business}` : `Sandbox Support → ${e.contact}` }), el("span", { text: time(e.timestamp) })),
        el("div", { class: "text", text: e.text || "" }), ...files,
        el("div", { class: "foot meta" }, other, stateNode(kind, e)),
        mine ? null : el("div", { class: "actions" }, el("button", { type: "button", class: "ghost small", text: "Reply", onclick: () => setReply(c.channel, e) })));
    } else {
      node.className = "bubble" + (mine ? " mine" : "");
      fill(node,
        e.template ? el("div", { class: "template", text: `Template · ${e.template}` }) : null,
        ...files,
        e.text ? el("div", { class: "text", text: e.text }) : null,
        el("div", { class: "foot" }, other, el("span", { text: time(e.timestamp) }), stateNode(kind, e)));
    }
  }, (e) => e.timestamp);
  const list = dev.querySelector(".thread");
  if (list.dataset.count !== String(entries.length)) { list.dataset.count = String(entries.length); list.scrollTop = list.scrollHeight; }
}

// -- agent desk ----------------------------------------------------------------------------
function channelOf(conv) { return store.get(`channel/${conv.channelId}`) || {}; }
function contactOf(conv) {
  const p = conv.participants.find((x) => x.viaMessenger);
  return p ? (p.contactSourceId || p.displayName || "customer") : (conv.sourceId || conv.id);
}

function renderConversations() {
  const convs = byPrefix("conversation/").sort((a, b) => b.creationTimestamp - a.creationTimestamp);
  $("no-conversations").hidden = convs.length > 0;
  syncList($("conversations"), convs, (c) => c.id, (c) => {
    const li = el("li", {});
    li.append(el("button", { type: "button", class: "conv", onclick: () => select(c.id) }));
    return li;
  }, (li, c) => {
    const ch = channelOf(c);
    const m = messengerOf(ch.messenger);
    li.firstChild.setAttribute("aria-current", String(c.id === selected));
    li.firstChild.setAttribute("aria-label", `${m.label} conversation with ${contactOf(c)}, ${c.state.toLowerCase()}, ${plural(c.messageCount, "message")}`);
    fill(li.firstChild,
      el("div", { class: "line1" }, el("span", { class: "who", text: contactOf(c) }), el("span", { class: `badge st-${c.state}`, text: c.state })),
      el("div", { class: "line1" }, el("span", { class: "preview", text: c.lastText || c.topic || "" }),
        el("span", { class: `badge ch-${ch.messenger || ""}`, text: m.label })),
      el("div", { class: "meta", text: `${plural(c.messageCount, "message")} · ${time(c.creationTimestamp)}` }));
  }, (c) => -c.creationTimestamp);
  renderPane();
}

function select(id) {
  selected = id;
  history.replaceState(null, "", `${location.search}#c=${encodeURIComponent(id)}`);
  for (const li of $("conversations").children) li.firstChild.setAttribute("aria-current", String(li.dataset.key === id));
  $("messages").replaceChildren();
  const conv = store.get(`conversation/${id}`);
  const ch = conv && channelOf(conv);
  if (ch && ch.name && store.has(`customer/${ch.name}`)) showChannel(ch.name);
  renderPane();
}

function renderPane() {
  const conv = selected && store.get(`conversation/${selected}`);
  const open = !!conv && conv.state !== "ENDED";
  $("end").disabled = !open;
  $("reply").hidden = !open;
  $("pane-empty").hidden = !!conv;
  if (!conv) {
    $("pane-title").textContent = "No conversation selected";
    $("pane-meta").textContent = "";
    $("messages").replaceChildren();
    return;
  }
  const ch = channelOf(conv);
  const m = messengerOf(ch.messenger);
  $("pane-title").textContent = `${contactOf(conv)} · ${m.label}`;
  $("pane-meta").textContent = [conv.state === "ENDED" ? `Ended (${(conv.endReason || "").toLowerCase().replaceAll("_", " ")})` : conv.state.toLowerCase(), `channel ${ch.name || conv.channelId}`, conv.topic].filter(Boolean).join(" · ");
  const msgs = byPrefix("message/").filter((x) => x.conversationId === conv.id).sort((a, b) => a.serverTimestamp - b.serverTimestamp);
  syncList($("messages"), msgs, (x) => x.id, () => el("li", {}), (li, x) => {
    li.className = "amsg " + (x.internal ? "internal" : x.fromMessenger ? "visitor" : "agent");
    const body = [];
    if (x.type === "FILE") {
      const url = withToken(`/sandbox/api/files/${encodeURIComponent(x.id)}`);
      body.push((x.mimeType || "").startsWith("image/")
        ? el("div", { class: "file" }, el("img", { src: url, alt: x.fileName }))
        : el("div", { class: "file" }, el("span", { "aria-hidden": "true", text: "📎" }), el("a", { href: url, text: x.fileName }), el("span", { class: "meta", text: size(x.fileSize) })));
      if (x.caption) body.push(el("div", { class: "text", text: x.caption }));
    } else body.push(el("div", { class: "text", text: x.text || "" }));
    const foot = el("div", { class: "foot" }, el("span", { text: time(x.serverTimestamp) }));
    if (x.internal) foot.append(el("span", { text: "Internal note" }));
    else foot.append(el("span", { class: `mstate ${x.state}`, text: (AGENT_STATES[x.state] || x.state) + (x.failureText ? ` · ${x.failureText}` : "") }));
    if (x.fromMessenger && x.state !== "READ" && conv.state !== "ENDED") {
      foot.append(el("button", { type: "button", class: "ghost small", text: "Mark read", "aria-label": "Mark this message read", onclick: () => api("POST", `/conversations/${conv.id}/messages/${x.id}/read`, {}).catch((e) => toast(e.message)) }));
    }
    fill(li, el("div", { class: "who", text: x.sender.displayName || (x.fromMessenger ? "Customer" : "Agent") }), ...body, foot);
  }, (x) => x.serverTimestamp);
  const list = $("messages");
  if (list.dataset.count !== String(msgs.length) + conv.id) { list.dataset.count = String(msgs.length) + conv.id; list.scrollTop = list.scrollHeight; }
}

$("reply-file").addEventListener("change", () => { const f = $("reply-file").files[0]; $("reply-file-name").textContent = f ? f.name : ""; });
$("reply-text").addEventListener("keydown", (ev) => { if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("reply").requestSubmit(); } });
$("reply").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!selected) return;
  const text = $("reply-text").value;
  let file = null;
  try { file = await readFile($("reply-file")); } catch (e) { toast("The file could not be read: " + e.message); return; }
  if (!text.trim() && !file) { $("reply-text").focus(); return; }
  const body = { internal: $("reply-internal").checked };
  if (file) { body.file = file; if (text.trim()) body.caption = text; } else body.text = text;
  if ($("reply-sender").value.trim()) body.senderName = $("reply-sender").value.trim();
  $("reply-send").disabled = true;
  try {
    await api("POST", `/conversations/${selected}/messages`, body);
    $("reply-text").value = ""; $("reply-file").value = ""; $("reply-file-name").textContent = "";
  } catch (e) { toast(e.message); } finally { $("reply-send").disabled = false; }
});
$("end").addEventListener("click", () => {
  if (!selected) return;
  api("POST", `/conversations/${selected}/end`, {}).catch((e) => toast(e.message));
});

// -- start a conversation ------------------------------------------------------------------
function startChannels() { return byPrefix("channel/").filter((c) => c.outboundSupported || c.webhookApiVersion !== "V4"); }
function updateStartLabel() {
  const ch = store.get(`channel/${$("start-channel").value}`);
  const field = ch && ch.contactIdentifierFieldName;
  const kind = ch && ch.messenger === "email_smtp" ? "Email address" : "Phone number";
  $("start-contact-label").textContent = field ? `Contact (${field})` : `Contact (${kind.toLowerCase()})`;
  $("start-contact").placeholder = ch && ch.messenger === "email_smtp" ? "customer@example.org" : "+14155550123";
}
$("start-open").addEventListener("click", () => {
  const channels = startChannels();
  $("start-channel").replaceChildren(...channels.map((c) => el("option", { value: c.id, text: `${messengerOf(c.messenger).label} · ${c.name}` })));
  if (activeChannel) { const ch = channels.find((c) => c.name === activeChannel); if (ch) $("start-channel").value = ch.id; }
  $("start-error").textContent = channels.length ? "" : "No channel supports outbound conversations.";
  updateStartLabel();
  $("start-dialog").showModal();
  $("start-contact").focus();
});
$("start-channel").addEventListener("change", updateStartLabel);
$("start-contact").addEventListener("input", () => { $("start-error").textContent = ""; });
$("start-cancel").addEventListener("click", () => $("start-dialog").close());
$("start-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("start-error").textContent = "";
  $("start-submit").disabled = true;
  try {
    const conv = await api("POST", "/conversations/start", {
      channelId: $("start-channel").value, contactIdentifier: $("start-contact").value,
      name: $("start-name").value || undefined, topic: $("start-topic").value || undefined,
    });
    $("start-dialog").close();
    $("start-contact").value = ""; $("start-name").value = ""; $("start-topic").value = "";
    store.set(`conversation/${conv.id}`, { ...conv, lastText: null });
    renderConversations();
    select(conv.id);
    $("reply-text").focus();
  } catch (e) { $("start-error").textContent = e.message; } finally { $("start-submit").disabled = false; }
});

// -- deliveries ----------------------------------------------------------------------------
function renderDeliveries() {
  const ds = byPrefix("delivery/").sort((a, b) => b.created - a.created);
  syncList($("delivery-log"), ds, (d) => d.id, (d) => {
    const li = el("li", { class: "delivery" },
      el("div", { class: "line1" }, el("span", { class: "dstate" }), el("span", { class: "name", text: d.name.replace(/^outbound\.(external_messenger\.)?/, "").replace(/^external_messenger\./, ""), title: d.name })),
      el("div", { class: "meta outcome" }),
      el("details", {}, el("summary", { text: "Request and answer" }), el("pre", { class: "req" }), el("pre", { class: "resp" })));
    return li;
  }, (li, d) => {
    const st = li.querySelector(".dstate");
    st.className = `dstate ${d.state}`;
    st.textContent = d.state;
    const last = d.attempts[d.attempts.length - 1];
    li.querySelector(".outcome").textContent = `${time(d.created)} · ${plural(d.attempts.length, "attempt")}` +
      (last ? ` · ${last.status ?? ""} ${last.error ?? ""} · ${Math.round(last.durationMs)} ms` : "");
    li.querySelector(".req").textContent = JSON.stringify(d.body, null, 2);
    li.querySelector(".resp").textContent = last ? "→ " + (typeof last.responseBody === "string" ? last.responseBody : JSON.stringify(last.responseBody, null, 2)) : "→ (no answer yet)";
  }, (d) => -d.created);
}

// -- outage --------------------------------------------------------------------------------
$("outage-start").addEventListener("click", () => api("POST", "/outage", { seconds: 30 }).catch((e) => toast(e.message)));
$("outage-stop").addEventListener("click", () => api("DELETE", "/outage").catch((e) => toast(e.message)));

// -- live updates --------------------------------------------------------------------------
function apply(change) {
  if (change.reset) store.clear();
  for (const k of change.remove) store.delete(k);
  for (const { key, data } of change.upsert) store.set(key, data);
  const touched = (p) => change.reset || change.remove.some((k) => k.startsWith(p)) || change.upsert.some((u) => u.key.startsWith(p));
  if (touched("outage")) renderOutage();
  if (touched("customer/") || touched("entry/")) renderCustomers();
  if (touched("conversation/") || touched("channel/") || touched("message/")) renderConversations();
  if (touched("delivery/")) renderDeliveries();
}

function connect() {
  const source = new EventSource(withToken("/sandbox/api/events"));
  source.onopen = () => { $("live").textContent = "live"; $("live").classList.add("on"); };
  source.onmessage = (ev) => apply(JSON.parse(ev.data));
  source.onerror = () => { $("live").textContent = "reconnecting…"; $("live").classList.remove("on"); };
}
connect();
