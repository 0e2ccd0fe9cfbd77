// The {{name}} policy: decides what an event means for the cache. cachet calls `onEvent` for
// every event this policy's `[[policies]]` entry subscribes to and applies the actions it
// returns, once, after the call succeeded. The contract, every type documented, is
// wit/policy.wit; the guide is cachet's docs/POLICIES.md.
//
// WIT in JavaScript: records are objects with camelCase keys, variants are `{ tag, val }`, an
// `option` is the value or null, `list<u8>` is a Uint8Array, and the `err` of the result is
// thrown. The code runs in QuickJS: no Node.js APIs, no TextEncoder.
//
// Try it: `cachet policy build .` then `cachet policy check {{file}}.wasm`.

export function onEvent(event) {
  switch (event.name) {
    // `EMIT session.created sessionId 42 teacherId 123`: the teacher's cached session lists
    // (the keys tagged `teacher:123`) are stale.
    case "session.created": {
      const teacher = field(event, "teacherId");
      return [{ tag: "invalidate-tag", val: { tag: "text", val: `teacher:${teacher}` } }];
    }
    // An event this policy does not know changes nothing.
    default:
      return [];
  }
}

// The value of the event's first field called `name`. Missing, it is an error: the EMIT
// reports it, and the event is kept in the dead-letter stream for POLICY REPLAY.
function field(event, name) {
  const found = event.fields.find((f) => f.name === name);
  if (found === undefined) {
    throw `${event.name} needs field ${name}`;
  }
  return found.value;
}
