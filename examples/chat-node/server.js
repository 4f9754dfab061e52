// Seed 001's setup, as a team would bring it to the fleet: chat servers on several hosts,
// each holding its own clients, passing every message through Redis pub/sub so that a client
// on one host hears a client on another. The fleet gives the app its own Redis user, limited
// to its own key and channel prefix (REDIS_PREFIX), and the Sentinels that name the primary.
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const { WebSocketServer } = require('ws');
const Redis = require('ioredis');

const env = process.env;
const PORT = Number(env.PORT || 8080);
const HOST = env.HOST || '127.0.0.1';
const INSTANCE = env.WSSFLEET_INSTANCE || `${HOST}:${PORT}`;
const ROOM = `${env.REDIS_PREFIX || 'chat:'}room`;
const MAX_TEXT = 1000;

function redisOptions() {
  const url = new URL(env.REDIS_URL || 'redis://127.0.0.1:6379');
  const options = {
    username: decodeURIComponent(url.username) || undefined,
    password: decodeURIComponent(url.password) || undefined,
    maxRetriesPerRequest: 1,
  };
  if (url.protocol === 'rediss:') {
    // The fleet's internal CA when internal_tls is on.
    options.tls = env.REDIS_CA_FILE ? { ca: fs.readFileSync(env.REDIS_CA_FILE) } : {};
  }
  if (!env.REDIS_SENTINELS) return { ...options, host: url.hostname, port: Number(url.port || 6379) };
  return {
    ...options,
    sentinels: env.REDIS_SENTINELS.split(',').map((address) => {
      const [host, port] = address.split(':');
      return { host, port: Number(port) };
    }),
    name: env.REDIS_SENTINEL_NAME,
    sentinelUsername: env.REDIS_SENTINEL_USER,
    sentinelPassword: env.REDIS_SENTINEL_PASSWORD,
    // The fleet's Sentinel user may only ask where the primary is, not list the Sentinels:
    // the list it is given is the whole list.
    updateSentinels: false,
    ...(options.tls ? { enableTLSForSentinelMode: true, sentinelTLS: options.tls } : {}),
  };
}

// A message sent while Redis is away fails at once (the client is told) rather than waiting
// in a queue; the subscription waits for the connection, and ioredis renews it after each.
const publisher = new Redis({ ...redisOptions(), enableOfflineQueue: false });
const subscriber = new Redis(redisOptions());
for (const connection of [publisher, subscriber]) {
  connection.on('error', (error) => console.error(`redis: ${error.message}`));
}

// The fleet's rollout asks an instance to move its clients before it restarts it
// (apps.NAME.drain_path): each is closed with 1012, spread over the window it gives, so the
// others take them over a few seconds rather than all in one.
const MOST_DRAIN_SECONDS = 300;

function drain(seconds) {
  const clients = [...wss.clients];
  clients.forEach((socket, index) => {
    const at = (seconds * 1000 * index) / clients.length;
    setTimeout(() => socket.close(1012, 'moving to another instance'), at).unref();
  });
  return clients.length;
}

const server = http.createServer((request, response) => {
  const url = new URL(request.url, 'http://instance');
  if (url.pathname === '/healthz') {
    response.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    return;
  }
  if (url.pathname === '/drain' && request.method === 'POST') {
    const asked = Number(url.searchParams.get('seconds'));
    const seconds = Number.isFinite(asked) ? Math.min(Math.max(asked, 0), MOST_DRAIN_SECONDS) : 0;
    const clients = drain(seconds);
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(JSON.stringify({ clients, seconds }));
    return;
  }
  response.writeHead(404).end();
});
const wss = new WebSocketServer({ server, maxPayload: 4 * 1024 });

subscriber.subscribe(ROOM).catch((error) => console.error(`subscribe: ${error.message}`));
subscriber.on('message', (_channel, message) => {
  for (const socket of wss.clients) socket.send(message);
});

wss.on('connection', (socket) => {
  socket.send(JSON.stringify({ type: 'hello', instance: INSTANCE }));
  socket.on('message', (data) => {
    let text;
    try {
      text = String(JSON.parse(data).text).slice(0, MAX_TEXT);
    } catch {
      socket.close(1003, 'send {"text": "..."}');
      return;
    }
    publisher
      .publish(ROOM, JSON.stringify({ type: 'chat', text, via: INSTANCE }))
      .catch(() => socket.send(JSON.stringify({ type: 'error', reason: 'not sent: retry' })));
  });
});

process.on('SIGTERM', () => {
  for (const socket of wss.clients) socket.close(1012, 'restarting');
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 5000).unref();
});

server.listen(PORT, HOST, () => console.log(`chat listening on ${HOST}:${PORT}, room ${ROOM}`));
