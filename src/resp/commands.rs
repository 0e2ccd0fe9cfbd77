//! The command table, learned from the upstream's `COMMAND` reply at start (and again after
//! every reconnect), so module commands are known too and nothing is hand-kept.
//!
//! cachet reads from it what decides routing: whether a command may block (it then runs on a
//! dedicated connection so it cannot stall the shared pool), and whether it writes.
//! Routing reads the `blocking` flag, so module commands are classified like built-in ones,
//! and pooled connections do not serve until the table is loaded (`crate::upstream::pool`
//! waits for it before connecting), so no blocking command reaches a shared connection
//! unrecognised.

use rustc_hash::FxHashMap;

use fred::types::Value;

/// Commands Redis 7.0 flags `may_replicate` (not shown by `COMMAND`): checked one by one
/// against a `CLIENT PAUSE ... WRITE` on 7.0.15, which postponed each of them. EVAL and FCALL
/// run at once when the script declares `no-writes` (see `session::route`).
pub const MAY_REPLICATE: &[&str] = &["eval", "evalsha", "fcall", "publish", "spublish", "pfcount"];

/// cachet's own commands (lowercase), answered by cachet and never sent to Redis as they are:
/// counted under their own names in `cachet_commands_total`.
pub const OWN_COMMANDS: &[&[u8]] = &[
    b"taginvalidate",
    b"tagset",
    b"tag",
    b"tags",
    b"tagkeys",
    b"emit",
    b"warm",
    b"policy",
];

/// What cachet knows of one command (or subcommand, named `container|sub`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandInfo {
    pub name: String,
    pub arity: i64,
    pub write: bool,
    pub readonly: bool,
    /// Flagged `blocking` by Redis: may wait for other clients' writes.
    pub blocking: bool,
    /// May replicate something though it does not write (Redis's `may_replicate`): a
    /// `CLIENT PAUSE ... WRITE` postpones it like a write. Redis hides the flag from
    /// `COMMAND`, so it is read from there if a server shows it, else from [`MAY_REPLICATE`].
    pub may_replicate: bool,
    /// Flagged `denyoom`: refused when Redis is out of memory.
    pub denyoom: bool,
    pub pubsub: bool,
    pub first_key: i64,
    pub last_key: i64,
    pub key_step: i64,
}

impl CommandInfo {
    /// Positions of the key arguments in `args` (the command name is position 0), from the
    /// first/last/step triple Redis reports. Commands whose keys depend on other arguments
    /// (`movablekeys`, e.g. EVAL) report only their fixed keys, or none.
    pub fn key_positions(&self, argc: usize) -> impl Iterator<Item = usize> {
        let first = self.first_key.max(0) as usize;
        let last = match self.last_key {
            n if n < 0 => argc as i64 + n,
            n => n,
        };
        let step = self.key_step.max(1) as usize;
        let end = if first == 0 || last < first as i64 {
            0
        } else {
            (last as usize).min(argc.saturating_sub(1)) + 1
        };
        (first..end.max(first)).step_by(step)
    }
}

/// All commands the upstream accepts, by lowercase name.
#[derive(Debug, Clone, Default)]
pub struct CommandTable {
    /// Looked up for every command: FxHash, as the keys are short and not attacker-chosen
    /// (they come from Redis's COMMAND reply).
    commands: FxHashMap<Box<[u8]>, CommandInfo>,
}

impl CommandTable {
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Looks a command up by its name as the client sent it (any case).
    pub fn get(&self, name: &[u8]) -> Option<&CommandInfo> {
        let mut scratch = [0u8; 64];
        let lower = super::lowercase_name(name, &mut scratch)?;
        self.commands.get(lower)
    }

    /// Parses the reply to `COMMAND` (RESP2 or RESP3 shape, as fred returns it).
    pub fn from_command_reply(reply: &Value) -> Result<Self, String> {
        let Value::Array(entries) = reply else {
            return Err(format!("COMMAND replied {reply:?}, not an array"));
        };
        let mut commands =
            FxHashMap::with_capacity_and_hasher(entries.len() * 2, Default::default());
        for entry in entries {
            let info = parse_entry(entry)?;
            if let Value::Array(fields) = entry
                && let Some(Value::Array(subs)) = fields.get(9)
            {
                for sub in subs {
                    let sub = parse_entry(sub)?;
                    commands.insert(sub.name.clone().into_bytes().into(), sub);
                }
            }
            commands.insert(info.name.clone().into_bytes().into(), info);
        }
        if commands.is_empty() {
            return Err("COMMAND replied an empty table".into());
        }
        Ok(CommandTable { commands })
    }
}

/// A table of the given commands (tests build small ones).
impl FromIterator<CommandInfo> for CommandTable {
    fn from_iter<I: IntoIterator<Item = CommandInfo>>(infos: I) -> Self {
        let commands = infos
            .into_iter()
            .map(|info| (info.name.clone().into_bytes().into(), info))
            .collect();
        CommandTable { commands }
    }
}

fn parse_entry(entry: &Value) -> Result<CommandInfo, String> {
    let Value::Array(fields) = entry else {
        return Err(format!("COMMAND entry {entry:?} is not an array"));
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_string).unwrap_or_default();
    let int = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or_default();
    let name = text(fields.first()).to_ascii_lowercase();
    if name.is_empty() {
        return Err(format!("COMMAND entry without a name: {entry:?}"));
    }
    let flags: Vec<String> = match fields.get(2) {
        Some(Value::Array(flags)) => flags.iter().filter_map(Value::as_string).collect(),
        _ => Vec::new(),
    };
    let has = |flag: &str| flags.iter().any(|f| f.eq_ignore_ascii_case(flag));
    Ok(CommandInfo {
        arity: int(fields.get(1)),
        write: has("write"),
        readonly: has("readonly"),
        blocking: has("blocking"),
        may_replicate: has("may_replicate") || MAY_REPLICATE.contains(&name.as_str()),
        denyoom: has("denyoom"),
        pubsub: has("pubsub"),
        first_key: int(fields.get(3)),
        last_key: int(fields.get(4)),
        key_step: int(fields.get(5)),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, flags: &[&str]) -> Value {
        Value::Array(vec![
            Value::from(name),
            Value::Integer(-2),
            Value::Array(flags.iter().map(|f| Value::from(*f)).collect()),
            Value::Integer(1),
            Value::Integer(1),
            Value::Integer(1),
        ])
    }

    #[test]
    fn key_positions_follow_first_last_step() {
        let mset = CommandInfo {
            first_key: 1,
            last_key: -1,
            key_step: 2,
            ..CommandInfo::default()
        };
        assert_eq!(mset.key_positions(5).collect::<Vec<_>>(), vec![1, 3]);
        let set = CommandInfo {
            first_key: 1,
            last_key: 1,
            key_step: 1,
            ..CommandInfo::default()
        };
        assert_eq!(set.key_positions(3).collect::<Vec<_>>(), vec![1]);
        assert_eq!(set.key_positions(1).count(), 0, "no key argument sent");
        let eval = CommandInfo::default();
        assert_eq!(eval.key_positions(4).count(), 0);
    }

    #[test]
    fn lookups_ignore_case_and_keep_flags() {
        let table = CommandTable::from_command_reply(&Value::Array(vec![
            entry("blpop", &["write", "blocking"]),
            entry("get", &["readonly", "fast"]),
            entry("publish", &["pubsub", "fast"]),
            entry("lolwut", &["readonly", "may_replicate"]),
        ]))
        .unwrap();
        assert!(table.get(b"BLPOP").unwrap().blocking);
        assert!(table.get(b"Get").unwrap().readonly);
        assert!(table.get(b"nope").is_none());
        assert!(!table.get(b"get").unwrap().may_replicate);
        assert!(
            table.get(b"publish").unwrap().may_replicate,
            "hidden: from the list"
        );
        assert!(
            table.get(b"lolwut").unwrap().may_replicate,
            "shown: from the flag"
        );
    }
}
