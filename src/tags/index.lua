#!lua name=cachet
-- cachet's tag index, kept in Redis so every cachet instance shares it. Key names, the
-- KEYS/ARGV layout of each function and their replies are documented in src/tags/index/;
-- the naming below must stay byte-for-byte equal to `Names` (names.rs; a test checks it).
--
-- Names come from the prefix (ARGV[1]) and raw bytes. A function uses the names it is given
-- in KEYS for the keys it is given, and builds names itself only for keys it discovers (the
-- other tags of a key, the per-key set of a popped member, a drain set).

-- Most members whose score says "expired" one write re-checks per tag set.
local TRIM = 16
-- How far ahead of Redis's clock a tag's epoch starts again once its key was lost (ms).
local EPOCH_RESTART_MS = 1000

-- `%` and `}` percent-encoded, so the result is `}`-free and the mapping injective. The
-- empty string becomes a lone `%`, which no other input produces.
local function esc(s)
  if s == '' then
    return '%'
  end
  return (string.gsub(s, '[%%}]', { ['%'] = '%25', ['}'] = '%7D' }))
end

-- What goes between the braces of a key's per-key name: the key's own hash tag when it has
-- one (Redis's rule: first `{`, first `}` after it, non-empty between), else the key itself
-- when it has no `}`, else the key escaped.
local function slot_part(k)
  local open = string.find(k, '{', 1, true)
  if open then
    local close = string.find(k, '}', open + 1, true)
    if close and close > open + 1 then
      return string.sub(k, open + 1, close - 1)
    end
  end
  if k ~= '' and not string.find(k, '}', 1, true) then
    return k
  end
  return esc(k)
end

local function tag_keys(p, tag)
  return p .. ':t:{' .. esc(tag) .. '}'
end

local function epoch_key(p, tag)
  return p .. ':e:{' .. esc(tag) .. '}'
end

local function drain_key(p, tag, epoch)
  return p .. ':d:{' .. esc(tag) .. '}:' .. epoch
end

-- The tag whose set is `tk` (the inverse of tag_keys).
local function tag_of(p, tk)
  local inner = string.sub(tk, #p + 5, -2)
  return (string.gsub(inner, '%%(%x?%x?)', function(hex)
    if hex == '' then
      return ''
    end
    return string.char(tonumber(hex, 16))
  end))
end

local function key_tags(p, k)
  return p .. ':k:{' .. slot_part(k) .. '}:' .. k
end

-- Integral numbers as plain digits (Lua would write 1e+15).
local function digits(n)
  return string.format('%.0f', n)
end

-- The client's command (ARGV 5 .. 4 + n_cmd) under the client's protocol; 0 when there is
-- none. The second value is true when Redis refused it (the reply is then its error).
local function client_command(args, n_cmd, resp3)
  if n_cmd == 0 then
    return 0, false
  end
  if resp3 then
    redis.setresp(3)
  end
  local reply = redis.pcall(unpack(args, 5, 4 + n_cmd))
  redis.setresp(2)
  return reply, type(reply) == 'table' and reply['err'] ~= nil
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A tag set's score for a key: its expiry time in ms, or +inf when it has none.
local function score(pexpiretime)
  if pexpiretime == -1 then
    return math.huge
  end
  return pexpiretime
end

local function score_arg(s)
  if s == math.huge then
    return '+inf'
  end
  return digits(s)
end

-- Removes `k` from the sets of the tags its per-key set names, and from those of `extra`,
-- then deletes its per-key set.
local function drop_index(p, k, extra)
  local kt = key_tags(p, k)
  for _, tag in ipairs(redis.call('SMEMBERS', kt)) do
    redis.call('ZREM', tag_keys(p, tag), k)
  end
  if extra then
    for _, tag in ipairs(extra) do
      redis.call('ZREM', tag_keys(p, tag), k)
    end
  end
  redis.call('DEL', kt)
end

-- A live key found in `tag`'s set with a stale score (its TTL changed behind cachet's back):
-- the score becomes its real expiry and its per-key set, which may have expired at the old
-- time, names `tag` again and expires with it.
local function rescore(p, tk, tag, k, pt)
  redis.call('ZADD', tk, score_arg(score(pt)), k)
  local kt = key_tags(p, k)
  redis.call('SADD', kt, tag)
  if pt == -1 then
    redis.call('PERSIST', kt)
  else
    redis.call('PEXPIREAT', kt, digits(pt))
  end
end

-- Re-checks up to TRIM members of `tag`'s set `tk` whose score has passed: a member whose
-- key is gone leaves the index, a live one is rescored. A live key is never dropped,
-- whatever its score says.
local function trim(p, tk, tag, now)
  local due = redis.call('ZRANGE', tk, '-inf', '(' .. digits(now), 'BYSCORE', 'LIMIT', 0, TRIM)
  for _, k in ipairs(due) do
    local pt = redis.call('PEXPIRETIME', k)
    if pt == -2 then
      redis.call('ZREM', tk, k)
      drop_index(p, k)
    else
      rescore(p, tk, tag, k, pt)
    end
  end
end

-- Brings `k`'s index up to date after a write: `tags` join the tags its per-key set already
-- names, every one of those sets gets `k` with its expiry as score, and the per-key set
-- expires with `k`. A key that no longer exists leaves the index. Returns whether `k` exists.
-- `pt` is the key's PEXPIRETIME when the caller knows it (nil: ask Redis); `kt` and
-- `tks` are the names of its per-key set and of its tags' sets when the caller has them
-- (from KEYS), which spares building them again.
local function index_key(p, k, tags, now, pt, kt, tks)
  kt = kt or key_tags(p, k)
  pt = pt or redis.call('PEXPIRETIME', k)
  if pt == -2 then
    drop_index(p, k, tags)
    return false
  end
  local all, names = {}, {}
  if #tags > 0 then
    redis.call('SADD', kt, unpack(tags))
    local seen = {}
    for j, tag in ipairs(tags) do
      if not seen[tag] then
        seen[tag] = true
        all[#all + 1] = tag
        names[#all] = tks and tks[j]
      end
    end
    -- Only a key that carries more tags than this write names (TAG, an inherited set) needs
    -- its full list read back: the set holds at least these, so equal counts mean equal sets.
    if redis.call('SCARD', kt) ~= #all then
      all, names = redis.call('SMEMBERS', kt), {}
    end
  else
    all = redis.call('SMEMBERS', kt)
  end
  if #all == 0 then
    return true
  end
  local s = score_arg(score(pt))
  for i, tag in ipairs(all) do
    local tk = names[i] or tag_keys(p, tag)
    -- A tag set only grows by new members, so re-checking expired members when one joins
    -- keeps it bounded without a range query on every write.
    if redis.call('ZADD', tk, s, k) == 1 then
      trim(p, tk, tag, now)
    end
  end
  if pt == -1 then
    redis.call('PERSIST', kt)
  else
    redis.call('PEXPIREAT', kt, digits(pt))
  end
  return true
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Deletes keys (`list[first]`, `list[first + step]`, ...), their per-key sets and their
-- entries in every tag set, batched: one SMEMBERS per key, then one command per tag rather
-- than per key.
local function delete_keys(p, list, first, step)
  local keys, key_sets, by_tag, tags = {}, {}, {}, {}
  for i = first, #list, step do
    local k = list[i]
    local kt = key_tags(p, k)
    keys[#keys + 1] = k
    key_sets[#key_sets + 1] = kt
    for _, tag in ipairs(redis.call('SMEMBERS', kt)) do
      local members = by_tag[tag]
      if not members then
        members = {}
        by_tag[tag] = members
        tags[#tags + 1] = tag
      end
      members[#members + 1] = k
    end
  end
  if #keys == 0 then
    return 0
  end
  local deleted = redis.call('UNLINK', unpack(keys))
  redis.call('DEL', unpack(key_sets))
  for _, tag in ipairs(tags) do
    redis.call('ZREM', tag_keys(p, tag), unpack(by_tag[tag]))
  end
  return deleted
end

-- The keys popped from a drain set (ZPOPMIN's key, score pairs).
local function delete_popped(p, popped)
  return delete_keys(p, popped, 1, 2)
end

-- Deletes the keys of drain set `set`, STEP at a time, until `chunk` keys are done, the set is
-- empty, or `budget_us` has passed (so a slow machine or keys with many tags shorten the call
-- rather than lengthen it). Returns {keys deleted, members left}.
local STEP = 100
local function drain(p, set, chunk, budget_us)
  local started = now_us()
  local deleted, done = 0, 0
  while done < chunk do
    local want = math.min(STEP, chunk - done)
    local popped = redis.call('ZPOPMIN', set, want)
    done = done + #popped / 2
    deleted = deleted + delete_popped(p, popped)
    if #popped / 2 < want or now_us() - started >= budget_us then
      break
    end
  end
  return { deleted, redis.call('ZCARD', set) }
end

local function is_zset(key)
  return redis.call('TYPE', key)['ok'] == 'zset'
end

-- cachet_write / cachet_write_oom: run one command, then index its data keys.
local function write(keys, args)
  local p = args[1]
  local resp3 = args[2] == '3'
  local explicit_ttl = args[3] == '1'
  local n_cmd = tonumber(args[4])
  local a = 5 + n_cmd
  local plan = {}
  local ki = 1
  while ki <= #keys do
    local e = { key = keys[ki], kt = keys[ki + 1], ttl = tonumber(args[a]), inherit = tonumber(args[a + 1]) }
    local n = tonumber(args[a + 2])
    a = a + 3
    -- tags/tks: the tags to index and their sets' names; named: the tags that name the key
    -- (no index entry); seen/tes: every tag's seen epoch and epoch key, for the lease check.
    e.tags, e.tks, e.named, e.seen, e.tes = {}, {}, {}, {}, {}
    for j = 1, n do
      e.seen[j] = tonumber(args[a + 1])
      e.tes[j] = keys[ki + 2 * j + 1]
      if args[a + 2] == '1' then
        e.tags[#e.tags + 1] = args[a]
        e.tks[#e.tags] = keys[ki + 2 * j]
      else
        e.named[#e.named + 1] = args[a]
      end
      a = a + 3
    end
    plan[#plan + 1] = e
    ki = ki + 2 + 2 * n
  end
  -- A key that takes another's value (RENAME, COPY) takes its tags: read them first. The
  -- tags that named the source name nothing at the destination, so there they are indexed.
  for _, e in ipairs(plan) do
    if e.inherit > 0 then
      local source = plan[e.inherit]
      e.inherited = redis.call('SMEMBERS', key_tags(p, source.key))
      for _, tag in ipairs(source.named) do
        e.inherited[#e.inherited + 1] = tag
      end
    end
  end

  local reply, failed = client_command(args, n_cmd, resp3)
  if failed then
    return reply
  end

  local now = now_ms()
  local gone = 0
  for _, e in ipairs(plan) do
    local stale = false
    for j, te in ipairs(e.tes) do
      if e.seen[j] >= 0 and (tonumber(redis.call('GET', te)) or 0) > e.seen[j] then
        stale = true
        break
      end
    end
    local tags = e.tags
    if e.inherited then
      for _, tag in ipairs(e.inherited) do
        tags[#tags + 1] = tag
      end
    end
    if stale then
      redis.call('UNLINK', e.key)
      drop_index(p, e.key, tags)
      gone = gone + 1
    else
      local pt = redis.call('PEXPIRETIME', e.key)
      if pt == -1 and not explicit_ttl and e.ttl > 0 then
        pt = now + e.ttl * 1000
        redis.call('PEXPIREAT', e.key, digits(pt))
      end
      -- Inherited tags have no names in KEYS: index_key builds those.
      if not index_key(p, e.key, tags, now, pt, e.kt, not e.inherited and e.tks or nil) then
        gone = gone + 1
      end
    end
  end
  if n_cmd == 0 then
    return gone
  end
  return reply
end

redis.register_function('cachet_write', write)
redis.register_function({ function_name = 'cachet_write_oom', callback = write, flags = { 'allow-oom' } })

-- cachet_invalidate: bump the tag's epoch, move its set aside as a drain set, delete a chunk.
redis.register_function('cachet_invalidate', function(keys, args)
  local p, tag = args[1], args[2]
  local chunk, budget_us, epoch_ttl = tonumber(args[3]), tonumber(args[4]), tonumber(args[5])
  local te, tk = keys[2], keys[1]
  -- An epoch only grows. Once its key is gone (FLUSHDB, eviction) its last value is unknown,
  -- and a fill may still hold a snapshot of it taken this very millisecond (or a few ms
  -- ahead, after several invalidations in one ms): the new epoch starts a second ahead.
  local current = tonumber(redis.call('GET', te))
  local epoch = current and math.max(now_ms(), current + 1) or now_ms() + EPOCH_RESTART_MS
  if epoch_ttl > 0 then
    redis.call('SET', te, digits(epoch), 'PX', digits(epoch_ttl))
  else
    redis.call('SET', te, digits(epoch))
  end
  -- The keys the tag names (KEYS[3..], from the rules) have no entry in its set; each
  -- comes with its rule's indexed tags (ARGV[6..]: n, tags...), whose sets it leaves.
  local named = 0
  if #keys > 2 then
    named = delete_keys(p, keys, 3, 1)
    local a = 6
    for i = 3, #keys do
      local n = tonumber(args[a])
      for j = a + 1, a + n do
        redis.call('ZREM', tag_keys(p, args[j]), keys[i])
      end
      a = a + n + 1
    end
  end
  if not is_zset(tk) then
    return { named, 0, epoch }
  end
  local set = drain_key(p, tag, digits(epoch))
  redis.call('RENAME', tk, set)
  local r = drain(p, set, chunk, budget_us)
  return { named + r[1], r[2], epoch }
end)

-- cachet_drain: the next chunk of a drain set.
redis.register_function('cachet_drain', function(keys, args)
  if not is_zset(keys[1]) then
    return { 0, 0 }
  end
  return drain(args[1], keys[1], tonumber(args[2]), tonumber(args[3]))
end)

-- cachet_trim: after fast writes (MULTI/EXEC, no function) added members to these tag sets,
-- the re-check cachet_write does when a member joins.
redis.register_function('cachet_trim', function(keys, args)
  local p, now = args[1], now_ms()
  for _, tk in ipairs(keys) do
    trim(p, tk, tag_of(p, tk), now)
  end
  return #keys
end)

-- cachet_tag: attach tags to an existing key.
redis.register_function('cachet_tag', function(keys, args)
  local p, k = args[1], keys[1]
  if #args < 2 then
    return redis.error_reply("ERR wrong number of arguments for 'tag' command")
  end
  if redis.call('EXISTS', k) == 0 then
    return redis.error_reply('ERR no such key')
  end
  local added = redis.call('SADD', key_tags(p, k), unpack(args, 2))
  index_key(p, k, {}, now_ms())
  return added
end)

-- cachet_tags: a key's tags: its per-key set's, and its rule's (ARGV[2..]).
redis.register_function({
  function_name = 'cachet_tags',
  flags = { 'no-writes' },
  callback = function(keys, args)
    if redis.call('EXISTS', keys[1]) == 0 then
      return {}
    end
    local tags = redis.call('SMEMBERS', key_tags(args[1], keys[1]))
    for i = 2, #args do
      tags[#tags + 1] = args[i]
    end
    return tags
  end,
})

-- cachet_tagkeys: one ZSCAN page of a tag set, live keys only; the keys the tag names
-- (KEYS[2..], given with the first page) that exist come first.
redis.register_function({
  function_name = 'cachet_tagkeys',
  flags = { 'no-writes' },
  callback = function(keys, args)
    local live = {}
    for i = 2, #keys do
      if redis.call('EXISTS', keys[i]) == 1 then
        live[#live + 1] = keys[i]
      end
    end
    if not is_zset(keys[1]) then
      return { '0', live }
    end
    local page = redis.call('ZSCAN', keys[1], args[1], 'COUNT', args[2])
    for i = 1, #page[2], 2 do
      if redis.call('EXISTS', page[2][i]) == 1 then
        live[#live + 1] = page[2][i]
      end
    end
    return { page[1], live }
  end,
})

-- cachet_sweep: one ZSCAN page of a tag set: members whose key is gone (evicted, deleted
-- behind cachet's back) leave the index, live ones with a stale score are rescored.
redis.register_function('cachet_sweep', function(keys, args)
  local p, tk = args[1], keys[1]
  if not is_zset(tk) then
    return { '0', 0 }
  end
  local tag = tag_of(p, tk)
  local page = redis.call('ZSCAN', tk, args[2], 'COUNT', args[3])
  local removed = 0
  for i = 1, #page[2], 2 do
    local k = page[2][i]
    local pt = redis.call('PEXPIRETIME', k)
    if pt == -2 then
      redis.call('ZREM', tk, k)
      drop_index(p, k)
      removed = removed + 1
    elseif tonumber(page[2][i + 1]) ~= score(pt) then
      rescore(p, tk, tag, k, pt)
    end
  end
  return { page[1], removed }
end)

-- Redis Cluster (src/tags/index/cluster.rs). There a function reaches one slot only, so the
-- functions below each touch either one data key's slot (the key and its per-key set) or one
-- tag's slot (its set, epoch and drain sets); cachet orders the calls between them.

-- cachet_cwrite / cachet_cwrite_oom: run one command, then bring its data keys' per-key sets
-- up to date (their tags' sets, elsewhere, got their entries before this call).
local function cwrite(keys, args)
  local p = args[1]
  local resp3 = args[2] == '3'
  local explicit_ttl = args[3] == '1'
  local n_cmd = tonumber(args[4])
  local a = 5 + n_cmd
  local plan = {}
  for ki = 1, #keys, 2 do
    local e = { key = keys[ki], kt = keys[ki + 1], ttl = tonumber(args[a]), inherit = tonumber(args[a + 1]) }
    local n = tonumber(args[a + 2])
    e.tags = { unpack(args, a + 3, a + 2 + n) }
    a = a + 3 + n
    plan[#plan + 1] = e
  end
  for _, e in ipairs(plan) do
    if e.inherit > 0 then
      local source = plan[e.inherit]
      for _, tag in ipairs(redis.call('SMEMBERS', source.kt)) do
        e.tags[#e.tags + 1] = tag
      end
    end
  end
  local reply, failed = client_command(args, n_cmd, resp3)
  if failed then
    return reply
  end
  local now = now_ms()
  local gone = 0
  for _, e in ipairs(plan) do
    local pt = redis.call('PEXPIRETIME', e.key)
    if pt == -2 then
      redis.call('DEL', e.kt)
      gone = gone + 1
    else
      if pt == -1 and not explicit_ttl and e.ttl > 0 then
        pt = now + e.ttl * 1000
        redis.call('PEXPIREAT', e.key, digits(pt))
      end
      if #e.tags > 0 then
        redis.call('SADD', e.kt, unpack(e.tags))
      end
      if redis.call('EXISTS', e.kt) == 1 then
        if pt == -1 then
          redis.call('PERSIST', e.kt)
        else
          redis.call('PEXPIREAT', e.kt, digits(pt))
        end
      end
    end
  end
  if n_cmd == 0 then
    return gone
  end
  return reply
end

redis.register_function('cachet_cwrite', cwrite)
redis.register_function({ function_name = 'cachet_cwrite_oom', callback = cwrite, flags = { 'allow-oom' } })

-- cachet_cinvalidate: bump the tag's epoch and move its set aside as a drain set, whose keys
-- (on any node) cachet then deletes. Replies {epoch, members in the drain set}.
redis.register_function('cachet_cinvalidate', function(keys, args)
  local tk, te = keys[1], keys[2]
  local p, tag, epoch_ttl = args[1], args[2], tonumber(args[3])
  local current = tonumber(redis.call('GET', te))
  local epoch = current and math.max(now_ms(), current + 1) or now_ms() + EPOCH_RESTART_MS
  if epoch_ttl > 0 then
    redis.call('SET', te, digits(epoch), 'PX', digits(epoch_ttl))
  else
    redis.call('SET', te, digits(epoch))
  end
  if not is_zset(tk) then
    return { digits(epoch), 0 }
  end
  local set = drain_key(p, tag, digits(epoch))
  redis.call('RENAME', tk, set)
  return { digits(epoch), redis.call('ZCARD', set) }
end)

-- cachet_cdelete: deletes data keys (ARGV[3..]) served by this node, each with its per-key
-- set, one at a time (a command may not span slots even here), until `budget_us` (ARGV[2])
-- has passed. KEYS[1] is one of them, which routes the call. Replies {deleted, keys done}.
redis.register_function({
  function_name = 'cachet_cdelete',
  flags = { 'allow-cross-slot-keys', 'allow-oom' },
  callback = function(keys, args)
    local p, budget_us = args[1], tonumber(args[2])
    local started = now_us()
    local deleted, done = 0, 0
    for i = 3, #args do
      deleted = deleted + redis.call('UNLINK', args[i])
      redis.call('DEL', key_tags(p, args[i]))
      done = done + 1
      if done % 8 == 0 and now_us() - started >= budget_us then
        break
      end
    end
    return { deleted, done }
  end,
})

-- cachet_cfix: the sweeper's changes to one tag or drain set (KEYS[1]), from what it found of
-- the members' keys on their own nodes (ARGV: member, score seen, new score or `-` to
-- remove). Each applies only if the member's score is still the one seen: a writer that
-- added the member again since gave it another. Replies how many members it removed.
redis.register_function({
  function_name = 'cachet_cfix',
  flags = { 'allow-oom' },
  callback = function(keys, args)
    local removed = 0
    for i = 1, #args, 3 do
      local s = redis.call('ZSCORE', keys[1], args[i])
      if s and s == args[i + 1] then
        if args[i + 2] == '-' then
          removed = removed + redis.call('ZREM', keys[1], args[i])
        else
          redis.call('ZADD', keys[1], 'XX', args[i + 2], args[i])
        end
      end
    end
    return removed
  end,
})

-- cachet_ctag: attach tags (ARGV[2..]) to an existing key (KEYS[1], its per-key set KEYS[2]);
-- their sets got the key before this call. Replies how many it did not have yet.
redis.register_function('cachet_ctag', function(keys, args)
  if #args < 2 then
    return redis.error_reply("ERR wrong number of arguments for 'tag' command")
  end
  local pt = redis.call('PEXPIRETIME', keys[1])
  if pt == -2 then
    return redis.error_reply('ERR no such key')
  end
  local added = redis.call('SADD', keys[2], unpack(args, 2))
  if pt == -1 then
    redis.call('PERSIST', keys[2])
  else
    redis.call('PEXPIREAT', keys[2], digits(pt))
  end
  return added
end)
