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

/// One of cachet's own commands as `COMMAND` describes it to clients, in Redis 7's terms
/// (`COMMAND INFO`, `COMMAND DOCS`; encoded by `crate::session`'s COMMAND handler). They are
/// described as a module's commands would be: the `module` flag, the docs group `module` and
/// the module name `cachet`, so `COMMAND LIST FILTERBY MODULE cachet` lists them. Every one
/// also has `noscript` and `no_multi`: a script cannot reach cachet, and cachet refuses them
/// inside MULTI (`session::route::gate`).
#[derive(Debug)]
pub struct OwnCommand {
    /// Lowercase; a subcommand is `container|sub`.
    pub name: &'static str,
    pub arity: i64,
    pub flags: &'static [&'static str],
    /// With their `@`, as Redis shows them.
    pub acl_categories: &'static [&'static str],
    pub tips: &'static [&'static str],
    /// The one key argument, if the command has one (none of cachet's has more).
    pub key: Option<OwnKey>,
    pub summary: &'static str,
    pub complexity: &'static str,
    pub arguments: &'static [OwnArg],
    pub subcommands: &'static [OwnCommand],
}

/// A key argument at a fixed position (a key spec `begin_search: index`, `find_keys: range`
/// of one key).
#[derive(Debug, Clone, Copy)]
pub struct OwnKey {
    pub index: i64,
    /// Redis's key spec flags: `RO`/`RW`/`OW`, then `access`, `update`, ...
    pub flags: &'static [&'static str],
}

/// One argument of `COMMAND DOCS`'s `arguments`.
#[derive(Debug)]
pub struct OwnArg {
    pub name: &'static str,
    /// `key`, `string`, `integer`, `pure-token`, `oneof` or `block`.
    pub kind: &'static str,
    pub token: Option<&'static str>,
    pub optional: bool,
    pub multiple: bool,
    /// For a `oneof` or `block`.
    pub arguments: &'static [OwnArg],
}

impl OwnArg {
    const fn new(name: &'static str, kind: &'static str) -> Self {
        OwnArg {
            name,
            kind,
            token: None,
            optional: false,
            multiple: false,
            arguments: &[],
        }
    }

    const fn token(mut self, token: &'static str) -> Self {
        self.token = Some(token);
        self
    }

    const fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    const fn multiple(mut self) -> Self {
        self.multiple = true;
        self
    }

    const fn of(mut self, arguments: &'static [OwnArg]) -> Self {
        self.arguments = arguments;
        self
    }
}

impl OwnCommand {
    /// `(first key, last key, step)`, as `COMMAND INFO` shows them.
    pub fn key_range(&self) -> (i64, i64, i64) {
        match self.key {
            Some(key) => (key.index, key.index, 1),
            None => (0, 0, 0),
        }
    }

    /// This command or one of its subcommands, by `name` or `container|sub` (any case).
    pub fn find(name: &[u8]) -> Option<&'static OwnCommand> {
        OWN.iter()
            .flat_map(|c| std::iter::once(c).chain(c.subcommands))
            .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
    }
}

const OWN_BASE: OwnCommand = OwnCommand {
    name: "",
    arity: -2,
    flags: &["noscript", "no_multi", "module"],
    acl_categories: &["@slow"],
    tips: &[],
    key: None,
    summary: "",
    complexity: "",
    arguments: &[],
    subcommands: &[],
};

/// cachet's own commands as `COMMAND` describes them, in [`OWN_COMMANDS`]' order. Key
/// positions are the syntaxes `session::tagging`, `session::policy` and `session::warm`
/// parse: only TAGSET, TAG and TAGS name a key; tags, events, warmers and WARM's `KEY` (whose
/// read heat cachet counts, nothing read at Redis) are not keys.
pub const OWN: &[OwnCommand] = &[
    OwnCommand {
        name: "taginvalidate",
        flags: &["write", "noscript", "no_multi", "module"],
        acl_categories: &["@write", "@keyspace", "@slow"],
        summary: "Deletes every key that carries any of the tags",
        complexity: "O(N) where N is the number of keys carrying the tags",
        arguments: &[OwnArg::new("tag", "string").multiple()],
        ..OWN_BASE
    },
    OwnCommand {
        name: "tagset",
        arity: -5,
        flags: &["write", "denyoom", "noscript", "no_multi", "module"],
        acl_categories: &["@write", "@string", "@slow"],
        key: Some(OwnKey {
            index: 1,
            flags: &["OW", "update"],
        }),
        summary: "Sets the string value of a key and tags it, in one atomic step",
        complexity: "O(N) where N is the number of tags",
        arguments: &[
            OwnArg::new("key", "key"),
            OwnArg::new("value", "string"),
            OwnArg::new("expiration", "oneof").optional().of(&[
                OwnArg::new("seconds", "integer").token("EX"),
                OwnArg::new("milliseconds", "integer").token("PX"),
                OwnArg::new("keepttl", "pure-token").token("KEEPTTL"),
            ]),
            OwnArg::new("class", "string").token("TTLCLASS").optional(),
            OwnArg::new("tag", "string").token("TAGS").multiple(),
        ],
        ..OWN_BASE
    },
    OwnCommand {
        name: "tag",
        arity: -3,
        flags: &["write", "noscript", "no_multi", "module"],
        acl_categories: &["@write", "@keyspace", "@slow"],
        key: Some(OwnKey {
            index: 1,
            flags: &["RO"],
        }),
        summary: "Attaches tags to an existing key",
        complexity: "O(N) where N is the number of tags",
        arguments: &[
            OwnArg::new("key", "key"),
            OwnArg::new("tag", "string").multiple(),
        ],
        ..OWN_BASE
    },
    OwnCommand {
        name: "tags",
        arity: 2,
        flags: &["readonly", "noscript", "no_multi", "module"],
        acl_categories: &["@read", "@keyspace", "@slow"],
        tips: &["nondeterministic_output_order"],
        key: Some(OwnKey {
            index: 1,
            flags: &["RO"],
        }),
        summary: "Returns the tags of a key",
        complexity: "O(N) where N is the number of tags of the key",
        arguments: &[OwnArg::new("key", "key")],
        ..OWN_BASE
    },
    OwnCommand {
        name: "tagkeys",
        flags: &["readonly", "noscript", "no_multi", "module"],
        acl_categories: &["@read", "@keyspace", "@slow"],
        tips: &["nondeterministic_output"],
        summary: "Returns a page of the keys that carry a tag, with a cursor, like SCAN",
        complexity: "O(N) where N is COUNT",
        arguments: &[
            OwnArg::new("tag", "string"),
            OwnArg::new("cursor", "integer").token("CURSOR").optional(),
            OwnArg::new("count", "integer").token("COUNT").optional(),
        ],
        ..OWN_BASE
    },
    OwnCommand {
        name: "emit",
        flags: &["write", "noscript", "no_multi", "module"],
        acl_categories: &["@write", "@slow"],
        tips: &["nondeterministic_output"],
        summary: "Sends a domain event to the policies that subscribe to it and applies what they decide",
        complexity: "Depends on the policies that run",
        arguments: &[
            OwnArg::new("event", "string"),
            OwnArg::new("data", "block").optional().multiple().of(&[
                OwnArg::new("field", "string"),
                OwnArg::new("value", "string"),
            ]),
        ],
        ..OWN_BASE
    },
    OwnCommand {
        name: "warm",
        tips: &["nondeterministic_output"],
        summary: "Asks a warmer to recompute an entry",
        complexity: "O(N) where N is the number of parameters",
        arguments: &[
            OwnArg::new("warmer", "string"),
            OwnArg::new("params", "block").optional().multiple().of(&[
                OwnArg::new("param", "string"),
                OwnArg::new("value", "string"),
            ]),
            OwnArg::new("key", "string").token("KEY").optional(),
        ],
        ..OWN_BASE
    },
    OwnCommand {
        name: "policy",
        // A container, as Redis shows CONFIG or CLIENT.
        flags: &[],
        summary: "A container for policy commands",
        complexity: "Depends on subcommand.",
        subcommands: &[
            OwnCommand {
                name: "policy|list",
                arity: 2,
                tips: &["nondeterministic_output"],
                summary: "Lists the loaded policies with their digest, calls, errors and call times",
                complexity: "O(N) where N is the number of policies",
                ..OWN_BASE
            },
            OwnCommand {
                name: "policy|reload",
                flags: &["admin", "noscript", "no_multi", "module"],
                acl_categories: &["@admin", "@slow", "@dangerous"],
                summary: "Compiles and checks policy modules again and swaps them in",
                complexity: "O(N) where N is the number of policies",
                arguments: &[OwnArg::new("name", "string").optional()],
                ..OWN_BASE
            },
            OwnCommand {
                name: "policy|replay",
                flags: &["admin", "write", "noscript", "no_multi", "module"],
                acl_categories: &["@admin", "@write", "@slow", "@dangerous"],
                summary: "Runs dead-lettered events again",
                complexity: "O(N) where N is COUNT",
                arguments: &[
                    OwnArg::new("name", "string").optional(),
                    OwnArg::new("count", "integer").token("COUNT").optional(),
                ],
                ..OWN_BASE
            },
        ],
        ..OWN_BASE
    },
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
    fn own_commands_are_described_once_each() {
        let described: Vec<&[u8]> = OWN.iter().map(|c| c.name.as_bytes()).collect();
        assert_eq!(described, OWN_COMMANDS);
        for command in OWN
            .iter()
            .flat_map(|c| std::iter::once(c).chain(c.subcommands))
        {
            assert!(!command.summary.is_empty(), "{}", command.name);
            assert_eq!(
                OwnCommand::find(command.name.as_bytes()).unwrap().name,
                command.name
            );
            let keys = command.arguments.iter().filter(|a| a.kind == "key").count();
            assert_eq!(keys, command.key.iter().count(), "{}", command.name);
        }
        assert_eq!(OwnCommand::find(b"POLICY|List").unwrap().arity, 2);
        assert_eq!(OwnCommand::find(b"TagSet").unwrap().key_range(), (1, 1, 1));
        assert_eq!(OwnCommand::find(b"emit").unwrap().key_range(), (0, 0, 0));
        assert!(OwnCommand::find(b"get").is_none());
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
