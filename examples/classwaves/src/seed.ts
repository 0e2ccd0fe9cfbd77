// Seed data: N schools, each with its teachers, students, sessions and class rosters.
// Deterministic (a fixed pseudo-random sequence), so two runs build the same database.
//
//   DB_PATH=classwaves.db SEED_SCHOOLS=20 node dist/seed.js

import { Db } from './db';
import { Config, loadConfig } from './config';

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SUBJECTS = ['Algebra', 'Biology', 'Chemistry', 'History', 'Literature', 'Physics', 'Spanish', 'Art', 'Music', 'Geometry'];
const FIRST = ['Ada', 'Ben', 'Chloe', 'Dev', 'Elena', 'Farid', 'Grace', 'Hugo', 'Ines', 'Jun', 'Kofi', 'Lena', 'Mateo', 'Nora', 'Omar', 'Priya'];
const LAST = ['Garcia', 'Nguyen', 'Smith', 'Okafor', 'Kowalski', 'Tanaka', 'Haddad', 'Silva', 'Jensen', 'Rossi'];

/** Fills an empty database; returns how many rows of each kind it wrote. */
export function seed(db: Db, sizes: Config['seed']): Record<string, number> {
  const random = mulberry32(42);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)];
  const at = new Date().toISOString();
  const s = db.sqlite;
  const insertSchool = s.prepare(`INSERT INTO schools (id, name, district, updated_at) VALUES (?, ?, ?, ?)`);
  const insertUser = s.prepare(`INSERT INTO users (school_id, role, name, email, updated_at) VALUES (?, ?, ?, ?, ?)`);
  const insertSession = s.prepare(`INSERT INTO sessions (teacher_id, school_id, title, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)`);
  const insertEntry = s.prepare(`INSERT OR IGNORE INTO roster_entries (session_id, student_id) VALUES (?, ?)`);
  const counts = { schools: 0, teachers: 0, students: 0, sessions: 0, rosterEntries: 0 };

  s.transaction(() => {
    for (let school = 1; school <= sizes.schools; school++) {
      insertSchool.run(school, `${pick(LAST)} High School ${school}`, `District ${1 + (school % 7)}`, at);
      counts.schools++;
      const teachers: number[] = [];
      const students: number[] = [];
      for (let i = 0; i < sizes.teachersPerSchool; i++) {
        const name = `${pick(FIRST)} ${pick(LAST)}`;
        teachers.push(Number(insertUser.run(school, 'teacher', name, `t${school}.${i}@example.edu`, at).lastInsertRowid));
        counts.teachers++;
      }
      for (let i = 0; i < sizes.studentsPerSchool; i++) {
        const name = `${pick(FIRST)} ${pick(LAST)}`;
        students.push(Number(insertUser.run(school, 'student', name, `s${school}.${i}@example.edu`, at).lastInsertRowid));
        counts.students++;
      }
      for (const teacher of teachers) {
        for (let i = 0; i < sizes.sessionsPerTeacher; i++) {
          const status = pick(['created', 'active', 'ended'] as const);
          const title = `${pick(SUBJECTS)} ${1 + Math.floor(random() * 12)}`;
          const session = Number(insertSession.run(teacher, school, title, status, at, at).lastInsertRowid);
          counts.sessions++;
          for (let k = 0; k < sizes.studentsPerRoster && students.length > 0; k++) {
            counts.rosterEntries += insertEntry.run(session, pick(students)).changes;
          }
        }
      }
    }
  })();
  return counts;
}

if (require.main === module) {
  const config = loadConfig();
  const db = new Db(config.dbPath);
  if (!db.isEmpty()) {
    console.error(`${config.dbPath} already has data; remove it to seed afresh`);
    process.exit(1);
  }
  console.log(JSON.stringify(seed(db, config.seed)));
  db.close();
}
