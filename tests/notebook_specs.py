"""What an executed notebook's charts and cells must satisfy (used by the papermill `execute` fixture).

`problems(path)` lists, for the output notebook at `path`:
- every Vega-Lite spec it produced (JupyterChart widget state in the notebook's widget metadata, and
  `application/vnd.vegalite.*` outputs) whose view with a mark has no data (no inline `values`, an unknown or
  empty named dataset, nothing inherited), or a log-scaled field with a value <= 0 (an empty log chart);
- every cell that wrote a warning to stderr (the offline renderer's, altair's, pandas', torch's...).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

WARNING = re.compile(r"warn", re.IGNORECASE)
_VIEW_KEYS = ("layer", "hconcat", "vconcat", "concat")


def specs(nb: dict) -> list[tuple[str, dict]]:
    """(where, Vega-Lite spec) for every spec in the notebook."""
    found = []
    state = nb.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    for model_id, model in state.get("state", {}).items():
        spec = model.get("state", {}).get("spec")
        if isinstance(spec, dict) and spec:
            found.append((f"widget {model_id}", spec))
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            for mime, data in out.get("data", {}).items():
                if mime.startswith("application/vnd.vegalite"):
                    found.append((f"cell {i} output", data if isinstance(data, dict) else json.loads(data)))
    return found


def _rows(data: dict | None, datasets: dict) -> list | None:
    """The rows `data` points at (None when they cannot be known here, e.g. a URL)."""
    if data is None:
        return []
    if "values" in data:
        return data["values"] if isinstance(data["values"], list) else None
    if "name" in data:
        return datasets.get(data["name"], [])
    return None  # url / sequence / graticule: not checked


def _fields(encoding: dict):
    for channel, enc in (encoding or {}).items():
        for e in enc if isinstance(enc, list) else [enc]:
            if isinstance(e, dict):
                yield channel, e


def spec_problems(spec: dict) -> list[str]:
    """Why `spec` draws an empty or broken view (empty list when none)."""
    datasets = spec.get("datasets", {})
    found: list[str] = []

    def walk(node: dict, inherited: dict | None, path: str) -> None:
        data = node.get("data", inherited)
        if "facet" in node and "spec" in node:
            walk(node["spec"], data, f"{path}/facet")
        if "repeat" in node and "spec" in node:
            walk(node["spec"], data, f"{path}/repeat")
        for key in _VIEW_KEYS:
            for i, child in enumerate(node.get(key, [])):
                walk(child, data, f"{path}/{key}[{i}]")
        if "mark" not in node:
            return
        rows = _rows(data, datasets)
        if rows is not None and not rows:  # no transform makes rows out of none
            found.append(f"{path}: a {node['mark']!r} mark with no data")
            return
        for channel, enc in _fields(node.get("encoding", {})):
            scale = enc.get("scale") or {}
            field = enc.get("field")
            if scale.get("type") == "log" and field and rows and not node.get("transform"):
                values = [r.get(field) for r in rows if isinstance(r, dict)]
                bad = [v for v in values if isinstance(v, (int, float)) and v <= 0]
                if bad:
                    found.append(f"{path}: {channel} field {field!r} on a log scale has values <= 0 ({bad[:3]})")

    walk(spec, None, "spec")
    return found


def stderr_warnings(nb: dict) -> list[str]:
    found = []
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = "".join(out.get("text", ""))
                lines = [ln for ln in text.splitlines() if WARNING.search(ln)]
                if lines:
                    found.append(f"cell {i}: {' | '.join(lines)[:300]}")
    return found


def problems(path: str | Path) -> list[str]:
    nb = json.loads(Path(path).read_text())
    found = [f"{where}: {p}" for where, spec in specs(nb) for p in spec_problems(spec)]
    return found + stderr_warnings(nb)
