"""Parameters a notebook was given by papermill, checked and parsed as a CI user means them.

papermill puts the values it is given in a cell of its own (tagged `injected-parameters`, opening with the
comment `# Parameters`) right after the notebook's `parameters` cell, which holds literals only. A notebook's
next code cell calls

    notebook_params.bind(globals())

which reads both cells from the kernel's input history (`In`) and
- refuses a name the `parameters` cell does not declare (ValueError naming the known parameters: papermill
  itself only logs a warning, and the run would silently use the default);
- parses a string given for a parameter whose default is a list, tuple or dict (`-p sync_periods "[2,8]"`
  reaches the kernel as the string "[2,8]") as YAML (Python literal syntax as a fallback), and refuses a value
  that does not parse to the default's type.
Run interactively (no injected cell) it does nothing. Returns {name: value} of the declared parameters.
"""
from __future__ import annotations

import ast

INJECTED_HEADER = "# Parameters"  # papermill's Python translator opens the injected cell with this comment


def assigned(source: str) -> dict:
    """{name: literal value} of the top-level `name = literal` statements in `source` (others are ignored)."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                found[node.targets[0].id] = None
    return found


def _parse(name: str, text: str, default):
    try:
        import yaml

        value = yaml.safe_load(text)
    except ImportError:  # pragma: no cover - papermill brings PyYAML
        value = None
    except Exception:  # noqa: BLE001 - YAML syntax error: try Python literal syntax
        value = None
    if not isinstance(value, (list, tuple, dict)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
    kind = dict if isinstance(default, dict) else (list, tuple)
    if not isinstance(value, kind):
        raise ValueError(f"parameter {name}={text!r} is not a {type(default).__name__}: "
                         f"give it as YAML or a Python literal, e.g. {default!r}")
    return type(default)(value)


def check(injected: dict, known: dict) -> dict:
    """The injected values checked against the declared defaults `known`, list/dict strings parsed."""
    unknown = sorted(set(injected) - set(known))
    if unknown:
        raise ValueError(f"unknown notebook parameter(s) {', '.join(unknown)}; "
                         f"the known parameters are: {', '.join(known)}")
    parsed = {}
    for name, value in injected.items():
        default = known[name]
        if isinstance(value, str) and isinstance(default, (list, tuple, dict)):
            value = _parse(name, value, default)
        parsed[name] = value
    return parsed


def bind(namespace: dict) -> dict:
    """Check papermill's injected parameters in `namespace` (a notebook's globals()) and fix their types there."""
    history = [src for src in namespace.get("In", []) if isinstance(src, str)]
    marks = [i for i, src in enumerate(history) if src.lstrip().startswith(INJECTED_HEADER)]
    if not marks or marks[-1] == 0:
        return {}
    at = marks[-1]
    known = assigned(history[at - 1])  # the `parameters` cell runs just before papermill's
    injected = {name: namespace.get(name) for name in assigned(history[at])}
    values = check(injected, known)
    namespace.update(values)
    return {name: namespace.get(name, default) for name, default in known.items()}
