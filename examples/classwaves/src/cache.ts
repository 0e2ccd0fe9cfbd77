// Cache-aside with plain GET and SET, and domain events with EMIT. This file is all that is
// left of the original CacheManager, CacheEventBus and CacheWarmer: tags, TTL classes,
// invalidation and warming are cachet's job now (its config has the rules).

import Redis from 'ioredis';
import { CacheMode, CacheTTLConfig, Config, TtlClass } from './config';

export interface CacheStats {
  hits: number;
  misses: number;
  /** Cache calls that failed; the request was served from the database instead. */
  errors: number;
  /** Values recomputed for a warm request, and warm requests that found the key present. */
  warmed: number;
  warmSkipped: number;
  emits: number;
  emitErrors: number;
  /** The same counts per kind of entry (`kindOf`), to see where misses and recomputes come from. */
  byKind: Record<string, KindStats>;
}

export interface KindStats {
  hits: number;
  misses: number;
  warmed: number;
  warmSkipped: number;
}

/** A key's kind: its first segment, and the second for lists (`sessions:teacher`). */
export function kindOf(key: string): string {
  const parts = key.split(':');
  return parts[0] === 'sessions' ? `${parts[0]}:${parts[1]}` : parts[0];
}

export type Lookup<T> = { value: T; cache: 'hit' | 'miss' | 'off' };

/**
 * A few ioredis connections, each lent to one request at a time for its whole GET → load →
 * SET. cachet protects a value computed from a miss against an invalidation that happened in
 * between (the SET is dropped), and it keeps that "lease" per connection and key: two
 * requests missing the same key on one shared connection would mix up their leases.
 */
class Pool {
  private readonly idle: Redis[] = [];
  private readonly waiting: ((client: Redis) => void)[] = [];
  readonly all: Redis[] = [];

  constructor(config: Config) {
    for (let i = 0; i < config.redisPool; i++) {
      const client = new Redis({
        host: config.redisHost,
        port: config.redisPort,
        password: config.redisPassword,
        // Fail fast when the cache is down: the request falls back to SQLite.
        maxRetriesPerRequest: 1,
        enableOfflineQueue: true,
      });
      client.on('error', (e) => console.error(`redis: ${e.message}`));
      this.all.push(client);
      this.idle.push(client);
    }
  }

  async with<T>(work: (client: Redis) => Promise<T>): Promise<T> {
    const client = this.idle.pop() ?? (await new Promise<Redis>((resolve) => this.waiting.push(resolve)));
    try {
      return await work(client);
    } finally {
      const next = this.waiting.shift();
      if (next) next(client);
      else this.idle.push(client);
    }
  }
}

export class Cache {
  readonly stats: CacheStats = { hits: 0, misses: 0, errors: 0, warmed: 0, warmSkipped: 0, emits: 0, emitErrors: 0, byKind: {} };
  private readonly pool: Pool | undefined;

  constructor(readonly mode: CacheMode, config: Config) {
    this.pool = mode === 'none' ? undefined : new Pool(config);
  }

  private count(key: string, what: keyof KindStats): void {
    this.stats[what]++;
    const kind = (this.stats.byKind[kindOf(key)] ??= { hits: 0, misses: 0, warmed: 0, warmSkipped: 0 });
    kind[what]++;
  }

  /**
   * The cache-aside read: GET; on a miss load from the database and SET. In `cachet` mode the
   * SET carries no TTL (cachet's rule for the key gives it its TTL and tags); in `ttl` mode
   * it carries the TTL class's seconds. A value the loader does not find is not cached.
   */
  async getOrLoad<T>(key: string, ttl: TtlClass, load: () => T | undefined): Promise<Lookup<T> | undefined> {
    if (!this.pool) {
      const value = load();
      return value === undefined ? undefined : { value, cache: 'off' };
    }
    try {
      return await this.pool.with(async (redis) => {
        const cached = await redis.get(key);
        if (cached !== null) {
          this.count(key, 'hits');
          return { value: JSON.parse(cached) as T, cache: 'hit' as const };
        }
        this.count(key, 'misses');
        const value = load();
        if (value === undefined) return undefined;
        await this.set(redis, key, ttl, value);
        return { value, cache: 'miss' as const };
      });
    } catch (e) {
      this.stats.errors++;
      console.error(`cache read of ${key} failed, serving from the database: ${(e as Error).message}`);
      const value = load();
      return value === undefined ? undefined : { value, cache: 'off' };
    }
  }

  /**
   * A warm request from cachet: recompute the key unless someone already did. It reads first
   * (a GET that misses takes cachet's lease, so a recompute that loses a race with a newer
   * invalidation is dropped instead of stored). Returns whether it wrote.
   */
  async warm<T>(key: string, ttl: TtlClass, load: () => T | undefined): Promise<boolean> {
    if (!this.pool) return false;
    return this.pool.with(async (redis) => {
      if ((await redis.get(key)) !== null) {
        this.count(key, 'warmSkipped');
        return false;
      }
      const value = load();
      if (value === undefined) return false;
      await this.set(redis, key, ttl, value);
      this.count(key, 'warmed');
      return true;
    });
  }

  private async set(redis: Redis, key: string, ttl: TtlClass, value: unknown): Promise<void> {
    const json = JSON.stringify(value);
    if (this.mode === 'ttl') await redis.set(key, json, 'EX', CacheTTLConfig[ttl]);
    else await redis.set(key, json);
  }

  /**
   * Sends a domain event to cachet after the write committed (`cachet` mode only). cachet's
   * policies turn it into invalidations and warm requests before it replies. A failure is
   * logged, not thrown: the data is committed, and cachet keeps the event for replay. A
   * list becomes one field per element, in order (EMIT fields may repeat).
   */
  async emit(event: string, fields: Record<string, number | string | (number | string)[]>): Promise<void> {
    if (this.mode !== 'cachet' || !this.pool) return;
    const args = [
      event,
      ...Object.entries(fields).flatMap(([k, v]) => (Array.isArray(v) ? v : [v]).flatMap((one) => [k, String(one)])),
    ];
    try {
      await this.pool.with((redis) => redis.call('EMIT', ...args));
      this.stats.emits++;
    } catch (e) {
      this.stats.emitErrors++;
      console.error(`EMIT ${args.join(' ')} failed: ${(e as Error).message}`);
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.pool?.all.map((c) => c.quit().catch(() => undefined)) ?? []);
  }
}
