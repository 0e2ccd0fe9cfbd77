//! The ClassWaves sessions policy: the original system's CacheEventBus events mapped to the tags
//! of `examples/cachet.toml`'s rules and to warm requests.
//!
//! | event | required fields | actions, in order |
//! |---|---|---|
//! | `session.created` | sessionId, teacherId (schoolId optional) | invalidate `teacher:{teacherId}`, `school-sessions:{schoolId}`; warm `teacher-sessions` |
//! | `session.updated` | sessionId, teacherId (schoolId optional) | invalidate `session:{sessionId}`, `teacher:{teacherId}`, `school-sessions:{schoolId}`; warm `session-detail`, `teacher-sessions` |
//! | `session.ended` | sessionId, teacherId (schoolId optional) | invalidate as `session.updated`; warm `teacher-sessions` |
//! | `user.updated` | userId | invalidate `user:{userId}` |
//! | `roster.changed` | schoolId, sessionId | invalidate `roster:{schoolId}:{sessionId}` |
//! | `school.updated` | schoolId | invalidate `school:{schoolId}`, `school-sessions:{schoolId}` |
//!
//! A field named twice counts by its first occurrence. A missing required field is an error
//! (`session.created needs field teacherId`); an event this policy does not know gives no
//! actions. The JavaScript (`../sessions-js`) and Python (`../sessions-py`) policies give the
//! same actions in the same order for every event: keep the three in step.

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use cachet::policy::types::{Field, Name, Param, WarmRequest};

struct Sessions;

impl Guest for Sessions {
    fn on_event(event: Event) -> Result<Vec<Action>, String> {
        let fields = Fields(&event);
        let mut actions = Vec::with_capacity(5);
        match event.name.as_str() {
            "session.created" => {
                fields.required("sessionId")?;
                let teacher = fields.required("teacherId")?;
                let school = fields.optional("schoolId");
                actions.push(invalidate(&[Lit("teacher:"), Val(teacher)]));
                if let Some(school) = school {
                    actions.push(invalidate(&[Lit("school-sessions:"), Val(school)]));
                }
                actions.push(warm_teacher_sessions(teacher));
            }
            "session.updated" | "session.ended" => {
                let session = fields.required("sessionId")?;
                let teacher = fields.required("teacherId")?;
                let school = fields.optional("schoolId");
                actions.push(invalidate(&[Lit("session:"), Val(session)]));
                actions.push(invalidate(&[Lit("teacher:"), Val(teacher)]));
                if let Some(school) = school {
                    actions.push(invalidate(&[Lit("school-sessions:"), Val(school)]));
                }
                if event.name == "session.updated" {
                    actions.push(warm(
                        "session-detail",
                        "sessionId",
                        session,
                        &[Lit("session:"), Val(session)],
                    ));
                }
                actions.push(warm_teacher_sessions(teacher));
            }
            "user.updated" => {
                let user = fields.required("userId")?;
                actions.push(invalidate(&[Lit("user:"), Val(user)]));
            }
            "roster.changed" => {
                let school = fields.required("schoolId")?;
                let session = fields.required("sessionId")?;
                actions.push(invalidate(&[
                    Lit("roster:"),
                    Val(school),
                    Lit(":"),
                    Val(session),
                ]));
            }
            "school.updated" => {
                let school = fields.required("schoolId")?;
                actions.push(invalidate(&[Lit("school:"), Val(school)]));
                actions.push(invalidate(&[Lit("school-sessions:"), Val(school)]));
            }
            _ => {}
        }
        Ok(actions)
    }
}

export!(Sessions);

/// An event's fields, looked up by name.
struct Fields<'a>(&'a Event);

impl<'a> Fields<'a> {
    fn optional(&self, name: &str) -> Option<&'a Field> {
        self.0.fields.iter().find(|field| field.name == name)
    }

    fn required(&self, name: &str) -> Result<&'a Field, String> {
        self.optional(name)
            .ok_or_else(|| format!("{} needs field {}", self.0.name, name))
    }
}

/// One piece of a tag or key: literal text or a field's value.
enum Piece<'a> {
    Lit(&'static str),
    Val(&'a Field),
}

use Piece::{Lit, Val};

/// Joins the pieces into a name: `text` when every value is UTF-8 as sent, else `binary` from
/// the raw bytes (Redis keys need not be UTF-8, and the lossy `value` would name another key).
fn name(pieces: &[Piece]) -> Name {
    let all_text = pieces.iter().all(|piece| match piece {
        Lit(_) => true,
        Val(field) => std::str::from_utf8(&field.raw).is_ok(),
    });
    if all_text {
        let mut text = String::new();
        for piece in pieces {
            text.push_str(match piece {
                Lit(lit) => lit,
                Val(field) => &field.value,
            });
        }
        Name::Text(text)
    } else {
        let mut bytes = Vec::new();
        for piece in pieces {
            bytes.extend_from_slice(match piece {
                Lit(lit) => lit.as_bytes(),
                Val(field) => &field.raw,
            });
        }
        Name::Binary(bytes)
    }
}

fn invalidate(pieces: &[Piece]) -> Action {
    Action::InvalidateTag(name(pieces))
}

/// A warm request for `warmer` with one parameter, about the key the pieces name.
fn warm(warmer: &str, param: &str, value: &Field, key: &[Piece]) -> Action {
    Action::Warm(WarmRequest {
        warmer: warmer.to_string(),
        params: vec![Param {
            name: param.to_string(),
            value: value.value.clone(),
        }],
        key: Some(name(key)),
    })
}

fn warm_teacher_sessions(teacher: &Field) -> Action {
    warm(
        "teacher-sessions",
        "teacherId",
        teacher,
        &[Lit("sessions:teacher:"), Val(teacher)],
    )
}
