// The ClassWaves sessions policy in JavaScript: the same events, fields, errors and actions, in
// the same order, as the Rust policy (../sessions/src/lib.rs, whose header has the table).
// Keep the three languages in step.
//
// WIT to JavaScript (componentize-qjs): records are objects with camelCase keys, variants are
// `{ tag, val }`, `option` is the value or null, `list<u8>` is a Uint8Array, and the `err` of
// the result is thrown.

export function onEvent(event) {
  const fields = new Fields(event);
  const actions = [];
  switch (event.name) {
    case "session.created": {
      fields.required("sessionId");
      const teacher = fields.required("teacherId");
      const school = fields.optional("schoolId");
      actions.push(invalidate(["teacher:", teacher]));
      if (school !== null) {
        actions.push(invalidate(["school-sessions:", school]));
      }
      actions.push(warmTeacherSessions(teacher));
      if (school !== null) {
        actions.push(warmSchoolSessions(school));
      }
      break;
    }
    case "session.updated":
    case "session.ended": {
      const session = fields.required("sessionId");
      const teacher = fields.required("teacherId");
      const school = fields.optional("schoolId");
      actions.push(invalidate(["session:", session]));
      actions.push(invalidate(["teacher:", teacher]));
      if (school !== null) {
        actions.push(invalidate(["school-sessions:", school]));
      }
      actions.push(warm("session-detail", [["sessionId", session]], ["session:", session]));
      actions.push(warmTeacherSessions(teacher));
      if (school !== null) {
        actions.push(warmSchoolSessions(school));
        actions.push(warmRoster(school, session));
      }
      break;
    }
    case "user.updated": {
      const user = fields.required("userId");
      const rosters = fields.all("rosterSession");
      const school = rosters.length > 0 ? fields.required("schoolId") : null;
      actions.push(invalidate(["user:", user]));
      for (const session of rosters) {
        actions.push(invalidate(["roster:", school, ":", session]));
      }
      actions.push(warm("user-profile", [["userId", user]], ["user:", user, ":profile"]));
      for (const session of rosters) {
        actions.push(warmRoster(school, session));
      }
      break;
    }
    case "roster.changed": {
      const school = fields.required("schoolId");
      const session = fields.required("sessionId");
      actions.push(invalidate(["roster:", school, ":", session]));
      actions.push(warmRoster(school, session));
      break;
    }
    case "school.updated": {
      const school = fields.required("schoolId");
      actions.push(invalidate(["school:", school]));
      actions.push(invalidate(["school-sessions:", school]));
      actions.push(warm("school", [["schoolId", school]], ["school:", school]));
      actions.push(warmSchoolSessions(school));
      break;
    }
    default:
      break;
  }
  return actions;
}

// An event's fields, looked up by name; a name sent twice counts by its first occurrence
// (`all` gives every one).
class Fields {
  constructor(event) {
    this.event = event;
  }

  all(name) {
    return this.event.fields.filter((field) => field.name === name);
  }

  optional(name) {
    return this.event.fields.find((field) => field.name === name) ?? null;
  }

  required(name) {
    const field = this.optional(name);
    if (field === null) {
      throw `${this.event.name} needs field ${name}`;
    }
    return field;
  }
}

// Joins literal strings and fields into a name: `text` when every field's raw value is UTF-8,
// else `binary` from the raw bytes (the lossy `value` would name another key).
function name(pieces) {
  if (pieces.every((piece) => typeof piece === "string" || isUtf8(piece))) {
    let text = "";
    for (const piece of pieces) {
      text += typeof piece === "string" ? piece : piece.value;
    }
    return { tag: "text", val: text };
  }
  const bytes = [];
  for (const piece of pieces) {
    if (typeof piece === "string") {
      bytes.push(...utf8(piece));
    } else {
      bytes.push(...piece.raw);
    }
  }
  return { tag: "binary", val: new Uint8Array(bytes) };
}

// `value` is `raw` decoded with U+FFFD for every byte sequence that is not UTF-8, so `raw` was
// UTF-8 exactly when `value` encodes back to it. Without a U+FFFD it always does.
function isUtf8(field) {
  if (!field.value.includes("\uFFFD")) {
    return true;
  }
  const encoded = utf8(field.value);
  const raw = field.raw;
  return encoded.length === raw.length && encoded.every((byte, i) => byte === raw[i]);
}

// QuickJS has no TextEncoder.
function utf8(text) {
  const bytes = [];
  for (const char of text) {
    const code = char.codePointAt(0);
    if (code < 0x80) {
      bytes.push(code);
    } else if (code < 0x800) {
      bytes.push(0xc0 | (code >> 6), 0x80 | (code & 0x3f));
    } else if (code < 0x10000) {
      bytes.push(0xe0 | (code >> 12), 0x80 | ((code >> 6) & 0x3f), 0x80 | (code & 0x3f));
    } else {
      bytes.push(
        0xf0 | (code >> 18),
        0x80 | ((code >> 12) & 0x3f),
        0x80 | ((code >> 6) & 0x3f),
        0x80 | (code & 0x3f),
      );
    }
  }
  return bytes;
}

function invalidate(pieces) {
  return { tag: "invalidate-tag", val: name(pieces) };
}

// A warm request for `warmer` with these [name, field] parameters, about the key the pieces name.
function warm(warmer, params, key) {
  return {
    tag: "warm",
    val: {
      warmer,
      params: params.map(([param, field]) => ({ name: param, value: field.value })),
      key: name(key),
    },
  };
}

function warmTeacherSessions(teacher) {
  return warm("teacher-sessions", [["teacherId", teacher]], ["sessions:teacher:", teacher]);
}

function warmSchoolSessions(school) {
  return warm("school-sessions", [["schoolId", school]], ["sessions:school:", school]);
}

function warmRoster(school, session) {
  return warm(
    "roster",
    [
      ["schoolId", school],
      ["sessionId", session],
    ],
    ["roster:", school, ":", session],
  );
}
