#!/usr/bin/env node
// The ClassWaves workload: simulated teachers and students using the example app
// (examples/classwaves) at a fixed request rate, for a fixed time, and what it cost.
//
//   node bench/workload/workload.mjs --url http://127.0.0.1:3000 --duration 60
//
// Each virtual user sends a request, waits for the reply, then waits until its next
// scheduled start (exponential gaps, so the users together send `--rate` requests a second
// when the app keeps up). Reads pick entities with Zipf-distributed popularity; a fraction
// `--write-ratio` of operations are writes through the app's write endpoints (which send the
// events), each followed by the writer reading what it changed, as a UI refreshes after a save.
//
// Measured after a warm-up, from the app's /internal/stats and the client's own clocks:
// hit rate, database queries a second, p50/p99 latency, and stale reads. A read is stale when
// it started after the client had received the acknowledgement of a write and returned data
// older than that write: a version lower than the acknowledged one, a session list missing
// a session whose creation was acknowledged, or a roster showing a student under a name older
// than an acknowledged rename. Prints one JSON object on stdout.

import http from 'node:http';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string', default: 'http://127.0.0.1:3000' },
    duration: { type: 'string', default: '180' },
    warmup: { type: 'string', default: '60' },
    rate: { type: 'string', default: '500' },
    concurrency: { type: 'string', default: '32' },
    'write-ratio': { type: 'string', default: '0.02' },
    zipf: { type: 'string', default: '1.0' },
    seed: { type: 'string', default: '7' },
    label: { type: 'string', default: '' },
    // Before the warm-up, read every entity once (not measured, no writes): the cache a
    // long-running application has, instead of one that started minutes ago.
    prefill: { type: 'boolean', default: false },
    // Seconds between progress lines on stderr (hit rate and DB queries of each interval,
    // warm-up included), to see when a set-up reaches its steady state; 0: none.
    'report-every': { type: 'string', default: '0' },
  },
});
const num = (name) => {
  const v = Number(opt[name]);
  if (!Number.isFinite(v) || v < 0) throw new Error(`--${name} must be a non-negative number, got '${opt[name]}'`);
  return v;
};
const DURATION = num('duration');
const WARMUP = num('warmup');
const RATE = num('rate');
const CONCURRENCY = Math.max(1, Math.floor(num('concurrency')));
const WRITE_RATIO = num('write-ratio');
const ZIPF_S = num('zipf');
const REPORT_EVERY = num('report-every');
const base = new URL(opt.url);

// ---- randomness ----------------------------------------------------------------------------

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = mulberry32(Number(opt.seed));

/** Draws items with Zipf(s) popularity: the k-th most popular has weight 1/k^s. Which item
 * is k-th is a random permutation, so popularity does not follow id order. */
class Zipf {
  constructor(items, s) {
    this.items = [...items];
    for (let i = this.items.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [this.items[i], this.items[j]] = [this.items[j], this.items[i]];
    }
    this.cdf = new Float64Array(this.items.length);
    let sum = 0;
    for (let k = 0; k < this.items.length; k++) this.cdf[k] = sum += 1 / Math.pow(k + 1, s);
    for (let k = 0; k < this.cdf.length; k++) this.cdf[k] /= sum;
  }
  next() {
    const u = random();
    let lo = 0;
    let hi = this.cdf.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.cdf[mid] < u) lo = mid + 1;
      else hi = mid;
    }
    return this.items[lo];
  }
}

function pickWeighted(table) {
  let u = random() * table.reduce((a, [w]) => a + w, 0);
  for (const [w, value] of table) if ((u -= w) < 0) return value;
  return table[table.length - 1][1];
}

// ---- HTTP ----------------------------------------------------------------------------------

const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });

function request(method, path, body) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      {
        host: base.hostname,
        port: base.port,
        method,
        path,
        agent,
        headers: payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {},
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          if (res.statusCode === 204) return resolve(undefined);
          let json;
          try {
            json = JSON.parse(text);
          } catch {
            return reject(new Error(`${method} ${path}: ${res.statusCode} ${text.slice(0, 200)}`));
          }
          if (res.statusCode >= 400) return reject(new Error(`${method} ${path}: ${res.statusCode} ${json.error}`));
          resolve(json);
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

// ---- what the client knows was acknowledged -----------------------------------------------

/** A logical clock: every acknowledgement and every read start takes the next tick. */
let tick = 0;
/** entity → [[tick, version], ...] of acknowledged writes, oldest first. */
const acked = new Map();
/** teacher:T / school:C → [[tick, sessionId], ...] of acknowledged session creations. */
const created = new Map();

function ack(map, entity, value) {
  let list = map.get(entity);
  if (!list) map.set(entity, (list = []));
  list.push([++tick, value]);
}

/** The highest value acknowledged before `start`, or 0. Values only grow per entity. */
function ackedBefore(map, entity, start) {
  const list = map.get(entity);
  if (!list) return 0;
  for (let i = list.length - 1; i >= 0; i--) if (list[i][0] < start) return list[i][1];
  return 0;
}

const stale = { count: 0, examples: [] };
function staleRead(what) {
  if (!measuring) return;
  stale.count++;
  if (stale.examples.length < 5) stale.examples.push(what);
}

/** Checks a session list: every session in it at least as new as acknowledged, and the
 * newest acknowledged creation present (lists show the newest sessions first). A list with
 * several old entries is still one stale read. */
function checkList(owner, data, start) {
  for (const s of data.sessions) {
    const want = ackedBefore(acked, `session:${s.id}`, start);
    if (s.version < want) return staleRead(`${owner} list has session ${s.id} v${s.version}, acknowledged v${want}`);
  }
  const newest = ackedBefore(created, owner, start);
  const shown = data.sessions.length > 0 ? data.sessions[0].id : 0;
  if (newest > shown) staleRead(`${owner} list newest is session ${shown}, creation of ${newest} acknowledged`);
}

/** The name each acknowledged rename gave its user, with the version it committed as (every
 * rename's name is unique, so a name tells the version a roster shows). */
const renamedTo = new Map();

/** Checks that a roster shows every student under a name at least as new as acknowledged:
 * rosters embed their students' names, so a rename must reach them too. */
function checkRosterNames(sessionId, students, start) {
  for (const { id, name } of students) {
    const want = ackedBefore(acked, `user:${id}`, start);
    if (want === 0) continue;
    // Not a name this run acknowledged: the seed's (version 1), or a rename committed but not
    // yet acknowledged (newer than anything acknowledged).
    const shown = renamedTo.get(name) ?? (name.startsWith('Renamed ') ? Infinity : 1);
    if (shown < want) return staleRead(`roster:${sessionId} shows user ${id} as '${name}' (v${shown}), acknowledged v${want}`);
  }
}

function checkVersion(entity, version, start) {
  const want = ackedBefore(acked, entity, start);
  if (version < want) staleRead(`${entity} v${version}, acknowledged v${want}`);
}

// ---- the operations -------------------------------------------------------------------------

const catalog = await request('GET', '/internal/catalog');
const sessionInfo = new Map(catalog.sessions.map(([id, teacher, school]) => [id, { teacher, school }]));
const studentsBySchool = new Map();
for (const [id, school] of catalog.students) {
  if (!studentsBySchool.has(school)) studentsBySchool.set(school, []);
  studentsBySchool.get(school).push(id);
}
const teacherSchool = new Map(catalog.teachers.map(([id, school]) => [id, school]));
const pick = {
  teacher: new Zipf(catalog.teachers.map(([id]) => id), ZIPF_S),
  session: new Zipf(catalog.sessions.map(([id]) => id), ZIPF_S),
  user: new Zipf([...catalog.teachers, ...catalog.students].map(([id]) => id), ZIPF_S),
  school: new Zipf(catalog.schools, ZIPF_S),
};

const reads = {
  teacherSessions: async (teacherId) => {
    const start = ++tick;
    const { data } = await request('GET', `/api/v1/teachers/${teacherId}/sessions`);
    checkList(`teacher:${teacherId}`, data, start);
  },
  schoolSessions: async (schoolId) => {
    const start = ++tick;
    const { data } = await request('GET', `/api/v1/schools/${schoolId}/sessions`);
    checkList(`school:${schoolId}`, data, start);
  },
  session: async (sessionId) => {
    const start = ++tick;
    const { data } = await request('GET', `/api/v1/sessions/${sessionId}`);
    checkVersion(`session:${sessionId}`, data.version, start);
  },
  roster: async (sessionId) => {
    const start = ++tick;
    const { school } = sessionInfo.get(sessionId);
    const { data } = await request('GET', `/api/v1/schools/${school}/sessions/${sessionId}/roster`);
    checkVersion(`roster:${sessionId}`, data.version, start);
    checkRosterNames(sessionId, data.students, start);
  },
  profile: async (userId) => {
    const start = ++tick;
    const { data } = await request('GET', `/api/v1/users/${userId}/profile`);
    checkVersion(`user:${userId}`, data.version, start);
  },
  school: async (schoolId) => {
    const start = ++tick;
    const { data } = await request('GET', `/api/v1/schools/${schoolId}`);
    checkVersion(`school:${schoolId}`, data.version, start);
  },
};

/** What people read: teachers open their dashboard and sessions, students their session and
 * profile, both look at rosters and the school's page. */
const READ_MIX = [
  [25, () => reads.teacherSessions(pick.teacher.next())],
  [25, () => reads.session(pick.session.next())],
  [10, () => reads.roster(pick.session.next())],
  [20, () => reads.profile(pick.user.next())],
  [10, () => reads.schoolSessions(pick.school.next())],
  [10, () => reads.school(pick.school.next())],
];

let writeCount = 0;
/** What people change, each followed by the writer reading it back. */
const WRITE_MIX = [
  [35, async () => {
    const id = pick.session.next();
    const { data } = await request('PATCH', `/api/v1/sessions/${id}`, { title: `Revised ${++writeCount}`, status: 'active' });
    ack(acked, `session:${id}`, data.version);
    return () => reads.session(id);
  }],
  [15, async () => {
    const teacher = pick.teacher.next();
    const { data } = await request('POST', '/api/v1/sessions', { teacherId: teacher, title: `New ${++writeCount}` });
    sessionInfo.set(data.id, { teacher, school: data.schoolId });
    ack(acked, `session:${data.id}`, data.version);
    ack(created, `teacher:${teacher}`, data.id);
    ack(created, `school:${data.schoolId}`, data.id);
    return () => reads.teacherSessions(teacher);
  }],
  [10, async () => {
    const id = pick.session.next();
    const { data } = await request('POST', `/api/v1/sessions/${id}/end`);
    ack(acked, `session:${id}`, data.version);
    return () => reads.teacherSessions(data.teacherId);
  }],
  [25, async () => {
    const id = pick.session.next();
    const { school } = sessionInfo.get(id);
    const students = studentsBySchool.get(school);
    const student = students[Math.floor(random() * students.length)];
    const body = random() < 0.5 ? { add: [student] } : { remove: [student] };
    const { data } = await request('POST', `/api/v1/schools/${school}/sessions/${id}/roster`, body);
    ack(acked, `roster:${id}`, data.version);
    return () => reads.roster(id);
  }],
  [12, async () => {
    const id = pick.user.next();
    const { data } = await request('PATCH', `/api/v1/users/${id}`, { name: `Renamed ${++writeCount}` });
    renamedTo.set(data.name, data.version);
    ack(acked, `user:${id}`, data.version);
    return () => reads.profile(id);
  }],
  [3, async () => {
    const id = pick.school.next();
    const { data } = await request('PATCH', `/api/v1/schools/${id}`, { name: `School renamed ${++writeCount}` });
    ack(acked, `school:${id}`, data.version);
    return () => reads.school(id);
  }],
];

// ---- the run --------------------------------------------------------------------------------

let measuring = false;
const latency = { read: [], write: [] };
const counts = { reads: 0, writes: 0, errors: 0 };
const errorExamples = [];

async function timed(kind, op) {
  const t0 = performance.now();
  try {
    const result = await op();
    if (measuring) {
      latency[kind].push(performance.now() - t0);
      counts[kind === 'read' ? 'reads' : 'writes']++;
    }
    return result;
  } catch (e) {
    if (measuring) counts.errors++;
    if (errorExamples.length < 5) errorExamples.push(e.message);
    return undefined;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function virtualUser(until) {
  const meanGap = (1000 * CONCURRENCY) / RATE;
  let next = performance.now() + random() * meanGap;
  while (performance.now() < until) {
    const wait = next - performance.now();
    if (wait > 0) await sleep(wait);
    next += -Math.log(1 - random()) * meanGap;
    if (random() < WRITE_RATIO) {
      const readBack = await timed('write', pickWeighted(WRITE_MIX));
      if (readBack) await timed('read', readBack);
    } else {
      await timed('read', pickWeighted(READ_MIX));
    }
  }
}

const stats = () => request('GET', '/internal/stats');

async function reportProgress(until) {
  let last = await stats();
  // Up to the last whole interval; half an interval of slack for the timers' lateness.
  for (let t = REPORT_EVERY; performance.now() + REPORT_EVERY * 1000 <= until + REPORT_EVERY * 500; t += REPORT_EVERY) {
    await sleep(REPORT_EVERY * 1000);
    const now = await stats();
    const h = now.cache.hits - last.cache.hits;
    const m = now.cache.misses - last.cache.misses;
    const hit = h + m === 0 ? '–' : `${((100 * h) / (h + m)).toFixed(1)}%`;
    const q = ((now.dbQueries - last.dbQueries) / REPORT_EVERY).toFixed(1);
    console.error(`[${opt.label || now.mode}] ${t}s: hit rate ${hit}, ${q} DB queries/s, ${m} misses`);
    last = now;
  }
}

/** Reads every entity once, CONCURRENCY at a time, as fast as the app answers: after it, the
 * cache holds every entry, as that of an application running for longer than its TTLs holds
 * every entry read within its TTL. Without it, first reads of the long Zipf tail (8,400 user
 * profiles, 2,000 sessions and rosters) are most of the misses for many minutes. */
async function prefill() {
  const work = [
    ...catalog.teachers.map(([id]) => () => reads.teacherSessions(id)),
    ...catalog.schools.map((id) => () => reads.schoolSessions(id)),
    ...catalog.sessions.map(([id]) => () => reads.session(id)),
    ...catalog.sessions.map(([id]) => () => reads.roster(id)),
    ...[...catalog.teachers, ...catalog.students].map(([id]) => () => reads.profile(id)),
    ...catalog.schools.map((id) => () => reads.school(id)),
  ];
  let next = 0;
  const worker = async () => {
    while (next < work.length) await timed('read', work[next++]);
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
}

const prefillFrom = performance.now();
if (opt.prefill) await prefill();
const prefillSeconds = (performance.now() - prefillFrom) / 1000;

const t0 = performance.now();
const end = t0 + (WARMUP + DURATION) * 1000;
const users = Array.from({ length: CONCURRENCY }, () => virtualUser(end));
const progress = REPORT_EVERY > 0 ? reportProgress(end) : Promise.resolve();
await sleep(WARMUP * 1000);
const before = await stats();
measuring = true;
const measuredFrom = performance.now();
await sleep(Math.max(0, end - performance.now()));
measuring = false;
const seconds = (performance.now() - measuredFrom) / 1000;
const after = await stats();
await Promise.all([...users, progress]);
agent.destroy();

const pct = (xs, p) => {
  if (xs.length === 0) return null;
  const sorted = Float64Array.from(xs).sort();
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
};
const hits = after.cache.hits - before.cache.hits;
// Where the misses and recomputes come from: the app's counts per kind of entry, measured window only.
const byKind = {};
for (const [kind, a] of Object.entries(after.cache.byKind ?? {})) {
  const b = before.cache.byKind?.[kind] ?? {};
  byKind[kind] = Object.fromEntries(Object.entries(a).map(([k, v]) => [k, v - (b[k] ?? 0)]));
}
const misses = after.cache.misses - before.cache.misses;
const round = (x, d = 2) => (x === null ? null : Math.round(x * 10 ** d) / 10 ** d);
const result = {
  label: opt.label || after.mode,
  mode: after.mode,
  seconds: round(seconds, 1),
  requestsPerSec: round((counts.reads + counts.writes) / seconds, 1),
  reads: counts.reads,
  writes: counts.writes,
  errors: counts.errors,
  hitRate: hits + misses === 0 ? null : round(hits / (hits + misses), 4),
  cacheHits: hits,
  cacheMisses: misses,
  dbQueriesPerSec: round((after.dbQueries - before.dbQueries) / seconds, 1),
  // Per request too: on a busy machine the set-ups may not all reach the target rate.
  dbQueriesPerRequest: round((after.dbQueries - before.dbQueries) / Math.max(1, counts.reads + counts.writes), 3),
  warmed: after.cache.warmed - before.cache.warmed,
  warmSkipped: after.cache.warmSkipped - before.cache.warmSkipped,
  emitErrors: after.cache.emitErrors - before.cache.emitErrors,
  byKind,
  readP50ms: round(pct(latency.read, 50)),
  readP99ms: round(pct(latency.read, 99)),
  writeP50ms: round(pct(latency.write, 50)),
  writeP99ms: round(pct(latency.write, 99)),
  staleReads: stale.count,
  staleExamples: stale.examples,
  errorExamples,
  settings: { rate: RATE, concurrency: CONCURRENCY, writeRatio: WRITE_RATIO, zipf: ZIPF_S, prefill: opt.prefill, prefillSeconds: round(prefillSeconds, 1), warmup: WARMUP, duration: DURATION },
};
console.log(JSON.stringify(result));
