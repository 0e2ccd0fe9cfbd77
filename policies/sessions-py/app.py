"""The ClassWaves sessions policy in Python.

The same events, fields, errors and actions, in the same order, as the Rust policy
(../sessions/src/lib.rs, whose header has the table). Keep the three languages in step.
`wit_world` is the binding componentize-py generates from ../../wit at build time.
"""

from typing import List, Optional, Tuple, Union

from componentize_py_types import Err
from wit_world import WitWorld
from wit_world.imports.types import (
    Action,
    Action_InvalidateTag,
    Action_Warm,
    Event,
    Field,
    Name,
    Name_Binary,
    Name_Text,
    Param,
    WarmRequest,
)

# A piece of a tag or key: literal text or a field's value.
Piece = Union[str, Field]


class WitWorld(WitWorld):
    def on_event(self, event: Event) -> List[Action]:
        fields = Fields(event)
        actions: List[Action] = []
        if event.name == "session.created":
            fields.required("sessionId")
            teacher = fields.required("teacherId")
            school = fields.optional("schoolId")
            actions.append(invalidate(["teacher:", teacher]))
            if school is not None:
                actions.append(invalidate(["school-sessions:", school]))
            actions.append(warm_teacher_sessions(teacher))
            if school is not None:
                actions.append(warm_school_sessions(school))
        elif event.name in ("session.updated", "session.ended"):
            session = fields.required("sessionId")
            teacher = fields.required("teacherId")
            school = fields.optional("schoolId")
            actions.append(invalidate(["session:", session]))
            actions.append(invalidate(["teacher:", teacher]))
            if school is not None:
                actions.append(invalidate(["school-sessions:", school]))
            actions.append(
                warm("session-detail", [("sessionId", session)], ["session:", session])
            )
            actions.append(warm_teacher_sessions(teacher))
            if school is not None:
                actions.append(warm_school_sessions(school))
                actions.append(warm_roster(school, session))
        elif event.name == "user.updated":
            user = fields.required("userId")
            rosters = fields.all("rosterSession")
            school = fields.required("schoolId") if rosters else None
            actions.append(invalidate(["user:", user]))
            for session in rosters:
                actions.append(invalidate(["roster:", school, ":", session]))
            actions.append(
                warm("user-profile", [("userId", user)], ["user:", user, ":profile"])
            )
            for session in rosters:
                actions.append(warm_roster(school, session))
        elif event.name == "roster.changed":
            school = fields.required("schoolId")
            session = fields.required("sessionId")
            actions.append(invalidate(["roster:", school, ":", session]))
            actions.append(warm_roster(school, session))
        elif event.name == "school.updated":
            school = fields.required("schoolId")
            actions.append(invalidate(["school:", school]))
            actions.append(invalidate(["school-sessions:", school]))
            actions.append(warm("school", [("schoolId", school)], ["school:", school]))
            actions.append(warm_school_sessions(school))
        return actions


class Fields:
    """An event's fields, looked up by name; a name sent twice counts by its first occurrence
    (`all` gives every one)."""

    def __init__(self, event: Event):
        self.event = event

    def all(self, name: str) -> List[Field]:
        return [field for field in self.event.fields if field.name == name]

    def optional(self, name: str) -> Optional[Field]:
        return next((field for field in self.event.fields if field.name == name), None)

    def required(self, name: str) -> Field:
        field = self.optional(name)
        if field is None:
            raise Err(f"{self.event.name} needs field {name}")
        return field


def is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def name(pieces: List[Piece]) -> Name:
    """Joins the pieces: `text` when every raw value is UTF-8, else `binary` from the raw bytes
    (the lossy `value` would name another key)."""
    if all(isinstance(piece, str) or is_utf8(piece.raw) for piece in pieces):
        return Name_Text("".join(p if isinstance(p, str) else p.value for p in pieces))
    return Name_Binary(
        b"".join(p.encode("utf-8") if isinstance(p, str) else p.raw for p in pieces)
    )


def invalidate(pieces: List[Piece]) -> Action:
    return Action_InvalidateTag(name(pieces))


def warm(warmer: str, params: List[Tuple[str, Field]], key: List[Piece]) -> Action:
    """A warm request for `warmer` with these parameters, about the key the pieces name."""
    return Action_Warm(
        WarmRequest(warmer, [Param(p, field.value) for p, field in params], name(key))
    )


def warm_teacher_sessions(teacher: Field) -> Action:
    return warm(
        "teacher-sessions", [("teacherId", teacher)], ["sessions:teacher:", teacher]
    )


def warm_school_sessions(school: Field) -> Action:
    return warm("school-sessions", [("schoolId", school)], ["sessions:school:", school])


def warm_roster(school: Field, session: Field) -> Action:
    return warm(
        "roster",
        [("schoolId", school), ("sessionId", session)],
        ["roster:", school, ":", session],
    )
