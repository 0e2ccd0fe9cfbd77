//! What [`TagIndex`] does on its own connection (cachet's control client), for the TAG
//! commands, policies and the sweeper: invalidation, `TAG`, `TAGS`, `TAGKEYS`, writes through
//! `cachet_write` that are not a client's (TAGSET, deletes by policies), epoch reads, tag set
//! sizes, and sweeping. Those that call the library's functions for a client load it first
//! when needed and try once more after Redis lost it ([`TagIndex::install`]); the sweeper only
//! cleans up what is there and never loads it.

use bytes::Bytes;
use fred::cmd;
use fred::interfaces::{ClientLike, FunctionInterface};
use fred::types::{Key, Value};

use super::functions::{WriteCall, WriteKey, epoch_from_reply, number};
use super::{IndexError, TagIndex};
use crate::resp::Protocol;

/// What one [`TagIndex::sweep_step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Index keys the SCAN page returned.
    pub scanned: usize,
    /// Tag set members removed because their key was gone.
    pub members_removed: u64,
    /// Per-key sets removed because their key was gone.
    pub key_sets_removed: u64,
    /// Keys deleted while finishing abandoned invalidations.
    pub drained: u64,
}

impl TagIndex {
    /// The tags' epochs now (0 for a tag never invalidated).
    pub async fn epochs(&self, tags: &[Bytes]) -> Result<Vec<u64>, IndexError> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        if self.cluster {
            return self.epochs_cluster(tags).await;
        }
        let keys: Vec<Value> = self
            .epoch_keys(tags)
            .into_iter()
            .map(Value::Bytes)
            .collect();
        let reply: Value = self.client.custom(cmd!("MGET"), keys).await?;
        match reply {
            Value::Array(values) => Ok(values
                .iter()
                .map(|v| epoch_from_reply(v.as_bytes()))
                .collect()),
            other => Err(unexpected("MGET", &other)),
        }
    }

    /// Deletes every key tagged with any of `tags`, chunk by chunk (`TAGINVALIDATE`).
    /// Returns how many it deleted (keys that expired meanwhile do not count).
    #[tracing::instrument(skip_all, fields(tags = tags.len()))]
    pub async fn invalidate(&self, tags: &[Bytes]) -> Result<u64, IndexError> {
        self.with_library(|| self.invalidate_all(tags)).await
    }

    async fn invalidate_all(&self, tags: &[Bytes]) -> Result<u64, IndexError> {
        let mut deleted = 0;
        for tag in tags {
            deleted += match self.cluster {
                true => self.invalidate_tag_cluster(tag).await?,
                false => self.invalidate_tag(tag).await?,
            };
        }
        tracing::debug!(deleted, "invalidated");
        Ok(deleted)
    }

    async fn invalidate_tag(&self, tag: &Bytes) -> Result<u64, IndexError> {
        let mut keys = vec![
            Key::from(self.names.tag_keys(tag)),
            Key::from(self.names.epoch(tag)),
        ];
        let mut args = vec![
            Value::Bytes(self.names.prefix().clone()),
            Value::Bytes(tag.clone()),
            Value::Bytes(number(self.chunk as u64)),
            Value::Bytes(number(self.call_budget.as_micros() as u64)),
            Value::Bytes(number(self.epoch_ttl.as_millis() as u64)),
        ];
        // The keys the tag names, each with its rule's indexed tags: a fast write may have
        // left it without a per-key set to find those by.
        let named = self.rules.as_ref().map(|rules| rules.named_matches(tag));
        for (key, found) in named.into_iter().flatten() {
            let indexed: Vec<&Bytes> = found.indexed_tags().collect();
            args.push(Value::Bytes(number(indexed.len() as u64)));
            args.extend(indexed.into_iter().cloned().map(Value::Bytes));
            keys.push(Key::from(key));
        }
        let reply: Value = self.client.fcall("cachet_invalidate", keys, args).await?;
        let [mut deleted, remaining, epoch] = integers("cachet_invalidate", &reply)?;
        if remaining > 0 {
            deleted += self.drain(self.names.drain(tag, epoch as u64)).await? as i64;
        }
        Ok(deleted as u64)
    }

    async fn drain(&self, set: Bytes) -> Result<u64, IndexError> {
        let mut deleted = 0;
        loop {
            let reply: Value = self
                .client
                .fcall(
                    "cachet_drain",
                    vec![Key::from(set.clone())],
                    vec![
                        Value::Bytes(self.names.prefix().clone()),
                        Value::Bytes(number(self.chunk as u64)),
                        Value::Bytes(number(self.call_budget.as_micros() as u64)),
                    ],
                )
                .await?;
            let [chunk, remaining] = integers("cachet_drain", &reply)?;
            deleted += chunk;
            if remaining == 0 {
                return Ok(deleted as u64);
            }
        }
    }

    /// Attaches `tags` to an existing key (`TAG key tag...`). Returns how many it did not
    /// have yet; Redis answers `ERR no such key` for a missing key.
    pub async fn tag(&self, key: &Bytes, tags: &[Bytes]) -> Result<u64, IndexError> {
        self.with_library(|| self.tag_once(key, tags)).await
    }

    async fn tag_once(&self, key: &Bytes, tags: &[Bytes]) -> Result<u64, IndexError> {
        if self.cluster {
            return self.tag_cluster(key, tags).await;
        }
        if tags.is_empty() {
            return Ok(0);
        }
        let mut keys = vec![Key::from(key.clone()), Key::from(self.names.key_tags(key))];
        keys.extend(tags.iter().map(|t| Key::from(self.names.tag_keys(t))));
        let mut args = vec![Value::Bytes(self.names.prefix().clone())];
        args.extend(tags.iter().cloned().map(Value::Bytes));
        let reply: Value = self.client.fcall("cachet_tag", keys, args).await?;
        reply
            .as_u64()
            .ok_or_else(|| unexpected("cachet_tag", &reply))
    }

    /// A key's tags, sorted (`TAGS key`): its rule's and those in its per-key set; none
    /// when the key does not exist.
    pub async fn tags(&self, key: &Bytes) -> Result<Vec<Bytes>, IndexError> {
        self.with_library(|| self.tags_once(key)).await
    }

    async fn tags_once(&self, key: &Bytes) -> Result<Vec<Bytes>, IndexError> {
        let mut args = vec![Value::Bytes(self.names.prefix().clone())];
        if let Some(found) = self.rules.as_ref().and_then(|r| r.match_key(key)) {
            args.extend(found.tags.into_iter().map(Value::Bytes));
        }
        let reply: Value = self
            .client
            .fcall_ro(
                "cachet_tags",
                vec![Key::from(key.clone()), Key::from(self.names.key_tags(key))],
                args,
            )
            .await?;
        let mut tags = byte_strings("cachet_tags", &reply)?;
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// One page of a tag's keys (`TAGKEYS tag cursor count`): the next cursor (0 at the end)
    /// and the keys of the page that exist. ZSCAN's guarantee holds: a key tagged for the whole
    /// iteration is returned at least once. The keys the tag names come on the first page.
    pub async fn tagkeys(
        &self,
        tag: &[u8],
        cursor: u64,
        count: u64,
    ) -> Result<(u64, Vec<Bytes>), IndexError> {
        self.with_library(|| self.tagkeys_once(tag, cursor, count))
            .await
    }

    async fn tagkeys_once(
        &self,
        tag: &[u8],
        cursor: u64,
        count: u64,
    ) -> Result<(u64, Vec<Bytes>), IndexError> {
        if self.cluster {
            return self.tagkeys_cluster(tag, cursor, count).await;
        }
        let mut keys = vec![Key::from(self.names.tag_keys(tag))];
        if cursor == 0 {
            keys.extend(self.keys_named_by(tag).into_iter().map(Key::from));
        }
        let reply: Value = self
            .client
            .fcall_ro(
                "cachet_tagkeys",
                keys,
                vec![Value::Bytes(number(cursor)), Value::Bytes(number(count))],
            )
            .await?;
        match &reply {
            Value::Array(parts) if parts.len() == 2 => {
                let next = parts[0]
                    .as_u64()
                    .ok_or_else(|| unexpected("cachet_tagkeys", &reply))?;
                Ok((next, byte_strings("cachet_tagkeys", &parts[1])?))
            }
            _ => Err(unexpected("cachet_tagkeys", &reply)),
        }
    }

    /// Runs one write through `cachet_write` on the index's connection (TAGSET, deletes
    /// decided by policies), and returns Redis's reply to it.
    pub async fn write(&self, call: &WriteCall<'_>) -> Result<Value, IndexError> {
        if self.cluster {
            return self.write_value_cluster(call).await;
        }
        let call = self.write_call(call);
        self.with_library(|| self.fcall(&call)).await
    }

    /// Sends a `FCALL ...` vector built by [`TagIndex::write_call`].
    async fn fcall(&self, call: &[Bytes]) -> Result<Value, IndexError> {
        let args: Vec<Value> = call[1..].iter().cloned().map(Value::Bytes).collect();
        Ok(self.client.custom(cmd!("FCALL"), args).await?)
    }

    /// How many keys `tag`'s set holds (`ZCARD`): the keys tagged `t` in the index, which
    /// leaves out those the tag names.
    pub async fn tag_size(&self, tag: &[u8]) -> Result<u64, IndexError> {
        let set = self.names.tag_keys(tag);
        Ok(self
            .client
            .custom(cmd!("ZCARD"), vec![Value::Bytes(set)])
            .await?)
    }

    /// One step of the sweeper: one SCAN page (`count`) over cachet's own keys. Tag sets lose
    /// members whose key is gone, per-key sets of gone keys go, and drain sets left by an
    /// invalidation that did not finish (its cachet died) are finished. Call with cursor 0,
    /// then with the returned cursor until it is 0 again.
    #[tracing::instrument(skip_all, fields(cursor))]
    pub async fn sweep_step(
        &self,
        cursor: u64,
        count: u64,
    ) -> Result<(u64, SweepStats), IndexError> {
        if self.cluster {
            return self.sweep_step_cluster(cursor, count).await;
        }
        let reply: Value = self
            .client
            .custom(
                cmd!("SCAN"),
                vec![
                    Value::Bytes(number(cursor)),
                    Value::Bytes(Bytes::from_static(b"MATCH")),
                    Value::Bytes(self.names.scan_pattern().into()),
                    Value::Bytes(Bytes::from_static(b"COUNT")),
                    Value::Bytes(number(count)),
                ],
            )
            .await?;
        let (next, names) = match &reply {
            Value::Array(parts) if parts.len() == 2 => (
                parts[0]
                    .as_u64()
                    .ok_or_else(|| unexpected("SCAN", &reply))?,
                byte_strings("SCAN", &parts[1])?,
            ),
            _ => return Err(unexpected("SCAN", &reply)),
        };
        let mut stats = SweepStats {
            scanned: names.len(),
            ..SweepStats::default()
        };
        let mut data_keys = Vec::new();
        for name in &names {
            match name.get(self.names.prefix().len() + 1) {
                Some(b't') => stats.members_removed += self.sweep_tag_set(name).await?,
                Some(b'd') => stats.drained += self.drain(name.clone()).await?,
                Some(b'k') => {
                    if let Some(key) = self.names.parse_key_tags(name) {
                        data_keys.push(WriteKey {
                            key: name.slice_ref(key),
                            ..WriteKey::default()
                        });
                    }
                }
                _ => {}
            }
        }
        if !data_keys.is_empty() {
            let call = self.write_call(&WriteCall {
                command: &[],
                keys: &data_keys,
                protocol: Protocol::Resp2,
                explicit_ttl: true,
                allow_oom: true,
            });
            let reply = self.fcall(&call).await?;
            stats.key_sets_removed = reply
                .as_u64()
                .ok_or_else(|| unexpected("cachet_write_oom", &reply))?;
        }
        Ok((next, stats))
    }

    async fn sweep_tag_set(&self, set: &Bytes) -> Result<u64, IndexError> {
        let mut cursor = Bytes::from_static(b"0");
        let mut removed = 0;
        loop {
            let reply: Value = self
                .client
                .fcall(
                    "cachet_sweep",
                    vec![Key::from(set.clone())],
                    vec![
                        Value::Bytes(self.names.prefix().clone()),
                        Value::Bytes(cursor),
                        Value::Bytes(number(self.chunk as u64)),
                    ],
                )
                .await?;
            match &reply {
                Value::Array(parts) if parts.len() == 2 => {
                    removed += parts[1]
                        .as_u64()
                        .ok_or_else(|| unexpected("cachet_sweep", &reply))?;
                    cursor = parts[0]
                        .as_bytes()
                        .map(Bytes::copy_from_slice)
                        .ok_or_else(|| unexpected("cachet_sweep", &reply))?;
                }
                _ => return Err(unexpected("cachet_sweep", &reply)),
            }
            if &cursor[..] == b"0" {
                return Ok(removed);
            }
        }
    }
}

pub(super) fn integers<const N: usize>(
    function: &'static str,
    reply: &Value,
) -> Result<[i64; N], IndexError> {
    let Value::Array(parts) = reply else {
        return Err(unexpected(function, reply));
    };
    let values: Option<Vec<i64>> = parts.iter().map(Value::as_i64).collect();
    values
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| unexpected(function, reply))
}

pub(super) fn byte_strings(
    function: &'static str,
    reply: &Value,
) -> Result<Vec<Bytes>, IndexError> {
    match reply {
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::Bytes(b) => Ok(b.clone()),
                Value::String(s) => Ok(s.inner().clone()),
                _ => Err(unexpected(function, reply)),
            })
            .collect(),
        _ => Err(unexpected(function, reply)),
    }
}

pub(super) fn unexpected(function: &'static str, reply: &Value) -> IndexError {
    IndexError::Reply {
        function,
        reply: format!("{reply:?}"),
    }
}
