// Entry point: open the database (seeding it when empty), connect the cache, serve HTTP.
//
//   CACHE_MODE=cachet REDIS_PORT=6380 PORT=3000 DB_PATH=classwaves.db npm start

import { buildApp } from './app';
import { Cache } from './cache';
import { loadConfig } from './config';
import { Db } from './db';
import { seed } from './seed';

const config = loadConfig();
const db = new Db(config.dbPath);
if (db.isEmpty()) {
  console.log(`seeding ${config.dbPath}: ${JSON.stringify(seed(db, config.seed))}`);
}
const cache = new Cache(config.cacheMode, config);
const server = buildApp(db, cache).listen(config.port, '127.0.0.1', () => {
  const where = config.cacheMode === 'none' ? 'no cache' : `${config.redisHost}:${config.redisPort}`;
  console.log(`classwaves listening on 127.0.0.1:${config.port} (CACHE_MODE=${config.cacheMode}, ${where})`);
});

function shutdown(): void {
  server.close(() => {
    void cache.close().then(() => {
      db.close();
      process.exit(0);
    });
  });
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
