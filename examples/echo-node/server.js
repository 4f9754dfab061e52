// Seed 000's server, as a team would bring it to the fleet: a Node.js `ws` server that echoes
// what a client sends and tells every client the time every 5 s. What the fleet asks of it
// (docs/apps.md): listen on PORT (and HOST), answer the health path, and on SIGTERM close its
// WebSockets with 1012 so that clients reconnect to another instance, then exit.
'use strict';

const http = require('node:http');
const { WebSocketServer } = require('ws');

const PORT = Number(process.env.PORT || 8080);
const HOST = process.env.HOST || '127.0.0.1';
// Who answered: the fleet names the instance; tests see a rollout move clients with it.
const INSTANCE = process.env.WSSFLEET_INSTANCE || `${HOST}:${PORT}`;

let accepted = 0;

const server = http.createServer((request, response) => {
  if (request.url === '/healthz') {
    response.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    return;
  }
  if (request.url === '/metrics') {
    // Prometheus's text format: what the fleet's Prometheus scrapes (apps.NAME.metrics_path).
    response.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(
      '# TYPE echo_connections gauge\n' +
        `echo_connections ${wss.clients.size}\n` +
        '# TYPE echo_connections_accepted_total counter\n' +
        `echo_connections_accepted_total ${accepted}\n`,
    );
    return;
  }
  response.writeHead(404).end();
});

// A bound on what one client can make this process hold.
const wss = new WebSocketServer({ server, maxPayload: 64 * 1024 });

wss.on('connection', (socket) => {
  accepted += 1;
  socket.send(JSON.stringify({ type: 'hello', instance: INSTANCE }));
  const clock = setInterval(
    () => socket.send(JSON.stringify({ type: 'time', at: new Date().toISOString() })),
    5000,
  );
  socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
  socket.on('close', () => clearInterval(clock));
});

process.on('SIGTERM', () => {
  // 1012 "service restart": the client reconnects, and HAProxy sends it to another instance.
  for (const socket of wss.clients) socket.close(1012, 'restarting');
  server.close(() => process.exit(0));
  // Clients that never answer the close are not waited for past the unit's stop timeout.
  setTimeout(() => process.exit(0), 5000).unref();
});

server.listen(PORT, HOST, () => console.log(`echo listening on ${HOST}:${PORT}`));
