// Configuration from the environment, with the original backend's variable names where it
// had them (REDIS_HOST, REDIS_PORT, REDIS_PASSWORD).

export type CacheMode = 'none' | 'ttl' | 'cachet';

export interface Config {
  /** none: every read goes to SQLite. ttl: cache-aside against plain Redis with the TTL
   * table below and no invalidation. cachet: cache-aside through cachet, writes send EMIT. */
  cacheMode: CacheMode;
  redisHost: string;
  redisPort: number;
  redisPassword: string | undefined;
  /** Redis connections the app keeps; a read holds one from its GET to its SET. */
  redisPool: number;
  port: number;
  dbPath: string;
  /** Seed sizes, used when the database file is empty. */
  seed: { schools: number; teachersPerSchool: number; studentsPerSchool: number; sessionsPerTeacher: number; studentsPerRoster: number };
}

function int(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    throw new Error(`${name} must be a non-negative integer, got '${raw}'`);
  }
  return value;
}

export function loadConfig(): Config {
  const mode = process.env.CACHE_MODE ?? 'cachet';
  if (mode !== 'none' && mode !== 'ttl' && mode !== 'cachet') {
    throw new Error(`CACHE_MODE must be none, ttl or cachet, got '${mode}'`);
  }
  return {
    cacheMode: mode,
    redisHost: process.env.REDIS_HOST ?? '127.0.0.1',
    // cachet listens on 6380 by default; in ttl mode point REDIS_PORT at Redis itself.
    redisPort: int('REDIS_PORT', 6380),
    redisPassword: process.env.REDIS_PASSWORD || undefined,
    redisPool: Math.max(1, int('REDIS_POOL', 16)),
    port: int('PORT', 3000),
    dbPath: process.env.DB_PATH ?? 'classwaves.db',
    seed: {
      schools: int('SEED_SCHOOLS', 20),
      teachersPerSchool: int('SEED_TEACHERS_PER_SCHOOL', 20),
      studentsPerSchool: int('SEED_STUDENTS_PER_SCHOOL', 400),
      sessionsPerTeacher: int('SEED_SESSIONS_PER_TEACHER', 5),
      studentsPerRoster: int('SEED_STUDENTS_PER_ROSTER', 25),
    },
  };
}

/** The original CacheTTLConfig, in seconds. Only `ttl` mode passes these to Redis; in
 * `cachet` mode the same table lives in cachet's config ([ttl] and [[rules]]). */
export const CacheTTLConfig = {
  'session-list': 300,
  'session-detail': 900,
  'user-profile': 1800,
  'school-data': 3600,
  'roster-data': 1800,
} as const;

export type TtlClass = keyof typeof CacheTTLConfig;
