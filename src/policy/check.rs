//! `cachet policy check FILE.wasm`: what cachet will say about a component before it is
//! deployed: its imports and exports, whether it loads, and the actions it returns for a
//! sample event (host imports answer as for an empty cache).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use super::engine::{Action, Host, Name, Offline, Shape};
use crate::config::PolicyConfig;

/// The event checked when none is named: the original system's `sessionCreated`.
pub const SAMPLE_EVENT: &str = "session.created";
pub const SAMPLE_FIELDS: [(&str, &str); 3] =
    [("sessionId", "42"), ("teacherId", "123"), ("schoolId", "7")];

/// What a check found.
pub struct Report {
    pub shape: Option<Shape>,
    /// Why cachet would refuse the component, if it would.
    pub refused: Option<String>,
    pub event: super::engine::Event,
    /// The sample call's result, when the component loaded.
    pub result: Option<Result<Vec<Action>, super::CallError>>,
}

/// Loads `path` as cachet would (default limits, or another call deadline) and runs one
/// event through it.
pub fn check(
    path: &Path,
    event: &str,
    fields: &[(String, String)],
    timeout_ms: Option<u64>,
) -> Result<Report, String> {
    Ok(Checker::load(path, timeout_ms)?.run(event, fields))
}

/// A component loaded once, as cachet would load it, to run several events through (a large
/// component takes seconds to compile).
pub struct Checker {
    /// Kept for its epoch ticker, which enforces the call deadline.
    _host: Host,
    shape: Option<Shape>,
    loaded: Result<super::Module, String>,
}

impl Checker {
    /// Reads and compiles `path` with the default limits (or another call deadline). An
    /// error only when the file cannot be read; a component cachet refuses is a
    /// [`Report::refused`] of every run.
    pub fn load(path: &Path, timeout_ms: Option<u64>) -> Result<Checker, String> {
        let host = Host::new(false)?;
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let timeout = timeout_ms.map_or(String::new(), |ms| format!("timeout_ms = {ms}\n"));
        let config: PolicyConfig = toml::from_str(&format!(
            "name = \"check\"\nmodule = {:?}\nevents = [\"*\"]\n{timeout}",
            path.display().to_string()
        ))
        .map_err(|e| e.to_string())?;
        let shape = wasmtime::component::Component::new(host.engine(), &bytes)
            .ok()
            .map(|component| host.shape(&component));
        let loaded = host
            .compile(&path.display().to_string(), &bytes)
            .map(|compiled| {
                super::Module::new(
                    &host,
                    &config.name,
                    compiled,
                    super::engine::Limits::from_config(&config),
                )
            })
            .map_err(|error| error.to_string());
        Ok(Checker {
            _host: host,
            shape,
            loaded,
        })
    }

    /// Runs one event through the component (host imports answer as for an empty cache).
    pub fn run(&self, event: &str, fields: &[(String, String)]) -> Report {
        let event = super::engine::client_event(
            event.to_owned(),
            fields
                .iter()
                .map(|(n, v)| (n.clone(), Bytes::from(v.clone())))
                .collect(),
        );
        let (refused, result) = match &self.loaded {
            Err(error) => (Some(error.clone()), None),
            Ok(module) => (None, Some(module.call(&event, Arc::new(Offline)))),
        };
        Report {
            shape: self.shape.clone(),
            refused,
            event,
            result,
        }
    }
}

fn name_json(name: &Name) -> Value {
    let bytes = match name {
        Name::Text(text) => return json!(text),
        Name::Binary(bytes) => bytes,
    };
    match std::str::from_utf8(bytes) {
        Ok(text) => json!(text),
        Err(_) => json!({ "hex": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() }),
    }
}

/// One action as JSON; a name is its text when it is UTF-8 (`text("a")` and `binary([97])`
/// print alike), so policies in different languages can be compared.
pub fn action_json(action: &Action) -> Value {
    let pairs = |params: &[super::engine::bindings::cachet::policy::types::Param]| {
        Value::Array(params.iter().map(|p| json!([p.name, p.value])).collect())
    };
    match action {
        Action::InvalidateTag(name) => json!({ "invalidate-tag": name_json(name) }),
        Action::DeleteKey(name) => json!({ "delete-key": name_json(name) }),
        Action::Warm(warm) => json!({ "warm": {
            "warmer": warm.warmer,
            "params": pairs(&warm.params),
            "key": warm.key.as_ref().map(name_json),
        }}),
        Action::Emit(follow) => json!({ "emit": {
            "name": follow.name,
            "fields": pairs(&follow.fields),
        }}),
        Action::Log(entry) => json!({ "log": {
            "level": format!("{:?}", entry.level).to_lowercase(),
            "message": entry.message,
        }}),
    }
}

impl Report {
    /// Whether cachet would load the component and the sample call succeeded.
    pub fn passed(&self) -> bool {
        self.refused.is_none() && matches!(self.result, Some(Ok(_)))
    }

    /// The whole report as one JSON document.
    pub fn json(&self) -> Value {
        let event = json!({
            "name": self.event.name,
            "fields": self.event.fields.iter().map(|f| json!([f.name, f.value])).collect::<Vec<_>>(),
        });
        let mut doc = json!({
            "imports": self.shape.as_ref().map(|s| s.imports.clone()),
            "exports": self.shape.as_ref().map(|s| s.exports.clone()),
            "loadable": self.refused.is_none(),
            "event": event,
        });
        if let Some(refused) = &self.refused {
            doc["refused"] = json!(refused);
        }
        match &self.result {
            Some(Ok(actions)) => {
                doc["actions"] = Value::Array(actions.iter().map(action_json).collect())
            }
            Some(Err(error)) => {
                doc["error"] = json!({ "kind": error.kind(), "message": error.to_string() })
            }
            None => {}
        }
        doc
    }

    /// The report for a person.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if let Some(shape) = &self.shape {
            out += &format!("imports: {}\n", list(&shape.imports));
            out += &format!("exports: {}\n", list(&shape.exports));
        }
        match &self.refused {
            Some(reason) => out += &format!("cachet would refuse it: {reason}\n"),
            None => out += "cachet would load it\n",
        }
        let fields: Vec<String> = self
            .event
            .fields
            .iter()
            .map(|f| format!("{} {}", f.name, f.value))
            .collect();
        match &self.result {
            Some(Ok(actions)) => {
                out += &format!(
                    "event {} {}: {} action(s)\n",
                    self.event.name,
                    fields.join(" "),
                    actions.len()
                );
                for action in actions {
                    out += &format!("  {}\n", action_json(action));
                }
            }
            Some(Err(error)) => {
                out += &format!(
                    "event {} {}: failed ({}): {error}\n",
                    self.event.name,
                    fields.join(" "),
                    error.kind()
                )
            }
            None => {}
        }
        out
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}
