"""
The AsyncAPI document as a test oracle.

C{docs/asyncapi.yaml} describes every message of the WebSocket API. This
module loads it once, resolves its C{$ref}s and validates decoded messages
against it, so any test that sees real traffic can check it::

    from tests.asyncapi import validate_server_message

    validate_server_message(orjson.loads(payload))

The schema is picked by the message's C{type} (a message's C{name} in the
document) and, where one type has several shapes, by a field of C{data}:
C{data.channel} for C{update} and C{subscribe}, C{data.status} for
C{subscription_confirmation}. A mismatch raises L{AssertionError} saying
which message, where and why.
"""

from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import attrs
import orjson
import yaml
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
DOCUMENT_URI = "urn:rustorium:asyncapi"
CHANNEL = "/v1"

CLIENT = "client"
"""Messages a client sends (the channel's C{publish} operation)."""
SERVER = "server"
"""Messages the server sends (the channel's C{subscribe} operation)."""

DISCRIMINATORS: Mapping[str, str] = {
    "subscribe": "channel",
    "update": "channel",
    "subscription_confirmation": "status",
}
"""The C{data} field that picks the shape of a type with several."""


@attrs.frozen
class Message:
    """
    One message of the document.

    @ivar key: its key under C{components/messages} (its C{messageId}).
    @ivar name: its C{type} on the wire.
    @ivar direction: L{CLIENT} or L{SERVER}.
    @ivar variant: the value of its discriminating C{data} field, or C{None}.
    """

    key: str
    name: str
    direction: str
    variant: str | None
    definition: Mapping[str, Any]
    validator: Draft7Validator = attrs.field(eq=False, repr=False)

    @property
    def examples(self) -> list[Any]:
        """
        The payloads of the message's examples.
        """
        return [example["payload"] for example in self.definition.get("examples", ())]


def resolve(document: Mapping[str, Any], node: Any) -> Any:
    """
    Follow local C{$ref}s (C{#/a/b}) from C{node} until a node without one.

    @raise KeyError: for a reference to nothing.
    """
    seen = set()
    while isinstance(node, Mapping) and "$ref" in node:
        reference = node["$ref"]
        if not reference.startswith("#/") or reference in seen:
            raise KeyError(f"cannot resolve $ref {reference!r}")
        seen.add(reference)
        node = document
        for part in reference[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def iter_references(node: Any) -> Iterator[str]:
    """
    Every C{$ref} value anywhere in C{node}.
    """
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from iter_references(value)
    elif isinstance(node, list):
        for value in node:
            yield from iter_references(value)


class Contract:
    """
    The loaded document: its messages, each with a validator.
    """

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        registry = Registry().with_resource(
            DOCUMENT_URI, Resource.from_contents(document, default_specification=DRAFT7)
        )
        self.messages: dict[str, Message] = {}
        operations = document["channels"][CHANNEL]
        for direction, operation in ((CLIENT, "publish"), (SERVER, "subscribe")):
            for reference in operations[operation]["message"]["oneOf"]:
                key = reference["$ref"].rpartition("/")[2]
                definition = resolve(document, reference)
                name = definition["name"]
                variant = None
                if name in DISCRIMINATORS:
                    data = resolve(document, definition["payload"]["properties"]["data"])
                    field = resolve(document, data["properties"][DISCRIMINATORS[name]])
                    variant = field["const"]
                validator = Draft7Validator(
                    {"$ref": f"{DOCUMENT_URI}#/components/messages/{key}/payload"},
                    registry=registry,
                )
                self.messages[key] = Message(key, name, direction, variant, definition, validator)

    def of(self, direction: str) -> list[Message]:
        """
        The messages sent in one direction.
        """
        return [m for m in self.messages.values() if m.direction == direction]

    def select(self, direction: str, message: object) -> Message:
        """
        The message definition that C{message} must match.

        @raise AssertionError: if C{message} has no type, or one that the
            document does not define for this direction.
        """
        who = "client" if direction == CLIENT else "server"
        if not isinstance(message, Mapping):
            raise AssertionError(f"a {who} message must be a JSON object, not {_show(message)}")
        kind = message.get("type")
        candidates = [m for m in self.of(direction) if m.name == kind]
        if not candidates:
            known = sorted({m.name for m in self.of(direction)})
            raise AssertionError(
                f"docs/asyncapi.yaml defines no {who} message of type {kind!r} "
                f"(it defines {', '.join(known)}): {_show(message)}"
            )
        if len(candidates) == 1 and candidates[0].variant is None:
            return candidates[0]
        field = DISCRIMINATORS[kind]
        data = message.get("data")
        value = data.get(field) if isinstance(data, Mapping) else None
        for candidate in candidates:
            if candidate.variant == value:
                return candidate
        known = ", ".join(repr(c.variant) for c in candidates)
        raise AssertionError(
            f"a {who} {kind!r} message needs data.{field} to be one of {known}, "
            f"not {value!r}: {_show(message)}"
        )

    def validate(self, direction: str, message: object) -> Message:
        """
        Check C{message} against its schema; return the definition it matched.

        @raise AssertionError: on any mismatch.
        """
        selected = self.select(direction, message)
        errors = list(selected.validator.iter_errors(message))
        if errors:
            first = best_match(errors)
            lines = [f"{_where(first)}: {first.message}"]
            lines += [f"{_where(e)}: {e.message}" for e in errors if e is not first][:4]
            raise AssertionError(
                f"{selected.direction} message {selected.key!r} does not match "
                "docs/asyncapi.yaml:\n  " + "\n  ".join(_trim(line) for line in lines)
                + f"\nmessage: {_show(message)}"
            )
        return selected


def _where(error: ValidationError) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path) or "."


def _trim(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _show(message: object) -> str:
    try:
        text = orjson.dumps(message).decode()
    except TypeError:
        text = repr(message)
    return _trim(text, 500)


@cache
def contract() -> Contract:
    """
    The document, loaded once.
    """
    with DOCUMENT_PATH.open("rb") as f:
        return Contract(yaml.safe_load(f))


def validate_server_message(message: object) -> str:
    """
    Check a decoded server-to-client message against docs/asyncapi.yaml.

    @return: the key of the message definition it matched.
    @raise AssertionError: if it does not match.
    """
    return contract().validate(SERVER, message).key


def validate_client_message(message: object) -> str:
    """
    Check a decoded client-to-server message against docs/asyncapi.yaml.

    @return: the key of the message definition it matched.
    @raise AssertionError: if it does not match.
    """
    return contract().validate(CLIENT, message).key
