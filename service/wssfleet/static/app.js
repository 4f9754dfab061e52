// Demo page: one channel through the client contract's ES module (/wssfleet-client.js, the
// same one applications import: docs/protocol.md). The module reconnects with backoff,
// comes back with `since`, probes a quiet path (an empty frame: a moved front door answers it
// with a reset), gives up on a silent connection after the heartbeat, and sends a
// publish again (same id) until it is stored; this page only shows what happens.
import { Client } from "/wssfleet-client.js";

const params = new URLSearchParams(location.hash.slice(1));
const token = params.get("token") || "";
const channel = params.get("channel") || "lobby";
const log = document.getElementById("log");
const status = document.getElementById("status");
const input = document.getElementById("message");
document.getElementById("channel").textContent = channel;

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

function onEvent(kind, detail) {
  if (kind === "connecting") {
    setStatus("connecting", "connecting…");
  } else if (kind === "connected") {
    setStatus("open", "connected");
    document.getElementById("worker").textContent = detail.worker;
    show(`joined ${channel} on ${detail.worker} as ${detail.sub}`, "system");
  } else if (kind === "waiting") {
    setStatus("closed", `disconnected (${detail.why}), retrying in ${(detail.delayMs / 1000).toFixed(1)} s`);
  } else if (kind === "stopped") {
    setStatus("closed", `closed (${detail.code} ${detail.reason}): not retrying`);
  }
}

if (!token) {
  setStatus("closed", "no token: open this page with #token=…");
} else {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const client = new Client(`${scheme}://${location.host}/ws`, { token, onEvent });
  client.subscribe(channel, (message) => {
    if (message.gap) {
      show("some messages are no longer in the history: reload for the full state", "system");
    } else {
      const text = typeof message.data === "string" ? message.data : JSON.stringify(message.data);
      show(`${message.from}: ${text}`);
    }
  });
  document.getElementById("send").addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value) {
      client.publish(channel, input.value).catch((error) => show(`not sent: ${error.message}`, "system"));
      input.value = "";
    }
  });
}
