//! The {{name}} policy: decides what an event means for the cache. cachet calls `on_event` for
//! every event this policy's `[[policies]]` entry subscribes to and applies the actions it
//! returns, once, after the call succeeded. The contract, every type documented, is
//! `wit/policy.wit`; the guide is cachet's docs/POLICIES.md.
//!
//! Try it: `cachet policy build .` then `cachet policy check {{file}}.wasm`.

wit_bindgen::generate!({ path: "wit", world: "policy" });

use cachet::policy::types::Name;

struct Policy;

impl Guest for Policy {
    fn on_event(event: Event) -> Result<Vec<Action>, String> {
        match event.name.as_str() {
            // `EMIT session.created sessionId 42 teacherId 123`: the teacher's cached session
            // lists (the keys tagged `teacher:123`) are stale.
            "session.created" => {
                let teacher = field(&event, "teacherId")?;
                let tag = Name::Text(format!("teacher:{teacher}"));
                Ok(vec![Action::InvalidateTag(tag)])
            }
            // An event this policy does not know changes nothing.
            _ => Ok(Vec::new()),
        }
    }
}

/// The value of the event's first field called `name`. Missing, it is an error: the EMIT
/// reports it, and the event is kept in the dead-letter stream for POLICY REPLAY.
fn field<'a>(event: &'a Event, name: &str) -> Result<&'a str, String> {
    event
        .fields
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value.as_str())
        .ok_or_else(|| format!("{} needs field {name}", event.name))
}

export!(Policy);
