//! `COMMAND` through cachet holds cachet's own commands, with their key positions, in RESP2
//! and RESP3, next to Redis's entries unchanged (`src/session/command.rs`).

mod support;

use support::resp::Value;
use support::{Proxy, RawClient, RedisServer, fred_client};

const OWN: usize = 8;
const OWN_WITH_SUBCOMMANDS: usize = 11;

async fn client(addr: std::net::SocketAddr, resp3: bool) -> RawClient {
    let mut c = RawClient::connect(addr).await.expect("connect");
    if resp3 {
        let hello = c.command(&["HELLO", "3"]).await.unwrap();
        assert_eq!(hello[0], b'%');
    }
    c
}

async fn value(c: &mut RawClient, args: &[&str]) -> Value {
    Value::parse(&c.command(args).await.expect("reply"))
}

fn text(v: &Value) -> String {
    String::from_utf8_lossy(v.bytes()).into_owned()
}

/// A COMMAND INFO entry's name and (first, last, step).
fn keys_of(entry: &Value) -> (String, (i64, i64, i64)) {
    let e = entry.items();
    assert_eq!(e.len(), 10, "{entry:?}");
    (text(&e[0]), (e[3].int(), e[4].int(), e[5].int()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_replies_hold_cachets_commands_in_both_protocols() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    for resp3 in [false, true] {
        let mut direct = client(redis.addr(), resp3).await;
        let mut through = client(proxy.addr, resp3).await;
        let count = |v: Value| v.int();
        assert_eq!(
            count(value(&mut through, &["COMMAND", "COUNT"]).await),
            count(value(&mut direct, &["COMMAND", "COUNT"]).await) + OWN as i64
        );

        // COMMAND INFO: Redis's entries byte for byte, cachet's in place of the nils.
        let redis_get = direct.command(&["COMMAND", "INFO", "get"]).await.unwrap();
        let info = value(
            &mut through,
            &[
                "COMMAND",
                "INFO",
                "get",
                "TagSet",
                "nosuch",
                "tags",
                "policy|list",
            ],
        )
        .await;
        let entries = info.items();
        assert_eq!(entries.len(), 5);
        assert_eq!(Value::parse(&redis_get).items()[0], entries[0]);
        assert_eq!(keys_of(&entries[1]), ("tagset".into(), (1, 1, 1)));
        assert_eq!(entries[2], Value::Nil);
        assert_eq!(keys_of(&entries[3]), ("tags".into(), (1, 1, 1)));
        assert_eq!(keys_of(&entries[4]), ("policy|list".into(), (0, 0, 0)));
        let tagset = entries[1].items();
        assert_eq!(tagset[1].int(), -5);
        let flags: Vec<String> = tagset[2].items().iter().map(text).collect();
        assert!(
            flags.contains(&"write".into()) && flags.contains(&"module".into()),
            "{flags:?}"
        );

        // COMMAND and COMMAND INFO with no names: every entry, cachet's last.
        for args in [&["COMMAND"][..], &["COMMAND", "INFO"]] {
            let all = value(&mut through, args).await;
            let redis_all = value(&mut direct, args).await;
            assert_eq!(all.items().len(), redis_all.items().len() + OWN);
            let ours: Vec<(String, (i64, i64, i64))> = all.items()[redis_all.items().len()..]
                .iter()
                .map(keys_of)
                .collect();
            let positions: Vec<(&str, (i64, i64, i64))> =
                ours.iter().map(|(n, k)| (n.as_str(), *k)).collect();
            assert_eq!(
                positions,
                [
                    ("taginvalidate", (0, 0, 0)),
                    ("tagset", (1, 1, 1)),
                    ("tag", (1, 1, 1)),
                    ("tags", (1, 1, 1)),
                    ("tagkeys", (0, 0, 0)),
                    ("emit", (0, 0, 0)),
                    ("warm", (0, 0, 0)),
                    ("policy", (0, 0, 0)),
                ]
            );
        }

        let list = value(&mut through, &["COMMAND", "LIST"]).await;
        let redis_list = value(&mut direct, &["COMMAND", "LIST"]).await;
        assert_eq!(
            list.items().len(),
            redis_list.items().len() + OWN_WITH_SUBCOMMANDS
        );
        let names: Vec<String> = list.items().iter().map(text).collect();
        assert!(names.contains(&"policy|replay".into()) && names.contains(&"get".into()));
        let filtered = value(
            &mut through,
            &["COMMAND", "LIST", "FILTERBY", "ACLCAT", "read"],
        )
        .await;
        let names: Vec<String> = filtered.items().iter().map(text).collect();
        assert!(names.contains(&"tags".into()) && names.contains(&"get".into()));
        assert!(!names.contains(&"tagset".into()));

        // COMMAND DOCS: a map (flat in RESP2) of name to docs.
        let docs = value(&mut through, &["COMMAND", "DOCS", "get", "tagkeys"]).await;
        let docs: Vec<String> = docs.items().iter().step_by(2).map(text).collect();
        assert_eq!(docs, ["get", "tagkeys"]);

        // GETKEYS: the key positions above, Redis's wording for refusals.
        let getkeys = |args: &[&str]| {
            let mut all = vec!["COMMAND", "GETKEYS"];
            all.extend(args);
            all.into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        for (args, expected) in [
            (
                &["TAGSET", "k1", "v", "EX", "5", "TAGS", "a", "b"][..],
                "k1",
            ),
            (&["tag", "k2", "a"], "k2"),
            (&["TAGS", "k3"], "k3"),
        ] {
            let got = value(
                &mut through,
                &getkeys(args).iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .await;
            assert_eq!(got.strings(), [expected.as_bytes().to_vec()], "{args:?}");
        }
        for (args, error) in [
            (
                &["TAGINVALIDATE", "t"][..],
                "ERR The command has no key arguments",
            ),
            (&["EMIT", "e"], "ERR The command has no key arguments"),
            (
                &["TAGSET", "k", "v"],
                "ERR Invalid number of arguments specified for command",
            ),
            (&["POLICY", "NOPE"], "ERR Invalid command specified"),
        ] {
            let got = value(
                &mut through,
                &getkeys(args).iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .await;
            assert_eq!(got, Value::Error(error.into()), "{args:?}");
        }
        let flags = through
            .command(&[
                "COMMAND",
                "GETKEYSANDFLAGS",
                "TAGSET",
                "k",
                "v",
                "TAGS",
                "t",
            ])
            .await
            .unwrap();
        let set = if resp3 { "~" } else { "*" };
        assert_eq!(
            String::from_utf8_lossy(&flags),
            format!("*1\r\n*2\r\n$1\r\nk\r\n{set}2\r\n+OW\r\n+update\r\n")
        );
        // Redis's own commands: Redis's answer.
        let mset = ["COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2"];
        assert_eq!(
            through.command(&mset).await.unwrap(),
            direct.command(&mset).await.unwrap()
        );
    }
}

/// A real client parses the entries and gets the keys: fred, in RESP2 and RESP3 (where, as
/// against Redis, it cannot read entries with key specs: a set of maps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_reads_cachets_command_entries() {
    use fred::prelude::*;
    use fred::types::{ClusterHash, CustomCommand};
    let redis = RedisServer::start();
    let proxy = Proxy::start(&redis.url()).await;
    for resp3 in [false, true] {
        let client = fred_client(&proxy.url(), resp3).await;
        let command = CustomCommand::new_static("COMMAND", ClusterHash::Random, false);
        let keys: Vec<String> = client
            .custom(command.clone(), vec!["GETKEYS", "TAG", "session:1", "demo"])
            .await
            .unwrap();
        assert_eq!(keys, ["session:1"]);
        // fred cannot build a RESP3 set of maps (key specs) at all, Redis's own included.
        let names = match resp3 {
            false => vec!["INFO", "TAGSET", "POLICY"],
            true => vec!["INFO", "WARM", "POLICY"],
        };
        let info: fred::types::Value = client.custom(command.clone(), names).await.unwrap();
        let fred::types::Value::Array(entries) = info else {
            panic!("{info:?}");
        };
        assert_eq!(entries.len(), 2);
        let fred::types::Value::Array(policy) = &entries[1] else {
            panic!("{entries:?}");
        };
        let fred::types::Value::Array(subcommands) = &policy[9] else {
            panic!("{policy:?}");
        };
        assert_eq!(subcommands.len(), 3, "POLICY LIST, RELOAD, REPLAY");
        if resp3 {
            let direct = fred_client(&redis.url(), true).await;
            let redis_get: Result<fred::types::Value, _> =
                direct.custom(command.clone(), vec!["INFO", "GET"]).await;
            let error = redis_get.expect_err("fred decodes Redis's key specs in RESP3 now");
            assert!(error.details().contains("Invalid hash key"), "{error:?}");
            direct.quit().await.unwrap();
        }
        let docs: fred::types::Value = client
            .custom(command, vec!["DOCS", "TAGSET"])
            .await
            .unwrap();
        assert!(format!("{docs:?}").contains("TTLCLASS"), "{docs:?}");
        client.quit().await.unwrap();
    }
}
