'use strict';
// Feeds a StatsD daemon timers over UDP for bench/run.sh: `name:123|ms` lines, many per
// packet, newline-separated, over the same 600 task/release/platform names tasktime's
// bench uses. Offered rate is fixed (timers/s) or, with rate 0, as fast as this process
// can send. Prints one JSON object: what was sent and for how long.
//
// usage: node bench/statsd-feed.js HOST PORT SECONDS RATE
//
// Each packet stays under 1,432 bytes (what common StatsD clients use on a 1,500-byte
// MTU), so the per-packet overhead is a realistic one, not a loopback-only best case.

const dgram = require('dgram');

const [host, portText, secondsText, rateText] = process.argv.slice(2);
const port = Number(portText);
const seconds = Number(secondsText);
const rate = Number(rateText || 0);
if (!host || !(port > 0) || !(seconds > 0) || !(rate >= 0)) {
  console.error('usage: node bench/statsd-feed.js HOST PORT SECONDS RATE(0 = max)');
  process.exit(2);
}

const MAX_PACKET = 1432;
const PACKETS = 512;
// At most this many sends waiting for their callback: a bounded queue, like the gRPC client's.
const MAX_IN_FLIGHT = 128;

// 50 tasks x 4 releases x 3 platforms, as in `tasktime bench`.
const names = [];
for (let t = 0; t < 50; t++) {
  for (let r = 0; r < 4; r++) {
    for (const p of ['ios', 'android', 'web']) {
      names.push(`tasktime.bench-task-${String(t).padStart(2, '0')}.r${r}.${p}`);
    }
  }
}

// A deterministic generator, so every run sends the same packets.
let seed = 1;
function random() {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed / 2147483648;
}

// Durations in ms, roughly lognormal around 1 s to a minute like the tasktime workload.
function durationMs() {
  const median = 1000 * (1 + Math.floor(random() * 10) * 6);
  const u = Math.max(random(), 1e-9);
  const v = random();
  const normal = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  return Math.max(1, Math.round(median * Math.exp(0.8 * normal)));
}

const packets = [];
for (let i = 0; i < PACKETS; i++) {
  const lines = [];
  let size = 0;
  for (;;) {
    const line = `${names[Math.floor(random() * names.length)]}:${durationMs()}|ms`;
    if (size + line.length + 1 > MAX_PACKET) break;
    lines.push(line);
    size += line.length + 1;
  }
  packets.push({ buf: Buffer.from(lines.join('\n')), lines: lines.length });
}

const socket = dgram.createSocket('udp4');
let sentLines = 0;
let sentPackets = 0;
let errors = 0;
let inFlight = 0;
let started;
let deadline;

function done(err) {
  inFlight--;
  if (err) errors++;
}

function finish() {
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  socket.close();
  console.log(
    JSON.stringify({
      offered_rate: rate || null,
      timers_sent: sentLines,
      packets_sent: sentPackets,
      send_errors: errors,
      duration_s: elapsed,
      timers_per_sec: sentLines / elapsed,
    }),
  );
}

function pump() {
  const now = process.hrtime.bigint();
  if (now >= deadline) {
    if (inFlight === 0) finish();
    else setTimeout(pump, 1);
    return;
  }
  const due = rate > 0 ? (Number(now - started) / 1e9) * rate : Infinity;
  let burst = 0;
  while (sentLines < due && inFlight < MAX_IN_FLIGHT && burst < 64) {
    const p = packets[sentPackets % PACKETS];
    inFlight++;
    socket.send(p.buf, done);
    sentLines += p.lines;
    sentPackets++;
    burst++;
  }
  // Ahead of schedule: sleep a tick instead of spinning on the CPU StatsD needs.
  if (sentLines >= due) setTimeout(pump, 1);
  else setImmediate(pump);
}

socket.connect(port, host, () => {
  started = process.hrtime.bigint();
  deadline = started + BigInt(Math.round(seconds * 1e9));
  pump();
});
