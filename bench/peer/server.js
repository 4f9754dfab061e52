// The peer: wssfleet's protocol served the way the seeds build it (Node `ws` 8), written as a
// careful Node developer would. Same checks before the upgrade (path, origin, JWT HS256 with
// sub and exp, channel grants), same size limit, same per-client rate limit, same JSON frames,
// and the same message plane: each publish calls wssfleet's own store-and-publish function on
// Redis (history stream, offset) and reaches the other processes by Redis pub/sub.
//
// It lacks what the bench does not exercise: recovery by `since`, drains, metrics. It has
// wssfleet's /internal/shed (clients closed with 1012 over a window), which the bench's
// reconnect storm asks both sides for.
//
// Lean, as a Node engineer writes it for production: the token is checked with one
// HMAC-SHA256 from Node's crypto (no JWT library), ws keeps no client set of its own
// (clientTracking off: the one set here serves the keepalive and the heartbeat), compression
// is off, and every connection shares the same listener functions (no closures per client).
'use strict';

const http = require('node:http');
const crypto = require('node:crypto');
const { WebSocketServer } = require('ws');
const Redis = require('ioredis');

const env = process.env;
const PORT = Number(env.PEER_PORT);
const SECRET = env.PEER_JWT_SECRET;
const ORIGINS = new Set((env.PEER_ALLOWED_ORIGINS || '').split(','));
const MAX_BYTES = Number(env.PEER_MAX_MESSAGE_BYTES || 65536);
const RATE = Number(env.PEER_MESSAGES_PER_SECOND || 50);
const BACKLOG_BYTES = Number(env.PEER_BACKLOG_BYTES || 4 * 1024 * 1024);
const HISTORY_SIZE = String(env.PEER_HISTORY_SIZE || 1000);
const HISTORY_TTL = String(env.PEER_HISTORY_TTL || 86400);
// The function's bounds on what publishers store, as wssfleet passes them (bench/compare.py).
const PUBLISH_LIMITS = JSON.parse(env.PEER_PUBLISH_LIMITS);
const PUBLISH_IDS = env.PEER_PUBLISH_IDS;
const WORKER = `127.0.0.1:${PORT}`;
// As wssfleet: a frame to every client sent nothing for this long (heartbeat_interval).
const HEARTBEAT_SECONDS = Number(env.PEER_HEARTBEAT_INTERVAL || 5);
// The key /internal/shed asks for, as wssfleet's internal_key; empty: the path does not exist.
const INTERNAL_KEY = Buffer.from(`Bearer ${env.PEER_INTERNAL_KEY || ''}`);

const CHANNEL = /^[A-Za-z0-9_.:-]{1,64}$/;
const SUBJECT = /^[A-Za-z0-9_.@:+-]{1,64}$/;
const PATTERN = /^[A-Za-z0-9_.:*-]{1,64}$/;
const MAX_CHANNELS = 100;

const redis = new Redis(env.PEER_REDIS_URL);
const bus = new Redis(env.PEER_REDIS_URL);

// channel -> Set of sockets, and the last offset delivered.
const feeds = new Map();

function busChannel(channel) {
  return `wssfleet:channel:${channel}`;
}

function matcher(patterns) {
  if (!Array.isArray(patterns)) return null;
  if (!patterns.every((p) => typeof p === 'string' && PATTERN.test(p))) throw new Error('pattern');
  const alternatives = patterns.map((p) =>
    p.replace(/[.*+?^${}()|[\]\\-]/g, (c) => (c === '*' ? '[A-Za-z0-9_.:-]*' : `\\${c}`)),
  );
  return new RegExp(`^(?:${alternatives.join('|')})$`);
}

function send(ws, object) {
  ws.send(JSON.stringify(object));
  ws.spoke = true;
}

function refuse(socket, status, reason) {
  socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\n` +
    `Content-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(reason) + 1}\r\n\r\n${reason}\n`);
}

const KEY = Buffer.from(SECRET);

// A JWT signed HS256 with SECRET, not expired (RFC 7519: exp, and nbf when present).
function verify(token) {
  const parts = typeof token === 'string' ? token.split('.') : [];
  if (parts.length !== 3) throw new Error('format');
  const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString());
  if (header === null || header.alg !== 'HS256') throw new Error('algorithm');
  const signature = Buffer.from(parts[2], 'base64url');
  const expected = crypto.createHmac('sha256', KEY).update(`${parts[0]}.${parts[1]}`).digest();
  if (signature.length !== expected.length || !crypto.timingSafeEqual(signature, expected)) {
    throw new Error('signature');
  }
  const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
  const now = Date.now() / 1000;
  if (claims === null || typeof claims.exp !== 'number' || claims.exp <= now) throw new Error('expired');
  if (claims.nbf !== undefined && !(typeof claims.nbf === 'number' && claims.nbf <= now)) {
    throw new Error('not yet valid');
  }
  if (typeof claims.sub !== 'string' || !SUBJECT.test(claims.sub)) throw new Error('claims');
  return {
    subject: claims.sub,
    expires: Math.floor(claims.exp),
    subscribe: matcher(claims.subscribe || []),
    publish: matcher(claims.publish || []),
  };
}

function join(ws, channel) {
  if (!ws.grant.subscribe || !ws.grant.subscribe.test(channel)) {
    return send(ws, { type: 'error', reason: 'not allowed', channel });
  }
  if (!ws.channels.has(channel) && ws.channels.size >= MAX_CHANNELS) {
    return send(ws, { type: 'error', reason: `at most ${MAX_CHANNELS} channels` });
  }
  let feed = feeds.get(channel);
  if (!feed) {
    feed = { members: new Set(), offset: '' };
    feeds.set(channel, feed);
    bus.subscribe(busChannel(channel));
  }
  feed.members.add(ws);
  ws.channels.add(channel);
  send(ws, { type: 'subscribed', channel, offset: feed.offset });
}

function leave(ws, channel) {
  ws.channels.delete(channel);
  const feed = feeds.get(channel);
  if (!feed) return;
  feed.members.delete(ws);
  if (feed.members.size === 0) {
    feeds.delete(channel);
    bus.unsubscribe(busChannel(channel));
  }
}

async function publish(ws, request) {
  const { channel, id } = request;
  const ids = id === undefined ? {} : { id };
  if (!ws.grant.publish || !ws.grant.publish.test(channel)) {
    return send(ws, { type: 'error', reason: 'not allowed', channel, ...ids });
  }
  const frame = JSON.stringify({ type: 'message', channel, data: request.data, from: ws.grant.subject });
  const head = `${frame.slice(0, -1)},"offset":"`;
  const subject = `${ws.grant.subject.length}:${ws.grant.subject}`;
  const keys = [`wssfleet:history:${channel}`, `wssfleet:history-state:${channel}`,
    'wssfleet:history-channels', `wssfleet:subject-channels:${subject}`];
  if (id !== undefined) {
    keys.push(`wssfleet:published:${channel.length}:${channel}:${subject}:${JSON.stringify(id)}`,
      `wssfleet:subject-ids:${subject}`, 'wssfleet:publish-ids');
  }
  try {
    const offset = await redis.call('FCALL', 'wssfleet_store_and_publish', keys.length, ...keys,
      busChannel(channel), head,
      HISTORY_SIZE, HISTORY_TTL, crypto.randomBytes(4).toString('hex'), ...PUBLISH_LIMITS, channel,
      '0', PUBLISH_IDS);
    if (id !== undefined) send(ws, { type: 'published', id, offset });
  } catch (error) {
    send(ws, { type: 'error', reason: `not published: ${error.message}`, ...ids });
  }
}

function takeToken(ws) {
  const now = performance.now();
  ws.allowance = Math.min(RATE, ws.allowance + ((now - ws.checked) / 1000) * RATE);
  ws.checked = now;
  if (ws.allowance < 1) return false;
  ws.allowance -= 1;
  return true;
}

function validRequest(frame) {
  if (frame === null || typeof frame !== 'object' || Array.isArray(frame)) return 'a frame must be a JSON object';
  const { type } = frame;
  if (type === 'subscribe' || type === 'unsubscribe' || type === 'publish') {
    if (typeof frame.channel !== 'string') return `${type} needs a string field 'channel'`;
    if (!CHANNEL.test(frame.channel)) return 'a channel is 1-64 characters of A-Z a-z 0-9 _ . : -';
    if (type === 'publish' && !('data' in frame)) return "publish needs a field 'data'";
    const id = frame.id;
    if (type === 'publish' && id !== undefined && id !== null &&
      !((typeof id === 'string' && id.length >= 1 && id.length <= 64) || Number.isInteger(id))) {
      return "'id' is a string of 1-64 characters or an integer";
    }
    return null;
  }
  if (type === 'echo') return 'data' in frame ? null : "echo needs a field 'data'";
  return type === undefined ? "missing field 'type'" : `unknown type '${String(type).slice(0, 32)}'`;
}

function answer(ws, text) {
  let frame;
  let problem = null;
  try {
    frame = JSON.parse(text);
    problem = validRequest(frame);
  } catch {
    problem = 'malformed JSON';
  }
  if (!takeToken(ws)) {
    const ids = frame && frame.id !== undefined ? { id: frame.id } : {};
    return send(ws, { type: 'error', reason: 'rate limited: message dropped', ...ids });
  }
  if (problem) return send(ws, { type: 'error', reason: problem });
  switch (frame.type) {
    case 'echo':
      return send(ws, { type: 'echo', data: frame.data });
    case 'subscribe':
      return join(ws, frame.channel);
    case 'unsubscribe':
      leave(ws, frame.channel);
      return send(ws, { type: 'unsubscribed', channel: frame.channel });
    default:
      return publish(ws, frame);
  }
}

// A message from the bus: "<offset> <frame>", encoded once for every subscriber here.
bus.on('messageBuffer', (channelBuffer, payload) => {
  const feed = feeds.get(channelBuffer.toString().slice('wssfleet:channel:'.length));
  if (!feed) return;
  const space = payload.indexOf(32);
  feed.offset = payload.toString('latin1', 0, space);
  const frame = payload.subarray(space + 1);
  for (const ws of feed.members) {
    if (ws.bufferedAmount > BACKLOG_BYTES) {
      ws.close(1008, 'send queue overflow');
    } else {
      ws.send(frame, { binary: false });
      ws.spoke = true;
    }
  }
});

const server = http.createServer((request, response) => {
  if (request.url === '/healthz') {
    response.writeHead(200, { 'Content-Type': 'application/json' });
    return response.end(JSON.stringify({ status: 'ok', redis: redis.status === 'ready' ? 'connected' : 'disconnected', worker: WORKER, connections: clients.size }));
  }
  if (request.url.startsWith('/internal/shed?')) return shed(request, response);
  response.writeHead(404).end('not found\n');
});

// GET /internal/shed?count=N&seconds=S with the internal key, as wssfleet answers it: N
// clients closed with 1012 evenly over S seconds, so that they reconnect elsewhere.
function shed(request, response) {
  const presented = Buffer.from(request.headers.authorization || '');
  if (!env.PEER_INTERNAL_KEY || request.headers['x-forwarded-for'] !== undefined
      || presented.length !== INTERNAL_KEY.length || !crypto.timingSafeEqual(presented, INTERNAL_KEY)) {
    return response.writeHead(404).end('not found\n');
  }
  const query = new URL(request.url, 'http://peer').searchParams;
  const count = Number(query.get('count'));
  const seconds = Number(query.get('seconds') || 1);
  if (!(Number.isInteger(count) && count >= 1 && count <= 1000000 && seconds >= 0.1 && seconds <= 600)) {
    return response.writeHead(400).end('give count=1..1000000 and seconds=0.1..600\n');
  }
  const chosen = [...clients].slice(0, count);
  chosen.forEach((ws, index) => setTimeout(
    () => ws.close(1012, 'service restart: reconnect'), (index * seconds * 1000) / chosen.length));
  response.writeHead(202, { 'Content-Type': 'application/json' });
  return response.end(JSON.stringify({ shedding: chosen.length }));
}

const wss = new WebSocketServer({
  noServer: true, maxPayload: MAX_BYTES, perMessageDeflate: false, clientTracking: false,
});
const clients = new Set();

server.on('upgrade', (request, socket, head) => {
  const url = new URL(request.url, 'http://peer');
  let channel;
  if (url.pathname === '/ws') channel = '';
  else if (url.pathname.startsWith('/ws/')) channel = url.pathname.slice(4);
  else return refuse(socket, 404, 'not found');
  if (channel && !CHANNEL.test(channel)) return refuse(socket, 404, 'bad channel');
  const origin = request.headers.origin;
  if (origin !== undefined && !ORIGINS.has(origin.replace(/\/$/, ''))) {
    return refuse(socket, 403, 'origin not allowed');
  }
  const header = request.headers.authorization || '';
  const token = header.toLowerCase().startsWith('bearer ') ? header.slice(7).trim() : url.searchParams.get('token');
  let grant;
  try {
    grant = verify(token);
  } catch {
    return refuse(socket, 401, 'invalid token');
  }
  wss.handleUpgrade(request, socket, head, (ws) => {
    ws.grant = grant;
    ws.channels = new Set();
    ws.allowance = RATE;
    ws.checked = performance.now();
    ws.isAlive = true;
    wss.emit('connection', ws, channel);
  });
});

// Listeners shared by every connection (`this` is the socket).
function onPong() {
  this.isAlive = true;
}

function onMessage(data, isBinary) {
  if (isBinary) return this.close(1003, 'binary frames are not supported');
  // A path probe (an empty frame, docs/protocol.md): counted against the rate, not answered.
  if (data.length === 0) {
    if (!takeToken(this)) send(this, { type: 'error', reason: 'rate limited: message dropped' });
    return;
  }
  answer(this, data.toString());
}

function onClose() {
  clients.delete(this);
  for (const joined of this.channels) leave(this, joined);
}

function ignore() {}

wss.on('connection', (ws, channel) => {
  clients.add(ws);
  ws.on('pong', onPong);
  ws.on('message', onMessage);
  ws.on('close', onClose);
  ws.on('error', ignore);
  send(ws, {
    type: 'welcome', worker: WORKER, channels: channel ? [channel] : [], sub: ws.grant.subject,
    heartbeat: HEARTBEAT_SECONDS, expires: ws.grant.expires,
  });
  if (channel) join(ws, channel);
});

// One keepalive timer for every connection, as the ws README shows.
const keepalive = setInterval(() => {
  for (const ws of clients) {
    if (!ws.isAlive) {
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.ping();
  }
}, 20000);

// Two looks per interval, as wssfleet: a client written to since the last look is skipped.
const HEARTBEAT = JSON.stringify({ type: 'heartbeat' });
const heartbeat = setInterval(() => {
  for (const ws of clients) {
    if (ws.spoke) ws.spoke = false;
    else if (ws.readyState === ws.OPEN) {
      ws.send(HEARTBEAT);
      ws.spoke = true;
    }
  }
}, (HEARTBEAT_SECONDS * 1000) / 2);

function stop() {
  clearInterval(keepalive);
  clearInterval(heartbeat);
  for (const ws of clients) ws.close(1001, 'going away');
  server.close();
  redis.quit();
  bus.quit();
  // Clients that do not answer the close within a second are cut off, as wssfleet does.
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

server.listen(PORT, '127.0.0.1');
