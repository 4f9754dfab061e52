// Demo client: one channel, following wssfleet's client contract (docs/continuity.md, "The client
// contract"): after 1001, 1006 or 1012 reconnect after a random delay in [0, 1] s; after a
// failed attempt back off exponentially with full jitter, up to 10 s; after 1008 or a 4xxx
// code do not retry. It comes back with ?since=<last offset> so nothing published meanwhile
// is missed, and publishes with an id, sending again (same id) until the message is stored.
// The server sends something at least every `heartbeat` seconds (the welcome says how many):
// silent for that plus 5 s, the path is dead (a master gone) and it reconnects as after 1006.
"use strict";

const params = new URLSearchParams(location.hash.slice(1));
const token = params.get("token") || "";
const channel = params.get("channel") || "lobby";
const log = document.getElementById("log");
const status = document.getElementById("status");
const input = document.getElementById("message");
document.getElementById("channel").textContent = channel;

const FIRST_DELAY_MS = 1000;
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 10000;
const RETRY_AFTER = new Set([1001, 1006, 1012]);
const HEARTBEAT_GRACE_MS = 5000;
let heartbeatMs = null;
let lastFrameAt = 0;
let failures = 0;
let opened = false;
let socket = null;
// The last offset received; null before the first subscription ("" = the channel was empty).
let offset = null;
// Messages sent but not yet stored, by id: sent again after a reconnection or an error.
const unacknowledged = new Map();

function show(text, kind) {
  const item = document.createElement("li");
  item.textContent = text;
  if (kind) item.className = kind;
  log.appendChild(item);
  log.scrollTop = log.scrollHeight;
}

function setStatus(state, text) {
  status.dataset.state = state;
  status.textContent = text;
}

function connect() {
  const since = offset === null ? "" : `&since=${encodeURIComponent(offset)}`;
  const url = `wss://${location.host}/ws/${encodeURIComponent(channel)}?token=${encodeURIComponent(token)}${since}`;
  socket = new WebSocket(url);
  setStatus("connecting", "connecting…");
  opened = false;
  socket.onopen = () => {
    opened = true;
    failures = 0;
    setStatus("open", "connected");
    for (const [id, data] of unacknowledged) send(id, data);
  };
  socket.onmessage = (event) => {
    lastFrameAt = Date.now();
    const frame = JSON.parse(event.data);
    if (frame.type === "welcome") {
      // A server from before heartbeats says nothing of them: then silence proves nothing.
      heartbeatMs = frame.heartbeat ? frame.heartbeat * 1000 : null;
      document.getElementById("worker").textContent = frame.worker;
      show(`joined ${channel} on ${frame.worker} as ${frame.sub}`, "system");
    } else if (frame.type === "subscribed") {
      if (frame.recovered === false) {
        show("some messages are no longer in the history: reload for the full state", "system");
      }
      if ("offset" in frame) offset = frame.offset;
    } else if (frame.type === "message") {
      offset = frame.offset;
      const text = typeof frame.data === "string" ? frame.data : JSON.stringify(frame.data);
      show(`${frame.from}: ${text}`);
    } else if (frame.type === "published") {
      unacknowledged.delete(frame.id);
    } else if (frame.type === "error") {
      show(`error: ${frame.reason}`, "system");
      if (unacknowledged.has(frame.id)) {
        setTimeout(() => send(frame.id, unacknowledged.get(frame.id)), 1000);
      }
    }
  };
  socket.onclose = (event) => {
    heartbeatMs = null;
    if (opened && !RETRY_AFTER.has(event.code)) {
      setStatus("closed", `closed (${event.code} ${event.reason}): not retrying`);
      return;
    }
    let delay;
    if (opened) {
      delay = Math.random() * FIRST_DELAY_MS;
    } else {
      failures += 1;
      delay = Math.random() * Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** failures);
    }
    setStatus("closed", `disconnected (${event.code}), retrying in ${(delay / 1000).toFixed(1)} s`);
    setTimeout(connect, delay);
  };
}

// A dead path delivers no close event for minutes: give up on a silent socket ourselves.
setInterval(() => {
  if (heartbeatMs !== null && Date.now() - lastFrameAt > heartbeatMs + HEARTBEAT_GRACE_MS) {
    const dead = socket;
    const onclose = dead.onclose;
    dead.onclose = null;
    dead.onmessage = null;
    dead.close();
    onclose({ code: 1006, reason: "nothing heard: the connection is dead" });
  }
}, 1000);

function send(id, data) {
  if (socket && socket.readyState === WebSocket.OPEN && unacknowledged.has(id)) {
    socket.send(JSON.stringify({ type: "publish", channel, data, id }));
  }
}

document.getElementById("send").addEventListener("submit", (event) => {
  event.preventDefault();
  if (input.value) {
    const id = crypto.randomUUID();
    unacknowledged.set(id, input.value);
    send(id, input.value);
    input.value = "";
  }
});

if (!token) {
  setStatus("closed", "no token: open this page with #token=…");
} else {
  connect();
}
