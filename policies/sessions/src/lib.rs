//! The ClassWaves sessions policy: the original system's CacheEventBus events mapped to the tags
//! of `examples/cachet.toml`'s rules and to warm requests.
//!
//! | event | required fields | actions, in order |
//! |---|---|---|
//! | `session.created` | sessionId, teacherId (schoolId optional) | invalidate `teacher:{teacherId}`, `school-sessions:{schoolId}`; warm `teacher-sessions`, `school-sessions` |
//! | `session.updated` | sessionId, teacherId (schoolId optional) | invalidate `session:{sessionId}`, `teacher:{teacherId}`, `school-sessions:{schoolId}`; warm `session-detail`, `teacher-sessions`, `school-sessions`, `roster` |
//! | `session.ended` | sessionId, teacherId (schoolId optional) | as `session.updated` |
//! | `user.updated` | userId (schoolId and rosterSession, repeated, optional) | invalidate `user:{userId}`, then `roster:{schoolId}:{rosterSession}` for each rosterSession; warm `user-profile`, then `roster` for each rosterSession |
//! | `roster.changed` | schoolId, sessionId | invalidate `roster:{schoolId}:{sessionId}`; warm `roster` |
//! | `school.updated` | schoolId | invalidate `school:{schoolId}`, `school-sessions:{schoolId}`; warm `school`, `school-sessions` |
//!
//! Every entry an event invalidates and the event names is warmed (the `school-sessions` and
//! `roster` warms need schoolId), so that readers find it recomputed instead of paying for the
//! recomputation; the warmers' `min_reads` in cachet's config keeps cold entries from being
//! recomputed. `session:{sessionId}` also tags the session's roster, hence its warm.
//!
//! A roster shows its students' names, so a student's rename names every session whose roster
//! lists them, one `rosterSession` field each (schoolId is then required).
//!
//! A field named twice counts by its first occurrence, except `rosterSession`. A missing required field is an error
//! (`session.created needs field teacherId`); an event this policy does not know gives no
//! actions. The JavaScript (`../sessions-js`) and Python (`../sessions-py`) policies give the
//! same actions in the same order for every event: keep the three in step.

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use cachet::policy::types::{Field, Name, Param, WarmRequest};

struct Sessions;

impl Guest for Sessions {
    fn on_event(event: Event) -> Result<Vec<Action>, String> {
        let fields = Fields(&event);
        let mut actions = Vec::with_capacity(7);
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
                if let Some(school) = school {
                    actions.push(warm_school_sessions(school));
                }
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
                actions.push(warm(
                    "session-detail",
                    &[("sessionId", session)],
                    &[Lit("session:"), Val(session)],
                ));
                actions.push(warm_teacher_sessions(teacher));
                if let Some(school) = school {
                    actions.push(warm_school_sessions(school));
                    actions.push(warm_roster(school, session));
                }
            }
            "user.updated" => {
                let user = fields.required("userId")?;
                let rosters: Vec<&Field> = fields.all("rosterSession").collect();
                // Each (schoolId, rosterSession) pair; schoolId is required only with rosters.
                let school = match rosters.is_empty() {
                    true => None,
                    false => Some(fields.required("schoolId")?),
                };
                let pairs = || {
                    school
                        .into_iter()
                        .flat_map(|s| rosters.iter().map(move |r| (s, *r)))
                };
                actions.push(invalidate(&[Lit("user:"), Val(user)]));
                for (school, session) in pairs() {
                    actions.push(invalidate(&[
                        Lit("roster:"),
                        Val(school),
                        Lit(":"),
                        Val(session),
                    ]));
                }
                actions.push(warm(
                    "user-profile",
                    &[("userId", user)],
                    &[Lit("user:"), Val(user), Lit(":profile")],
                ));
                for (school, session) in pairs() {
                    actions.push(warm_roster(school, session));
                }
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
                actions.push(warm_roster(school, session));
            }
            "school.updated" => {
                let school = fields.required("schoolId")?;
                actions.push(invalidate(&[Lit("school:"), Val(school)]));
                actions.push(invalidate(&[Lit("school-sessions:"), Val(school)]));
                actions.push(warm(
                    "school",
                    &[("schoolId", school)],
                    &[Lit("school:"), Val(school)],
                ));
                actions.push(warm_school_sessions(school));
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

    /// Every field with this name, in the order sent.
    fn all(&self, name: &'a str) -> impl Iterator<Item = &'a Field> + 'a {
        self.0.fields.iter().filter(move |field| field.name == name)
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

/// A warm request for `warmer` with these parameters, about the key the pieces name.
fn warm(warmer: &str, params: &[(&str, &Field)], key: &[Piece]) -> Action {
    Action::Warm(WarmRequest {
        warmer: warmer.to_string(),
        params: params
            .iter()
            .map(|(name, field)| Param {
                name: name.to_string(),
                value: field.value.clone(),
            })
            .collect(),
        key: Some(name(key)),
    })
}

fn warm_teacher_sessions(teacher: &Field) -> Action {
    warm(
        "teacher-sessions",
        &[("teacherId", teacher)],
        &[Lit("sessions:teacher:"), Val(teacher)],
    )
}

fn warm_school_sessions(school: &Field) -> Action {
    warm(
        "school-sessions",
        &[("schoolId", school)],
        &[Lit("sessions:school:"), Val(school)],
    )
}

fn warm_roster(school: &Field, session: &Field) -> Action {
    warm(
        "roster",
        &[("schoolId", school), ("sessionId", session)],
        &[Lit("roster:"), Val(school), Lit(":"), Val(session)],
    )
}
