'use strict';
/*
 * Node.js `ws` reference fan-out server for the Rustorium benchmarks.
 *
 * Why: the fan-out targets compare the real server's CPU per delivery with a
 * typical, well-tuned Node server doing the same work in the same run.  This
 * is the idiomatic ws broadcast: each tick serializes one update per symbol
 * once (a Buffer) and calls ws.send() for every subscribed client and
 * symbol.  No coalescing (no cork), like most Node servers.
 *
 * Protocol subset: any text message of type "subscribe" subscribes to the
 * market_data symbols it lists and is answered with subscription_confirmation;
 * everything else is ignored.  --tick-interval 0 ticks on every event-loop
 * turn (setImmediate), as the real server's flag does.
 *
 * Clients whose send buffer holds more than 4 MiB skip ticks, so a slow
 * client cannot grow memory without bound during a run.
 *
 * With --wait-ready it ticks only after SIGUSR2 (sent by the generator once
 * every client is subscribed): under a tick-every-turn fan-out, ws accepts
 * new connections so slowly that connecting 5000 clients takes minutes.
 * Only the setup changes; the measured window is the same.
 *
 * Usage: node server.js --port P [--tick-interval SECONDS] [--wait-ready]  (127.0.0.1 only)
 */
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
}

const port = parseInt(arg('--port', '0'), 10);
const interval = parseFloat(arg('--tick-interval', '0'));
const waitReady = process.argv.includes('--wait-ready');
const MAX_BUFFERED = 4 * 1024 * 1024;
if (!port) {
  console.error('usage: node server.js --port P [--tick-interval S]');
  process.exit(2);
}

const subscribers = new Map(); // ws -> number of symbols
let seq = 0;
let subSeq = 0;

/* ISO 8601 UTC with microseconds, from the wall clock. */
function isoNowMicros() {
  const us = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  const ms = Math.floor(us / 1000);
  const iso = new Date(ms).toISOString(); // ...SS.mmmZ
  return iso.slice(0, -1) + String(us % 1000).padStart(3, '0') + 'Z';
}

function tick() {
  let maxk = 0;
  for (const k of subscribers.values()) if (k > maxk) maxk = k;
  if (maxk > 0) {
    const ts = isoNowMicros();
    const frames = [];
    for (let i = 0; i < maxk; i++) {
      frames.push(Buffer.from(JSON.stringify({
        id: `msg_${++seq}`,
        type: 'update',
        data: {
          channel: 'market_data', symbol: `TK${i}/USD`, price: '1.23',
          change_24h: '0.12', volume_24h: '1000', timestamp: ts,
        },
      })));
    }
    for (const [ws, k] of subscribers) {
      if (ws.readyState !== WebSocket.OPEN || ws.bufferedAmount > MAX_BUFFERED) continue;
      for (let i = 0; i < k; i++) ws.send(frames[i], { binary: false });
    }
  }
  schedule();
}

function schedule() {
  if (interval > 0) return; // setInterval drives the ticks
  if (subscribers.size === 0) setTimeout(tick, 10); // idle: don't spin
  else setImmediate(tick);
}

const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const wss = new WebSocketServer({ server, perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    let msg;
    try { msg = JSON.parse(data); } catch (e) { return; }
    if (msg && msg.type === 'subscribe' && msg.data && Array.isArray(msg.data.symbols)) {
      subscribers.set(ws, Math.min(100, Math.max(1, msg.data.symbols.length)));
      ws.send(JSON.stringify({
        id: msg.id, type: 'subscription_confirmation',
        data: { status: 'subscribed', channel: 'market_data', subscription_id: `sub_${++subSeq}` },
      }));
    }
  });
  ws.on('close', () => subscribers.delete(ws));
  ws.on('error', () => subscribers.delete(ws));
});
server.listen(port, '127.0.0.1', 4096, () => {
  console.log(`node-ws listening on 127.0.0.1:${port} tick-interval ${interval}`);
});
function startTicking() {
  if (interval > 0) setInterval(tick, interval * 1000);
  else schedule();
}
if (waitReady) process.once('SIGUSR2', startTicking);
else startTicking();
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
