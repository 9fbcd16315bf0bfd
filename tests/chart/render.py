"""Render charts/hartslag through Helm's own engine (PyPI helm-python-sdk), as `helm
template` would, for tests that install it piecewise on the test control plane.

Usage: python3 render.py RELEASE NAMESPACE VALUES_JSON OUT
Writes every rendered object (NOTES.txt excepted) to OUT as a multi-document YAML stream,
each namespaced object with its namespace set, as Helm sets it when it installs.
"""

import json
import pathlib
import sys

import helm_python as helm
import yaml

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "hartslag"

release, namespace, values, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
with helm.Chart.load(str(CHART)) as chart:
    chart.validate_schema(values)
    rendered = chart.render(values, name=release, namespace=namespace)
docs = []
for path, text in sorted(rendered.items()):
    if path.endswith("NOTES.txt"):
        continue
    docs.extend(d for d in yaml.safe_load_all(text) if d)
for d in docs:
    if not d["kind"].startswith("Cluster"):
        d["metadata"].setdefault("namespace", namespace)
pathlib.Path(out).write_text("---\n".join(yaml.safe_dump(d) for d in docs))
