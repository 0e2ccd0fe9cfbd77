// The HTTP API: the ClassWaves endpoints, their cache keys, and the events writes send.
//
// Reads are cache-aside on the keys cachet's rules know (examples/cachet.toml); writes commit
// to SQLite, then EMIT the domain event. Nothing here names a tag or invalidates anything.

import express, { NextFunction, Request, Response } from 'express';
import { Cache, Lookup } from './cache';
import { Db, SessionStatus } from './db';

/** The cache keys, as the original controllers built them. */
export const keys = {
  teacherSessions: (teacherId: number) => `sessions:teacher:${teacherId}`,
  schoolSessions: (schoolId: number) => `sessions:school:${schoolId}`,
  session: (sessionId: number) => `session:${sessionId}`,
  roster: (schoolId: number, sessionId: number) => `roster:${schoolId}:${sessionId}`,
  userProfile: (userId: number) => `user:${userId}:profile`,
  school: (schoolId: number) => `school:${schoolId}`,
};

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

function id(req: Request, name: string): number {
  const raw = req.params[name];
  const value = Number(raw);
  if (!/^[1-9][0-9]{0,15}$/.test(raw ?? '') || !Number.isSafeInteger(value)) {
    throw new HttpError(400, `${name} must be a positive integer, got '${raw}'`);
  }
  return value;
}

function optionalString(body: Record<string, unknown>, name: string): string | null {
  const value = body[name];
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string' || value.length === 0 || value.length > 200) {
    throw new HttpError(400, `${name} must be a non-empty string of at most 200 characters`);
  }
  return value;
}

function idList(body: Record<string, unknown>, name: string): number[] {
  const value = body[name] ?? [];
  if (!Array.isArray(value) || value.length > 100 || !value.every((v) => Number.isSafeInteger(v) && v > 0)) {
    throw new HttpError(400, `${name} must be a list of at most 100 positive integer ids`);
  }
  return value as number[];
}

function send<T>(res: Response, found: Lookup<T> | undefined, what: string): void {
  if (!found) throw new HttpError(404, `${what} not found`);
  res.json({ success: true, cache: found.cache, data: found.value });
}

// Express 4 does not pass rejected promises to the error handler by itself.
type Handler = (req: Request, res: Response) => Promise<void> | void;
const route = (handler: Handler) => (req: Request, res: Response, next: NextFunction) => {
  Promise.resolve()
    .then(() => handler(req, res))
    .catch(next);
};

const STATUSES: readonly SessionStatus[] = ['created', 'active', 'ended'];

export function buildApp(db: Db, cache: Cache): express.Express {
  const app = express();
  app.use(express.json({ limit: '16kb' }));
  const api = express.Router();

  // What each key holds, computed from SQLite: shared by the cache-aside reads and the warm
  // endpoints, so a warmed entry is exactly what a miss would have stored.
  const load = {
    teacherSessions: (teacherId: number) =>
      db.user(teacherId)?.role === 'teacher' ? { teacherId, ...db.teacherSessions(teacherId) } : undefined,
    schoolSessions: (schoolId: number) => (db.school(schoolId) ? { schoolId, ...db.schoolSessions(schoolId) } : undefined),
    session: (sessionId: number) => db.session(sessionId),
    roster: (schoolId: number, sessionId: number) => db.roster(schoolId, sessionId),
    userProfile: (userId: number) => db.user(userId),
    school: (schoolId: number) => db.school(schoolId),
  };

  // ---- reads: cache-aside ----------------------------------------------------------------

  api.get('/teachers/:teacherId/sessions', route(async (req, res) => {
    const teacherId = id(req, 'teacherId');
    const found = await cache.getOrLoad(keys.teacherSessions(teacherId), 'session-list', () => load.teacherSessions(teacherId));
    send(res, found, `teacher ${teacherId}`);
  }));

  api.get('/schools/:schoolId/sessions', route(async (req, res) => {
    const schoolId = id(req, 'schoolId');
    const found = await cache.getOrLoad(keys.schoolSessions(schoolId), 'session-list', () => load.schoolSessions(schoolId));
    send(res, found, `school ${schoolId}`);
  }));

  api.get('/sessions/:sessionId', route(async (req, res) => {
    const sessionId = id(req, 'sessionId');
    send(res, await cache.getOrLoad(keys.session(sessionId), 'session-detail', () => load.session(sessionId)), `session ${sessionId}`);
  }));

  api.get('/schools/:schoolId/sessions/:sessionId/roster', route(async (req, res) => {
    const schoolId = id(req, 'schoolId');
    const sessionId = id(req, 'sessionId');
    const found = await cache.getOrLoad(keys.roster(schoolId, sessionId), 'roster-data', () => load.roster(schoolId, sessionId));
    send(res, found, `session ${sessionId} in school ${schoolId}`);
  }));

  api.get('/users/:userId/profile', route(async (req, res) => {
    const userId = id(req, 'userId');
    send(res, await cache.getOrLoad(keys.userProfile(userId), 'user-profile', () => load.userProfile(userId)), `user ${userId}`);
  }));

  api.get('/schools/:schoolId', route(async (req, res) => {
    const schoolId = id(req, 'schoolId');
    send(res, await cache.getOrLoad(keys.school(schoolId), 'school-data', () => load.school(schoolId)), `school ${schoolId}`);
  }));

  // ---- writes: commit, then one event ------------------------------------------------------
  // The original called cacheEventBus.sessionCreated(...) here, which invalidated and
  // scheduled warmers in-process. Now the event goes to cachet and its policy decides.

  api.post('/sessions', route(async (req, res) => {
    const teacherId = Number(req.body?.teacherId);
    if (!Number.isSafeInteger(teacherId) || teacherId <= 0) throw new HttpError(400, 'teacherId must be a positive integer');
    const title = optionalString(req.body, 'title') ?? 'Untitled session';
    const session = db.createSession(teacherId, title);
    if (!session) throw new HttpError(404, `teacher ${teacherId} not found`);
    await cache.emit('session.created', { sessionId: session.id, teacherId: session.teacherId, schoolId: session.schoolId });
    res.status(201).json({ success: true, data: session });
  }));

  api.patch('/sessions/:sessionId', route(async (req, res) => {
    const sessionId = id(req, 'sessionId');
    const title = optionalString(req.body ?? {}, 'title');
    const status = optionalString(req.body ?? {}, 'status') as SessionStatus | null;
    if (status !== null && !STATUSES.includes(status)) throw new HttpError(400, `status must be one of ${STATUSES.join(', ')}`);
    const session = db.updateSession(sessionId, title, status);
    if (!session) throw new HttpError(404, `session ${sessionId} not found`);
    await cache.emit('session.updated', { sessionId, teacherId: session.teacherId, schoolId: session.schoolId });
    res.json({ success: true, data: session });
  }));

  api.post('/sessions/:sessionId/end', route(async (req, res) => {
    const sessionId = id(req, 'sessionId');
    const session = db.updateSession(sessionId, null, 'ended');
    if (!session) throw new HttpError(404, `session ${sessionId} not found`);
    await cache.emit('session.ended', { sessionId, teacherId: session.teacherId, schoolId: session.schoolId });
    res.json({ success: true, data: session });
  }));

  api.patch('/users/:userId', route(async (req, res) => {
    const userId = id(req, 'userId');
    const user = db.updateUser(userId, optionalString(req.body ?? {}, 'name'), optionalString(req.body ?? {}, 'email'));
    if (!user) throw new HttpError(404, `user ${userId} not found`);
    // Rosters show their students' names: a student's rename changes every roster listing
    // them, which the event names (one rosterSession field each) for the policy to drop. Only
    // cachet gets events, so only then is the lookup worth a query.
    const rosterSession = user.role === 'student' && cache.mode === 'cachet' ? db.rostersListing(userId) : [];
    await cache.emit('user.updated', { userId, schoolId: user.schoolId, rosterSession });
    res.json({ success: true, data: user });
  }));

  api.post('/schools/:schoolId/sessions/:sessionId/roster', route(async (req, res) => {
    const schoolId = id(req, 'schoolId');
    const sessionId = id(req, 'sessionId');
    const roster = db.changeRoster(schoolId, sessionId, idList(req.body ?? {}, 'add'), idList(req.body ?? {}, 'remove'));
    if (!roster) throw new HttpError(404, `session ${sessionId} in school ${schoolId} not found`);
    await cache.emit('roster.changed', { schoolId, sessionId });
    res.json({ success: true, data: roster });
  }));

  api.patch('/schools/:schoolId', route(async (req, res) => {
    const schoolId = id(req, 'schoolId');
    const school = db.updateSchool(schoolId, optionalString(req.body ?? {}, 'name'), optionalString(req.body ?? {}, 'district'));
    if (!school) throw new HttpError(404, `school ${schoolId} not found`);
    await cache.emit('school.updated', { schoolId });
    res.json({ success: true, data: school });
  }));

  app.use('/api/v1', api);

  // ---- for cachet and the workload ---------------------------------------------------------

  // cachet's warmers call these after an invalidation (GET or POST), one per kind of entry
  // the sessions policy invalidates; the original CacheWarmer's
  // setTimeout(() => warmTeacherSessions(id), 100) is now cachet's delay_ms.
  const warmers: [string, (req: Request) => Promise<boolean>][] = [
    ['/internal/warm/teacher/:teacherId', (req) => {
      const teacherId = id(req, 'teacherId');
      return cache.warm(keys.teacherSessions(teacherId), 'session-list', () => load.teacherSessions(teacherId));
    }],
    ['/internal/warm/session/:sessionId', (req) => {
      const sessionId = id(req, 'sessionId');
      return cache.warm(keys.session(sessionId), 'session-detail', () => load.session(sessionId));
    }],
    ['/internal/warm/school/:schoolId/sessions', (req) => {
      const schoolId = id(req, 'schoolId');
      return cache.warm(keys.schoolSessions(schoolId), 'session-list', () => load.schoolSessions(schoolId));
    }],
    ['/internal/warm/school/:schoolId/sessions/:sessionId/roster', (req) => {
      const schoolId = id(req, 'schoolId');
      const sessionId = id(req, 'sessionId');
      return cache.warm(keys.roster(schoolId, sessionId), 'roster-data', () => load.roster(schoolId, sessionId));
    }],
    ['/internal/warm/user/:userId', (req) => {
      const userId = id(req, 'userId');
      return cache.warm(keys.userProfile(userId), 'user-profile', () => load.userProfile(userId));
    }],
    ['/internal/warm/school/:schoolId', (req) => {
      const schoolId = id(req, 'schoolId');
      return cache.warm(keys.school(schoolId), 'school-data', () => load.school(schoolId));
    }],
  ];
  for (const [path, warm] of warmers) {
    const handler = route(async (req, res) => {
      await warm(req);
      res.status(204).end();
    });
    app.get(path, handler);
    app.post(path, handler);
  }

  app.get('/internal/stats', (_req, res) => {
    res.json({ mode: cache.mode, dbQueries: db.queries, cache: cache.stats });
  });

  // What exists, so a load generator can pick real ids. Not counted as database load.
  app.get('/internal/catalog', (_req, res) => {
    const q = (sql: string) => db.sqlite.prepare(sql).raw().all();
    res.json({
      schools: q(`SELECT id FROM schools ORDER BY id`).map((r) => (r as number[])[0]),
      teachers: q(`SELECT id, school_id FROM users WHERE role = 'teacher' ORDER BY id`),
      students: q(`SELECT id, school_id FROM users WHERE role = 'student' ORDER BY id`),
      sessions: q(`SELECT id, teacher_id, school_id FROM sessions ORDER BY id`),
    });
  });

  app.use((_req, res) => {
    res.status(404).json({ success: false, error: 'no such endpoint' });
  });
  app.use((err: Error & { status?: number; type?: string }, _req: Request, res: Response, _next: NextFunction) => {
    const status = err instanceof HttpError ? err.status : err.type === 'entity.parse.failed' ? 400 : 500;
    if (status === 500) console.error(err);
    res.status(status).json({ success: false, error: status === 500 ? 'internal error' : err.message });
  });
  return app;
}
