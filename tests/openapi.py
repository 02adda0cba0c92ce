"""
The HTTP API's contract, C{docs/openapi.yaml}: validating real answers
against the response schema of their operation and status.
"""

import functools
import re
from pathlib import Path

import jsonschema
import yaml

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"


@functools.cache
def document() -> dict:
    return yaml.safe_load(DOCUMENT.read_text("utf-8"))


def _template(path: str) -> str:
    """
    The document's path that C{path} (under C{/api/v1}, with its values)
    is an instance of.
    """
    for template in document()["paths"]:
        pattern = "^" + re.sub(r"\\\{name\\\}$", ".+", re.escape(template))
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", pattern) + "$"
        if re.match(pattern, path):
            return template
    raise AssertionError(f"{path} is not a path of docs/openapi.yaml")


def response_spec(method: str, path: str, status: int) -> dict:
    """
    The document's response for C{status} of C{method} on C{path}.

    @raise AssertionError: if the operation does not document the status.
    """
    operation = document()["paths"][_template(path)][method.lower()]
    responses = operation["responses"]
    assert str(status) in responses, (
        f"{method} {path} answered {status}, which docs/openapi.yaml does not document "
        f"(it has {', '.join(responses)})"
    )
    response = responses[str(status)]
    if "$ref" in response:
        name = response["$ref"].rsplit("/", 1)[-1]
        response = document()["components"]["responses"][name]
    return response


def validate(method: str, path: str, status: int, body: object,
             headers: dict[str, str] | None = None) -> None:
    """
    Check an answer against the document: its status is documented for
    the operation, its body matches that response's schema, and the
    headers the response documents are there.

    @param path: the request's path under C{/api/v1}, such as C{/info}.
    @raise AssertionError: naming what does not match.
    """
    response = response_spec(method, path, status)
    schema = response["content"]["application/json"]["schema"]
    root = {**schema, "components": document()["components"]}
    validator = jsonschema.Draft202012Validator(root)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
                 for e in errors[:5]]
        raise AssertionError(
            f"{method} {path} -> {status} does not match docs/openapi.yaml:\n  "
            + "\n  ".join(line[:300] for line in lines)
        )
    lowered = {name.lower() for name in (headers or {})}
    for name in response.get("headers", {}):
        if headers is not None:
            assert name.lower() in lowered, f"{method} {path} -> {status} lacks {name}"
