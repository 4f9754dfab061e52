// Demo client: one channel, reconnects with exponential backoff and full jitter.
"use strict";

const params = new URLSearchParams(location.hash.slice(1));
const token = params.get("token") || "";
const channel = params.get("channel") || "lobby";
const log = document.getElementById("log");
const status = document.getElementById("status");
const input = document.getElementById("message");
document.getElementById("channel").textContent = channel;

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30000;
let attempt = 0;
let socket = null;

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
  const url = `wss://${location.host}/ws/${encodeURIComponent(channel)}?token=${encodeURIComponent(token)}`;
  socket = new WebSocket(url);
  setStatus("connecting", "connecting…");
  socket.onopen = () => {
    attempt = 0;
    setStatus("open", "connected");
  };
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === "welcome") {
      document.getElementById("worker").textContent = frame.worker;
      show(`joined ${channel} on ${frame.worker} as ${frame.sub}`, "system");
    } else if (frame.type === "message") {
      const text = typeof frame.data === "string" ? frame.data : JSON.stringify(frame.data);
      show(`${frame.from}: ${text}`);
    } else if (frame.type === "error") {
      show(`error: ${frame.reason}`, "system");
    }
  };
  socket.onclose = (event) => {
    const delay = Math.random() * Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
    attempt += 1;
    setStatus("closed", `disconnected (${event.code}), retrying in ${(delay / 1000).toFixed(1)} s`);
    setTimeout(connect, delay);
  };
}

document.getElementById("send").addEventListener("submit", (event) => {
  event.preventDefault();
  if (socket && socket.readyState === WebSocket.OPEN && input.value) {
    socket.send(JSON.stringify({ type: "publish", channel, data: input.value }));
    input.value = "";
  }
});

if (!token) {
  setStatus("closed", "no token: open this page with #token=…");
} else {
  connect();
}
