// The system of record: SQLite through better-sqlite3. Every statement the app runs goes
// through `Db`, which counts it, so the workload can compare database load across cache modes.

import Database from 'better-sqlite3';

export type SessionStatus = 'created' | 'active' | 'ended';

export interface School { id: number; name: string; district: string; version: number; updatedAt: string }
export interface UserProfile { id: number; schoolId: number; role: 'teacher' | 'student'; name: string; email: string; version: number; updatedAt: string }
export interface SessionSummary { id: number; teacherId: number; schoolId: number; title: string; status: SessionStatus; version: number; updatedAt: string }
export interface SessionDetail extends SessionSummary { createdAt: string; rosterVersion: number; studentCount: number }
export interface SessionList { count: number; sessions: SessionSummary[] }
export interface Roster { schoolId: number; sessionId: number; version: number; students: { id: number; name: string }[] }

/** Newest sessions a list shows. */
export const LIST_LIMIT = 50;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS schools (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  district TEXT NOT NULL,
  version INTEGER NOT NULL DEFAULT 1,
  updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
  id INTEGER PRIMARY KEY,
  school_id INTEGER NOT NULL REFERENCES schools(id),
  role TEXT NOT NULL CHECK (role IN ('teacher', 'student')),
  name TEXT NOT NULL,
  email TEXT NOT NULL,
  version INTEGER NOT NULL DEFAULT 1,
  updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
  id INTEGER PRIMARY KEY,
  teacher_id INTEGER NOT NULL REFERENCES users(id),
  school_id INTEGER NOT NULL REFERENCES schools(id),
  title TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('created', 'active', 'ended')),
  version INTEGER NOT NULL DEFAULT 1,
  roster_version INTEGER NOT NULL DEFAULT 1,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS roster_entries (
  session_id INTEGER NOT NULL REFERENCES sessions(id),
  student_id INTEGER NOT NULL REFERENCES users(id),
  PRIMARY KEY (session_id, student_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_teacher ON sessions (teacher_id, id);
CREATE INDEX IF NOT EXISTS sessions_by_school ON sessions (school_id, id);
CREATE INDEX IF NOT EXISTS users_by_school ON users (school_id, role);
`;

const SESSION_COLUMNS = `id, teacher_id AS teacherId, school_id AS schoolId, title, status, version, updated_at AS updatedAt`;

function now(): string {
  return new Date().toISOString();
}

export class Db {
  readonly sqlite: Database.Database;
  /** Statements run since start: the database load the cache is meant to take away. */
  queries = 0;

  private readonly stmt;

  constructor(path: string) {
    this.sqlite = new Database(path);
    this.sqlite.pragma('journal_mode = WAL');
    this.sqlite.pragma('synchronous = NORMAL');
    this.sqlite.pragma('foreign_keys = ON');
    this.sqlite.exec(SCHEMA);
    const s = this.sqlite;
    this.stmt = {
      school: s.prepare(`SELECT id, name, district, version, updated_at AS updatedAt FROM schools WHERE id = ?`),
      user: s.prepare(`SELECT id, school_id AS schoolId, role, name, email, version, updated_at AS updatedAt FROM users WHERE id = ?`),
      session: s.prepare(`SELECT ${SESSION_COLUMNS}, created_at AS createdAt, roster_version AS rosterVersion,
          (SELECT count(*) FROM roster_entries r WHERE r.session_id = sessions.id) AS studentCount
        FROM sessions WHERE id = ?`),
      teacherSessions: s.prepare(`SELECT ${SESSION_COLUMNS} FROM sessions WHERE teacher_id = ? ORDER BY id DESC LIMIT ${LIST_LIMIT}`),
      teacherCount: s.prepare(`SELECT count(*) AS n FROM sessions WHERE teacher_id = ?`),
      schoolSessions: s.prepare(`SELECT ${SESSION_COLUMNS} FROM sessions WHERE school_id = ? ORDER BY id DESC LIMIT ${LIST_LIMIT}`),
      schoolCount: s.prepare(`SELECT count(*) AS n FROM sessions WHERE school_id = ?`),
      rosterHead: s.prepare(`SELECT roster_version AS version FROM sessions WHERE id = ? AND school_id = ?`),
      rosterStudents: s.prepare(`SELECT u.id, u.name FROM roster_entries r JOIN users u ON u.id = r.student_id WHERE r.session_id = ? ORDER BY u.id`),
      studentRosters: s.prepare(`SELECT session_id AS sessionId FROM roster_entries WHERE student_id = ? ORDER BY session_id`),
      insertSession: s.prepare(`INSERT INTO sessions (teacher_id, school_id, title, status, created_at, updated_at) VALUES (?, ?, ?, 'created', ?, ?)`),
      updateSession: s.prepare(`UPDATE sessions SET title = coalesce(?, title), status = coalesce(?, status), version = version + 1, updated_at = ? WHERE id = ?`),
      updateUser: s.prepare(`UPDATE users SET name = coalesce(?, name), email = coalesce(?, email), version = version + 1, updated_at = ? WHERE id = ?`),
      updateSchool: s.prepare(`UPDATE schools SET name = coalesce(?, name), district = coalesce(?, district), version = version + 1, updated_at = ? WHERE id = ?`),
      addStudent: s.prepare(`INSERT OR IGNORE INTO roster_entries (session_id, student_id)
        SELECT ?, id FROM users WHERE id = ? AND role = 'student' AND school_id = ?`),
      removeStudent: s.prepare(`DELETE FROM roster_entries WHERE session_id = ? AND student_id = ?`),
      bumpRoster: s.prepare(`UPDATE sessions SET roster_version = roster_version + 1 WHERE id = ? AND school_id = ?`),
    };
  }

  private count(n = 1): void {
    this.queries += n;
  }

  school(id: number): School | undefined {
    this.count();
    return this.stmt.school.get(id) as School | undefined;
  }

  user(id: number): UserProfile | undefined {
    this.count();
    return this.stmt.user.get(id) as UserProfile | undefined;
  }

  session(id: number): SessionDetail | undefined {
    this.count();
    return this.stmt.session.get(id) as SessionDetail | undefined;
  }

  teacherSessions(teacherId: number): SessionList {
    this.count(2);
    const { n } = this.stmt.teacherCount.get(teacherId) as { n: number };
    return { count: n, sessions: this.stmt.teacherSessions.all(teacherId) as SessionSummary[] };
  }

  schoolSessions(schoolId: number): SessionList {
    this.count(2);
    const { n } = this.stmt.schoolCount.get(schoolId) as { n: number };
    return { count: n, sessions: this.stmt.schoolSessions.all(schoolId) as SessionSummary[] };
  }

  roster(schoolId: number, sessionId: number): Roster | undefined {
    this.count();
    const head = this.stmt.rosterHead.get(sessionId, schoolId) as { version: number } | undefined;
    if (!head) return undefined;
    this.count();
    const students = this.stmt.rosterStudents.all(sessionId) as { id: number; name: string }[];
    return { schoolId, sessionId, version: head.version, students };
  }

  /** Creates a session for a teacher; undefined when the teacher does not exist. */
  createSession(teacherId: number, title: string): SessionDetail | undefined {
    return this.sqlite.transaction(() => {
      const teacher = this.user(teacherId);
      if (!teacher || teacher.role !== 'teacher') return undefined;
      this.count();
      const at = now();
      const id = Number(this.stmt.insertSession.run(teacherId, teacher.schoolId, title, at, at).lastInsertRowid);
      return this.session(id);
    })();
  }

  updateSession(id: number, title: string | null, status: SessionStatus | null): SessionDetail | undefined {
    return this.sqlite.transaction(() => {
      this.count();
      if (this.stmt.updateSession.run(title, status, now(), id).changes === 0) return undefined;
      return this.session(id);
    })();
  }

  updateUser(id: number, name: string | null, email: string | null): UserProfile | undefined {
    return this.sqlite.transaction(() => {
      this.count();
      if (this.stmt.updateUser.run(name, email, now(), id).changes === 0) return undefined;
      return this.user(id);
    })();
  }

  /** The sessions whose rosters list a student (rosters show their students' names). */
  rostersListing(studentId: number): number[] {
    this.count();
    return (this.stmt.studentRosters.all(studentId) as { sessionId: number }[]).map((r) => r.sessionId);
  }

  updateSchool(id: number, name: string | null, district: string | null): School | undefined {
    return this.sqlite.transaction(() => {
      this.count();
      if (this.stmt.updateSchool.run(name, district, now(), id).changes === 0) return undefined;
      return this.school(id);
    })();
  }

  /** Adds and removes students (of the session's school); undefined when the session is
   * not in that school. */
  changeRoster(schoolId: number, sessionId: number, add: number[], remove: number[]): Roster | undefined {
    return this.sqlite.transaction(() => {
      this.count();
      if (this.stmt.bumpRoster.run(sessionId, schoolId).changes === 0) return undefined;
      for (const student of add) {
        this.count();
        this.stmt.addStudent.run(sessionId, student, schoolId);
      }
      for (const student of remove) {
        this.count();
        this.stmt.removeStudent.run(sessionId, student);
      }
      return this.roster(schoolId, sessionId);
    })();
  }

  isEmpty(): boolean {
    return (this.sqlite.prepare(`SELECT count(*) AS n FROM schools`).get() as { n: number }).n === 0;
  }

  close(): void {
    this.sqlite.close();
  }
}
