//! A cachet policy that misbehaves on request: the event's name chooses how (see README.md).
//! cachet's sandbox tests use it to prove every limit trips and the proxy keeps serving.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
});

use cachet::policy::host;
use cachet::policy::types::{FollowUp, Level, LogEntry, Name, Param, WarmRequest};

struct Misbehave;

fn field<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    event
        .fields
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value.as_str())
}

fn raw_field(event: &Event, name: &str) -> Option<Vec<u8>> {
    event
        .fields
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.raw.clone())
}

/// The well-behaved answer: the `tag`, `key` and `warm` fields as actions.
fn behave(event: &Event) -> Vec<Action> {
    let mut actions = Vec::new();
    if let Some(tag) = field(event, "tag") {
        actions.push(Action::InvalidateTag(Name::Text(tag.to_owned())));
    }
    if let Some(key) = raw_field(event, "key") {
        actions.push(Action::DeleteKey(Name::Binary(key)));
    }
    if let Some(value) = field(event, "warm") {
        actions.push(Action::Warm(WarmRequest {
            warmer: "w".to_owned(),
            params: vec![Param {
                name: "id".to_owned(),
                value: value.to_owned(),
            }],
            key: None,
        }));
    }
    actions.push(Action::Log(LogEntry {
        level: Level::Info,
        message: format!("handled {} at depth {}", event.name, event.depth),
    }));
    actions
}

impl Guest for Misbehave {
    fn on_event(event: Event) -> Result<Vec<Action>, String> {
        match event.name.as_str() {
            "misbehave.ok" => Ok(behave(&event)),
            "misbehave.tags-of" => {
                let key = raw_field(&event, "key").unwrap_or_default();
                Ok(host::key_tags(&Name::Binary(key))
                    .into_iter()
                    .map(|tag| Action::InvalidateTag(Name::Binary(tag)))
                    .collect())
            }
            "misbehave.sizes" => {
                let tag = field(&event, "tag").unwrap_or_default().to_owned();
                let key = raw_field(&event, "key").unwrap_or_default();
                let size = host::tag_size(&Name::Text(tag));
                let heat = host::key_heat(&Name::Binary(key));
                let start = host::monotonic_ns();
                let elapsed = host::monotonic_ns().saturating_sub(start);
                host::log(
                    Level::Info,
                    &format!("tag-size {size} key-heat {heat} clock {elapsed}"),
                );
                Ok(vec![Action::Log(LogEntry {
                    level: Level::Warn,
                    message: format!("size={size} heat={heat}"),
                })])
            }
            "misbehave.host-loop" => loop {
                // Host calls without end: the host-call cap stops it.
                std::hint::black_box(host::key_tags(&Name::Text("misbehave:k".to_owned())));
            },
            "misbehave.loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "misbehave.memory" => {
                // Reserved, not written: each allocation is a memory.grow, fast to the cap.
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(Vec::with_capacity(4 << 20));
                    std::hint::black_box(&hoard);
                }
            }
            "misbehave.trap" => panic!("asked to trap"),
            "misbehave.error" => Err("asked to fail".to_owned()),
            "misbehave.many" => Ok((0..5000)
                .map(|i| Action::InvalidateTag(Name::Text(format!("many:{i}"))))
                .collect()),
            "misbehave.huge" => Ok(vec![Action::InvalidateTag(Name::Text(
                "x".repeat(3 << 19),
            ))]),
            "misbehave.followup" => Ok(vec![Action::Emit(FollowUp {
                name: event.name.clone(),
                fields: vec![Param {
                    name: "depth".to_owned(),
                    value: event.depth.to_string(),
                }],
            })]),
            "misbehave.flaky" => {
                let tags = host::key_tags(&Name::Text("misbehave:broken".to_owned()));
                if tags.iter().any(|t| t == b"broken") {
                    Err("still broken".to_owned())
                } else {
                    Ok(behave(&event))
                }
            }
            other => Err(format!("unknown event {other}")),
        }
    }
}

export!(Misbehave);
