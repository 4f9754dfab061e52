// wssfleet's client contract for browsers (and any runtime with a WebSocket global), as an
// ES module with no build step: `import { Client } from "/wssfleet-client.js"`.
//
// - closed with 1001 or 1006: reconnect after a random delay in [0, firstDelayMs]; with 1012
//   (a drain, a rebalance, a planned move of the front door: the fleet paces those closes
//   itself) after one in [0, restartDelayMs];
//   a failed attempt: wait a random delay in [0, min(backoffMaxMs, backoffBaseMs * 2^n)];
//   with several URLs (DNS mode: every master's address) each attempt tries the next;
// - closed with 1008 or a 4xxx code: stop, and say why (onEvent("stopped", ...));
// - nothing heard for the welcome's `heartbeat` + heartbeatGraceMs: the path is dead (a
//   master gone): drop it and reconnect as after 1006;
// - nothing heard for probeAfterMs: send an empty frame, a path probe the fleet ignores.
//   After the front door moved to another master, the new holder answers it with a reset
//   and the browser closes the socket (1006) at once: reconnect as after 1006;
// - subscriptions come back with `since` = the last offset received: nothing published
//   meanwhile is missed, nothing is delivered twice;
// - a publish carries an id and is sent again, same id, until it is acknowledged (after an
//   error reply that says `retry`, on each new connection, and after replyTimeoutMs without an
//   answer); one refused for good (not allowed, too large, over a limit) rejects at once with
//   the fleet's reason;
// - a refused subscribe is said: onMessage({channel, refused: "<reason>"}), and it ends;
// - with `token` a function: the token is renewed over the open connection before it expires
//   (refreshBeforeMs ahead, at most half its remaining life), and a connection closed with
//   4001 (token expired) reconnects with a new one. With a fixed token, 4001 stops.
//
//   const client = new Client("wss://ws.example.com/ws", { token: () => fetchToken() });
//   client.subscribe("lobby", (message) => show(message.from, message.data));
//   await client.publish("lobby", "hello");   // resolves with its offset once stored

const RETRY_AFTER = new Set([1001, 1006, 1012]);
const SERVICE_RESTART = 1012;
const TOKEN_EXPIRED = 4001;
const REFRESH_ID = "refresh";
const SUBSCRIBE_ID = "subscribe:";
const REFRESH_RETRY_MS = 5000;

export class Client {
  constructor(urls, options = {}) {
    this.urls = Array.isArray(urls) ? urls : [urls];
    this.token = options.token ?? "";
    this.firstDelayMs = options.firstDelayMs ?? 1000;
    this.restartDelayMs = options.restartDelayMs ?? 250;
    this.backoffBaseMs = options.backoffBaseMs ?? 500;
    this.backoffMaxMs = options.backoffMaxMs ?? 10000;
    this.heartbeatGraceMs = options.heartbeatGraceMs ?? 5000;
    this.probeAfterMs = options.probeAfterMs ?? 2500;
    this.probedAt = 0;
    this.replyTimeoutMs = options.replyTimeoutMs ?? 10000;
    this.refreshBeforeMs = options.refreshBeforeMs ?? 30000;
    this.refreshTimer = null;
    // ("connecting" | "connected" | "closed" | "stopped", detail)
    this.onEvent = options.onEvent ?? (() => {});
    this.subscriptions = new Map(); // channel -> { offset, onMessage }
    this.publishes = new Map(); // id -> { channel, data, resolve, reject, sentAt }
    this.socket = null;
    this.nextUrl = 0;
    this.failures = 0;
    this.stopped = null;
    this.heartbeatMs = null;
    this.lastHeardAt = 0;
    this.watchdog = setInterval(() => this.#checkAlive(), 500);
    this.#connect();
  }

  // Messages of `channel`, in order, once each: onMessage({channel, data, from, offset}),
  // or onMessage({channel, gap: true}) when the history no longer held what was missed.
  subscribe(channel, onMessage) {
    if (!this.subscriptions.has(channel)) {
      this.subscriptions.set(channel, { offset: null, onMessage });
      this.#send({ type: "subscribe", channel, id: SUBSCRIBE_ID + channel });
    }
  }

  unsubscribe(channel) {
    if (this.subscriptions.delete(channel)) this.#send({ type: "unsubscribe", channel });
  }

  // Resolves with the offset once the fleet stored it; sent again, same id, until then.
  publish(channel, data, id = crypto.randomUUID()) {
    if (this.stopped) return Promise.reject(this.stopped);
    const known = this.publishes.get(id);
    if (known) return known.promise;
    const entry = { channel, data, sentAt: null };
    entry.promise = new Promise((resolve, reject) => Object.assign(entry, { resolve, reject }));
    this.publishes.set(id, entry);
    this.#sendPublish(id);
    return entry.promise;
  }

  close() {
    this.#stop(1000, "closed by the application");
    if (this.socket) this.socket.close(1000);
  }

  async #connect() {
    if (this.stopped) return;
    const url = this.urls[this.nextUrl++ % this.urls.length];
    let token;
    try {
      token = typeof this.token === "function" ? await this.token() : this.token;
    } catch (error) {
      this.#retry(false, `no token: ${error}`);
      return;
    }
    const joiner = url.includes("?") ? "&" : "?";
    const socket = new WebSocket(`${url}${joiner}token=${encodeURIComponent(token)}`);
    this.socket = socket;
    let opened = false;
    this.onEvent("connecting", { url });
    socket.onmessage = (event) => {
      this.lastHeardAt = Date.now();
      const frame = JSON.parse(event.data);
      if (frame.type === "welcome") {
        opened = true;
        this.failures = 0;
        this.heartbeatMs = frame.heartbeat ? frame.heartbeat * 1000 : null;
        this.onEvent("connected", frame);
        this.#scheduleRefresh(frame.expires);
        for (const [channel, subscription] of this.subscriptions) {
          const since = subscription.offset === null ? {} : { since: subscription.offset };
          this.#send({ type: "subscribe", channel, id: SUBSCRIBE_ID + channel, ...since });
        }
        for (const id of this.publishes.keys()) this.#sendPublish(id);
      } else {
        this.#heard(frame);
      }
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.heartbeatMs = null;
      clearTimeout(this.refreshTimer);
      for (const entry of this.publishes.values()) entry.sentAt = null;
      this.onEvent("closed", { code: event.code, reason: event.reason });
      const renewable = event.code === TOKEN_EXPIRED && typeof this.token === "function";
      if (opened && !RETRY_AFTER.has(event.code) && !renewable) {
        this.#stop(event.code, event.reason || "closed by the server");
        return;
      }
      this.#retry(opened, `closed ${event.code}`, event.code);
    };
  }

  #retry(wasOpen, why, code) {
    if (this.stopped) return;
    let delay;
    if (wasOpen) {
      delay = Math.random() * (code === SERVICE_RESTART ? this.restartDelayMs : this.firstDelayMs);
    } else {
      this.failures += 1;
      delay = Math.random() * Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** this.failures);
    }
    this.onEvent("waiting", { why, delayMs: delay });
    setTimeout(() => this.#connect(), delay);
  }

  #heard(frame) {
    if (frame.type === "message") {
      const subscription = this.subscriptions.get(frame.channel);
      if (!subscription || (frame.offset && frame.offset === subscription.offset)) return;
      subscription.offset = frame.offset || subscription.offset;
      subscription.onMessage(frame);
    } else if (frame.type === "subscribed") {
      const subscription = this.subscriptions.get(frame.channel);
      if (!subscription) return;
      if (frame.recovered === false) subscription.onMessage({ channel: frame.channel, gap: true });
      if ("offset" in frame && !frame.missed) subscription.offset = frame.offset;
    } else if (frame.type === "published") {
      const entry = this.publishes.get(String(frame.id));
      if (entry) {
        this.publishes.delete(String(frame.id));
        entry.resolve(frame.offset);
      }
    } else if (frame.type === "refreshed") {
      this.#scheduleRefresh(frame.expires);
    } else if (frame.type === "error" && "id" in frame) {
      this.#refused(String(frame.id), frame);
    }
  }

  // An error that names a request: a publish is sent again when the fleet says it may succeed
  // (`retry`), else rejected; a subscribe ends; a refresh is tried again later.
  #refused(id, frame) {
    if (id === REFRESH_ID) {
      this.onEvent("refresh refused", { reason: frame.reason });
      this.#refreshIn(REFRESH_RETRY_MS);
    } else if (id.startsWith(SUBSCRIBE_ID)) {
      const channel = id.slice(SUBSCRIBE_ID.length);
      const subscription = this.subscriptions.get(channel);
      if (subscription) {
        this.subscriptions.delete(channel);
        subscription.onMessage({ channel, refused: frame.reason });
      }
    } else if (this.publishes.has(id)) {
      const entry = this.publishes.get(id);
      if (frame.retry) {
        // No Redis primary for a moment, not confirmed: again, same id.
        entry.sentAt = null;
        setTimeout(() => this.#sendPublish(id), 1000);
      } else {
        this.publishes.delete(id);
        entry.reject(Object.assign(new Error(`${entry.channel}: ${frame.reason}`), { reason: frame.reason }));
      }
    }
  }

  // Renew a token that expires at `expires` (Unix seconds) before it does, when the
  // application gave a way to get one.
  #scheduleRefresh(expires) {
    if (typeof this.token !== "function" || typeof expires !== "number") return;
    const remainingMs = expires * 1000 - Date.now();
    this.#refreshIn(Math.max(0, remainingMs - Math.min(this.refreshBeforeMs, remainingMs / 2)));
  }

  #refreshIn(delayMs) {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(async () => {
      let token;
      try {
        token = await this.token();
      } catch (error) {
        this.onEvent("refresh refused", { reason: `no token: ${error}` });
        this.#refreshIn(REFRESH_RETRY_MS);
        return;
      }
      this.#send({ type: "refresh", token, id: REFRESH_ID });
    }, delayMs);
  }

  // A dead path delivers no close event for minutes: give up on a silent socket ourselves,
  // and on one that leaves a publish unanswered.
  #checkAlive() {
    const socket = this.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const now = Date.now();
    if (this.probeAfterMs && now - this.lastHeardAt > this.probeAfterMs && this.probedAt <= this.lastHeardAt) {
      // One probe per quiet spell: an idle client sends one between two heartbeats, a busy
      // one none. Sent into a dead path, TCP retransmits it until an answer (a reset) comes.
      this.probedAt = now;
      socket.send("");
    }
    const silent = this.heartbeatMs !== null && now - this.lastHeardAt > this.heartbeatMs + this.heartbeatGraceMs;
    const unanswered = [...this.publishes.values()].some(
      (entry) => entry.sentAt !== null && now - entry.sentAt > this.replyTimeoutMs,
    );
    if (silent || unanswered) {
      const onclose = socket.onclose;
      socket.onclose = null;
      socket.onmessage = null;
      socket.close();
      onclose({ code: 1006, reason: "nothing heard: the connection is dead" });
    }
  }

  #send(frame) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(frame));
    }
  }

  #sendPublish(id) {
    const entry = this.publishes.get(id);
    if (!entry || !this.socket || this.socket.readyState !== WebSocket.OPEN) return;
    entry.sentAt = Date.now();
    this.#send({ type: "publish", channel: entry.channel, data: entry.data, id });
  }

  #stop(code, reason) {
    if (this.stopped) return;
    this.stopped = Object.assign(new Error(`${code} ${reason}`), { code, reason });
    clearInterval(this.watchdog);
    clearTimeout(this.refreshTimer);
    for (const entry of this.publishes.values()) entry.reject(this.stopped);
    this.publishes.clear();
    this.onEvent("stopped", { code, reason });
  }
}
