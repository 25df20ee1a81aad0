"""BFCL's possible answers rendered as a model's output, in the xLAM handler's format (a JSON
list of {"name", "arguments"}), for the oracle tests: the checkers must score them right.

Python values are written as they are; Java and JavaScript values as the source text a model
writes for them (BFCL's checkers parse that text with the parameter's declared type).
"""

from __future__ import annotations

import json


def first(options: list):
    """A possible answer's first acceptable value ('' means: may be left out)."""
    return options[0]


def omitted(options: list) -> bool:
    return not options or options[0] == ""


def python_value(value):
    """A nested possible answer ({key: [options]} or a list of them) as a plain value."""
    if isinstance(value, dict) and all(isinstance(o, list) for o in value.values()):
        return {k: python_value(first(o)) for k, o in value.items() if not omitted(o)}
    if isinstance(value, list):
        return [python_value(v) for v in value]
    return value


def java_value(value, spec: dict) -> str:
    kind = spec.get("type")
    items = (spec.get("items") or {}).get("type")
    if isinstance(value, str) and kind not in ("char",):
        return value  # already the source text (or a String)
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "long":
        return f"{value}L"
    if kind == "float":
        return f"{float(value)}f"
    if kind in ("integer", "byte", "short", "double"):
        return str(value)
    if kind == "char":
        return f"'{value}'"
    if kind == "Array":
        return f"new {_java_elem(items)}[]{{{', '.join(_java_array_item(v, items) for v in value)}}}"
    if kind == "ArrayList":
        if not value:
            return "new ArrayList<>()"
        return f"new ArrayList<>(Arrays.asList({', '.join(_java_list_item(v, items) for v in value)}))"
    if kind == "HashMap":
        puts = " ".join(f'put("{k}", {_java_untyped(python_value(first(o)) if isinstance(o, list) else o)});'
                        for k, o in value.items())
        return f"new HashMap<String, String>() {{{{ {puts} }}}}"
    return str(value)  # String, any


def _java_elem(items: str | None) -> str:
    return {"integer": "int", "boolean": "boolean", "double": "double", "float": "float", "long": "long"}.get(items, "String")


def _java_array_item(value, items) -> str:
    return java_value(value, {"type": items}) if items not in (None, "String", "any") else str(value)


def _java_list_item(value, items) -> str:
    if items in ("String", "char"):
        return f'"{value}"' if items == "String" else f"'{value}'"
    return java_value(value, {"type": items}) if items not in (None, "any") else _java_untyped(value)


def _java_untyped(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def js_value(value, spec: dict) -> str:
    kind = spec.get("type")
    if isinstance(value, str):
        return value  # already the source text (or a String)
    if kind == "Boolean":
        return "true" if value else "false"
    if kind == "Bigint":
        return f"{value}n"
    if kind in ("integer", "float"):
        return str(value)
    if kind == "array":
        return json.dumps(python_value(value))
    if kind == "dict":
        return json.dumps(python_value(value))
    return str(value)  # String, any


def render(entry, answer: list, language: str = "python") -> str:
    """The possible answer as the xLAM handler's output: every call, every argument given its
    first acceptable value (arguments that may be left out are left out)."""
    specs = {f["name"]: f.get("parameters", {}).get("properties", {}) for f in entry.checked["function"]}
    required = {f["name"]: f.get("parameters", {}).get("required", []) for f in entry.checked["function"]}
    calls = []
    for call in answer:
        (name, params), = call.items()
        arguments = {}
        for key, options in params.items():
            if omitted(options) and key in required.get(name, ()):
                options = [o for o in options if o != ""]  # required, though '' is listed: its other answers
            if omitted(options):
                continue
            value = python_value(first(options))
            spec = specs.get(name, {}).get(key, {})
            if language == "java":
                value = java_value(first(options), spec)
            elif language == "javascript":
                value = js_value(first(options), spec)
            arguments[key] = value
        calls.append({"name": name, "arguments": arguments})
    return json.dumps(calls)


def language_of(file: str) -> str:
    return "javascript" if "javascript" in file else "java" if "java" in file else "python"
