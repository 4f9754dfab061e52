// The load generator both services are measured with: WebSocket clients over TLS through
// HAProxy, driven by the bench (bench/compare.py) in three steps on stdin/stdout, so that it
// can read the services' CPU time around exactly the measured work:
//   load.js '<json job>'  ->  {"ready": true}   (clients open)
//   "go"                  ->  {"done": {...}}   (the measured work)
//   "close"               ->  exits after closing every client
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const readline = require('node:readline');
const nodeTls = require('node:tls');
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads');
const WebSocket = require('ws');

// A storm's thread (stormThreads) gets its share of the job from its parent.
const job = isMainThread ? JSON.parse(process.argv[2]) : workerData;
// One TLS context for every client: given `ca` alone, Node builds a context per connection,
// parsing the certificate again each time (about 2 ms of the load generator's CPU a client).
const tls = {
  secureContext: nodeTls.createSecureContext({ ca: fs.readFileSync(job.ca) }),
  origin: job.origin,
  perMessageDeflate: false,
};
const say = (object) => process.stdout.write(`${JSON.stringify(object)}\n`);

// The options of client `index`: from one of `job.sources` in turn, and to `job.address`
// whatever the URL's name resolves to (the lab's front door, with the domain's SNI and Host).
function clientOptions(index) {
  const options = { ...tls };
  if (job.sources) options.localAddress = job.sources[index % job.sources.length];
  if (job.address) {
    options.lookup = (host, lookupOptions, callback) => (lookupOptions && lookupOptions.all
      ? callback(null, [{ address: job.address, family: 4 }])
      : callback(null, job.address, 4));
  }
  if (job.handshakeSeconds) options.handshakeTimeout = job.handshakeSeconds * 1000;
  return options;
}

// Opens client `index` to `path`, resolved once it has read `answers` frames (welcome,
// subscribed); its token is one of `job.tokens` in turn, else `job.token`.
function open(path, answers, onFrame, index = 0) {
  return new Promise((resolve, reject) => {
    const token = job.tokens ? job.tokens[index % job.tokens.length] : job.token;
    const ws = new WebSocket(`${job.url}${path}?token=${token}`, clientOptions(index));
    let seen = 0;
    ws.on('message', (data) => {
      if (seen < answers) {
        seen += 1;
        if (seen === answers) resolve(ws);
      } else if (onFrame) {
        onFrame(data);
      }
    });
    ws.once('error', reject);
    ws.once('close', (code) => {
      if (seen < answers) reject(new Error(`closed with ${code} before its answers`));
    });
  });
}

async function openMany(count, concurrency, make) {
  const clients = [];
  for (let start = 0; start < count; start += concurrency) {
    const batch = [];
    for (let i = start; i < Math.min(count, start + concurrency); i += 1) batch.push(make(i));
    clients.push(...(await Promise.all(batch)));
  }
  return clients;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function percentile(sorted, fraction) {
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))];
}

const jobs = {
  // `clients` clients, each sending a frame and waiting for its echo, for `seconds`.
  async echo() {
    const frame = JSON.stringify({ type: 'echo', data: 'x'.repeat(job.bytes - 25) });
    const clients = await openMany(job.clients, 50, () => open('/ws', 1));
    return {
      clients,
      async run() {
        let answered = 0;
        const until = performance.now() + job.seconds * 1000;
        const started = performance.now();
        await Promise.all(clients.map((ws) => new Promise((resolve) => {
          ws.on('message', () => {
            answered += 1;
            if (performance.now() < until) ws.send(frame);
            else resolve();
          });
          ws.send(frame);
        })));
        return { messages: answered, seconds: (performance.now() - started) / 1000 };
      },
    };
  },

  // `subscribers` on one channel, one publisher at `rate` messages a second for `seconds`.
  async fanout() {
    const channel = `fan-${process.pid}-${Date.now()}`;
    const latencies = [];
    let delivered = 0;
    const onFrame = (data) => {
      const text = data.toString();
      if (!text.startsWith('{"type":"message"')) return;
      delivered += 1;
      latencies.push(performance.now() - JSON.parse(text).data);
    };
    const subscribers = await openMany(job.subscribers, 50, () => open(`/ws/${channel}`, 2, onFrame));
    const publisher = await open('/ws', 1);
    return {
      clients: [...subscribers, publisher],
      async run() {
        const count = Math.round(job.rate * job.seconds);
        const started = performance.now();
        for (let n = 0; n < count; n += 1) {
          await sleep(Math.max(0, started + (n * 1000) / job.rate - performance.now()));
          publisher.send(JSON.stringify({ type: 'publish', channel, data: performance.now() }));
        }
        const expected = count * job.subscribers;
        const deadline = performance.now() + 30000;
        while (delivered < expected && performance.now() < deadline) await sleep(20);
        latencies.sort((a, b) => a - b);
        return {
          deliveries: delivered,
          expected,
          p50_ms: percentile(latencies, 0.5),
          p99_ms: percentile(latencies, 0.99),
        };
      },
    };
  },

  // `pairs` publishers, each with one subscriber on its own channel; each publisher sends with
  // an id and waits for the "published" answer before the next, for `seconds`. How many were
  // published and delivered, and how long each publish waited for its answer (p50, p99).
  async publish() {
    const prefix = `pub-${process.pid}-${Date.now()}`;
    let delivered = 0;
    // Messages only: an idle subscriber also hears the service's heartbeats.
    const count = (data) => {
      if (data.toString().startsWith('{"type":"message"')) delivered += 1;
    };
    const subscribers = await openMany(job.pairs, 50, (i) => open(`/ws/${prefix}-${i}`, 2, count));
    const publishers = await openMany(job.pairs, 50, () => open('/ws', 1));
    return {
      clients: [...subscribers, ...publishers],
      async run() {
        let published = 0;
        const waits = [];
        const until = performance.now() + job.seconds * 1000;
        const started = performance.now();
        await Promise.all(publishers.map((ws, i) => new Promise((resolve, reject) => {
          let sentAt = 0;
          const next = () => {
            sentAt = performance.now();
            ws.send(JSON.stringify(
              { type: 'publish', channel: `${prefix}-${i}`, data: published, id: published }));
          };
          ws.on('message', (data) => {
            const text = data.toString();
            // A refusal would leave this publisher waiting for ever: fail the measure aloud.
            if (text.startsWith('{"type":"error"')) reject(new Error(`publish refused: ${text}`));
            if (!text.startsWith('{"type":"published"')) return;
            waits.push(performance.now() - sentAt);
            published += 1;
            if (performance.now() < until) next();
            else resolve();
          });
          next();
        })));
        const seconds = (performance.now() - started) / 1000;
        const deadline = performance.now() + 10000;
        while (delivered < published && performance.now() < deadline) await sleep(20);
        waits.sort((a, b) => a - b);
        return {
          published,
          delivered,
          seconds,
          ack_p50_ms: percentile(waits, 0.5),
          ack_p99_ms: percentile(waits, 0.99),
        };
      },
    };
  },

  // `clients` connections held open and idle; on "go", how many are still open after
  // `seconds` (0 by default) of the service's heartbeats.
  // With `tolerate`, clients that fail to open are counted, not fatal.
  async idle() {
    let failed = 0;
    const make = job.tolerate
      ? (index) => open('/ws', 1, null, index).catch(() => { failed += 1; return null; })
      : (index) => open('/ws', 1, null, index);
    const clients = (await openMany(job.clients, 50, make)).filter((ws) => ws !== null);
    return {
      clients,
      async run() {
        await sleep((job.seconds || 0) * 1000);
        const open = clients.filter((ws) => ws.readyState === WebSocket.OPEN).length;
        return { connections: clients.length, open, failed };
      },
    };
  },

  // `clients` idle connections; on "go", each sends an empty frame (the browser client's path
  // probe) every `interval` s for `seconds`, spread over the interval; how many were sent, and
  // how many connections are still open after.
  async probe() {
    const clients = await openMany(job.clients, 50, (index) => open('/ws', 1, null, index));
    return {
      clients,
      async run() {
        let sent = 0;
        const started = performance.now();
        const until = started + job.seconds * 1000;
        await Promise.all(clients.map(async (ws, index) => {
          await sleep((job.interval * 1000 * index) / clients.length);
          while (performance.now() < until) {
            ws.send('');
            sent += 1;
            await sleep(job.interval * 1000);
          }
        }));
        const open = clients.filter((ws) => ws.readyState === WebSocket.OPEN).length;
        return { sent, seconds: (performance.now() - started) / 1000, open };
      },
    };
  },

  // The reconnect storm: `clients` subscribers on `channels` channels, opened from the
  // `sources` addresses in turn. On "go" every service process is asked to close all of its
  // clients with 1012 at once (`shed`: their /internal/shed URLs, with `key`); each client
  // comes back after a random delay in [0, 1] s, what the client contract (docs/continuity.md)
  // asks after a lost connection (a crowd that loses its path at once; after a 1012, which
  // the fleet itself paces, it waits [0, 0.25] s), and after a failed attempt with
  // full-jitter backoff. Done when every one is
  // subscribed again. With `threads`, the clients are shared out among that many threads,
  // so that 5,000 TLS clients coming back at once are not held up by one core's worth of
  // client work (the services' own CPU is what the storm is about).
  async storm() {
    if (job.threads > 1) return stormThreads();
    const share = await stormClients();
    return {
      clients: share.clients,
      async run() {
        share.arm();
        const started = performance.now();
        await shed();
        await share.allBack(started + STORM_DEADLINE_MS);
        return { clients: job.clients, seconds: (performance.now() - started) / 1000,
          ...share.counts() };
      },
    };
  },
  // `count` connections opened (TLS, upgrade, token check, welcome) and closed, 10 at a time.
  async connect() {
    return {
      clients: [],
      async run() {
        const started = performance.now();
        await openMany(job.count, 10, async () => {
          const ws = await open('/ws', 1);
          await new Promise((resolve) => { ws.once('close', resolve); ws.close(1000); });
        });
        return { connections: job.count, seconds: (performance.now() - started) / 1000 };
      },
    };
  },
};

const STORM_DEADLINE_MS = 120000;

// Asks every service process to close all of its clients with 1012 at once.
function shed() {
  return Promise.all(job.shed.map((url) => new Promise((resolve, reject) => {
    http.get(url, { headers: { Authorization: `Bearer ${job.key}` } }, (reply) => {
      reply.resume();
      if (reply.statusCode === 202) resolve();
      else reject(new Error(`${url}: HTTP ${reply.statusCode}`));
    }).on('error', reject);
  })));
}

// This thread's storm clients: `job.clients` of them, numbered from `job.first` for their
// channel and source address.
async function stormClients() {
  const prefix = `storm-${job.prefix || process.pid}`;
  const first = job.first || 0;
  const clients = new Array(job.clients);
  const closes = {};
  let storming = false;
  let back = 0;
  let failed = 0;
  // Each client keeps its TLS session and resumes it when it comes back, as a browser does
  // with the same front door: HAProxy's session cache (stateful, no tickets) serves both.
  const sessions = new Array(job.clients);
  const subscribe = (index) => new Promise((resolve, reject) => {
    const number = first + index;
    const options = {
      ...tls,
      localAddress: job.sources[number % job.sources.length],
      session: sessions[index],
      createConnection: (connectOptions) => {
        const socket = nodeTls.connect(connectOptions);
        socket.on('session', (session) => { sessions[index] = session; });
        return socket;
      },
    };
    const ws = new WebSocket(
      `${job.url}/ws/${prefix}-${number % job.channels}?token=${job.token}`, options);
    let seen = 0;
    ws.on('message', () => {
      seen += 1;
      if (seen === 2) resolve(ws); // welcome, subscribed
    });
    ws.once('error', reject);
    ws.once('close', (code) => {
      if (seen < 2) reject(new Error(`closed with ${code} before subscribed`));
      else if (storming && clients[index] === ws) comeBack(index, code);
    });
  });
  const attempt = (index, failures) => subscribe(index).then((ws) => {
    clients[index] = ws;
    back += 1;
  }, () => {
    failed += 1;
    setTimeout(() => attempt(index, failures + 1),
      Math.random() * Math.min(10000, 500 * 2 ** (failures + 1)));
  });
  function comeBack(index, code) {
    closes[code] = (closes[code] || 0) + 1;
    setTimeout(() => attempt(index, 0), Math.random() * 1000);
  }
  const opened = await openMany(job.clients, 50, (index) => subscribe(index));
  opened.forEach((ws, index) => { clients[index] = ws; });
  return {
    clients,
    arm() { storming = true; },
    async allBack(deadline) {
      while (back < job.clients && performance.now() < deadline) await sleep(10);
      storming = false;
    },
    counts: () => ({ back, closes, failed }),
  };
}

// The storm's clients shared out among `job.threads` threads, each running stormThread.
async function stormThreads() {
  const prefix = `${process.pid}-${Date.now()}`;
  const threads = [];
  let first = 0;
  for (let part = 0; part < job.threads; part += 1) {
    const count = Math.floor(job.clients / job.threads) + (part < job.clients % job.threads);
    const thread = new Worker(__filename, {
      workerData: { ...job, threads: 1, clients: count, first, prefix },
    });
    threads.push(thread);
    first += count;
  }
  const replies = threads.map((thread) => {
    const waiting = [];
    thread.on('message', (reply) => waiting.shift()(reply));
    thread.on('error', (error) => { say({ error: String(error) }); process.exit(1); });
    return () => new Promise((resolve) => { waiting.push(resolve); });
  });
  const ask = (question) => Promise.all(threads.map((thread, index) => {
    const reply = replies[index]();
    thread.postMessage(question);
    return reply;
  }));
  await Promise.all(replies.map((reply) => reply())); // each thread's clients open
  return {
    clients: [],
    async run() {
      await ask('arm');
      const started = performance.now();
      const done = Promise.all(threads.map((thread, index) => {
        const reply = replies[index]();
        // performance.now() counts from each thread's own origin: times cross as epoch ms.
        thread.postMessage({ deadline: performance.timeOrigin + started + STORM_DEADLINE_MS });
        return reply;
      }));
      await shed();
      const counts = await done;
      const closes = {};
      counts.forEach((count) => Object.entries(count.closes).forEach(([code, number]) => {
        closes[code] = (closes[code] || 0) + number;
      }));
      return {
        clients: job.clients,
        seconds: (Math.max(...counts.map((count) => count.at))
          - (performance.timeOrigin + started)) / 1000,
        back: counts.reduce((sum, count) => sum + count.back, 0),
        failed: counts.reduce((sum, count) => sum + count.failed, 0),
        closes,
      };
    },
    close: () => ask('close').then(() => Promise.all(threads.map((thread) => thread.terminate()))),
  };
}

// One thread of a threaded storm: its clients open, then it answers its parent.
async function stormThread() {
  const share = await stormClients();
  parentPort.postMessage('ready');
  parentPort.on('message', async (question) => {
    if (question === 'arm') {
      share.arm();
      parentPort.postMessage('armed');
    } else if (question === 'close') {
      await closeAll(share.clients);
      parentPort.postMessage('closed');
    } else {
      await share.allBack(question.deadline - performance.timeOrigin);
      parentPort.postMessage({ ...share.counts(), at: performance.timeOrigin + performance.now() });
    }
  });
}

function closeAll(clients) {
  return Promise.all(clients.map((ws) => new Promise((resolve) => {
    if (ws.readyState === WebSocket.CLOSED) return resolve();
    ws.once('close', resolve);
    ws.close(1000);
  })));
}

async function main() {
  const prepared = await jobs[job.mode]();
  say({ ready: true });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line === 'go') say({ done: await prepared.run() });
    if (line === 'close') break;
  }
  await closeAll(prepared.clients);
  if (prepared.close) await prepared.close();
  process.exit(0);
}

(isMainThread ? main() : stormThread()).catch((error) => {
  say({ error: String(error && error.message ? error.message : error) });
  process.exit(1);
});
