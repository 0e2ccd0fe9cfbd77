"""The {{name}} policy: decides what an event means for the cache.

cachet calls `on_event` for every event this policy's `[[policies]]` entry subscribes to and
applies the actions it returns, once, after the call succeeded. The contract, every type
documented, is wit/policy.wit; the guide is cachet's docs/POLICIES.md. `wit_world` is the
binding componentize-py generates from wit/ at build time.

Try it: `cachet policy build .` then `cachet policy check {{file}}.wasm`.
"""

from typing import List

from componentize_py_types import Err
from wit_world import WitWorld
from wit_world.imports.types import Action, Action_InvalidateTag, Event, Name_Text


class WitWorld(WitWorld):
    def on_event(self, event: Event) -> List[Action]:
        if event.name == "session.created":
            # `EMIT session.created sessionId 42 teacherId 123`: the teacher's cached session
            # lists (the keys tagged `teacher:123`) are stale.
            teacher = field(event, "teacherId")
            return [Action_InvalidateTag(Name_Text(f"teacher:{teacher}"))]
        # An event this policy does not know changes nothing.
        return []


def field(event: Event, name: str) -> str:
    """The value of the event's first field called `name`. Missing, it is an error: the EMIT
    reports it, and the event is kept in the dead-letter stream for POLICY REPLAY."""
    for f in event.fields:
        if f.name == name:
            return f.value
    raise Err(f"{event.name} needs field {name}")
