"""Write every generated file from its one source (`make generate`), or check them.

    python hack/generate.py            write them
    python hack/generate.py --check    list the stale ones, exit 1 if any (the unit test)

The sources: the API models (the CRD, docs/api.md, the admission policy), the RBAC
rules (the chart's copy), hack/kubetrain_dashboards (Grafana JSON), and
hack/kubetrain_chart with values.yaml's comments (values.schema.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dashboards import DASHBOARDS
from dashboards import render as render_dashboard
from kubetrain_chart import schema as chart_schema
from kubetrain_core import admission, apidoc, crd

ROOT = Path(__file__).resolve().parent.parent
CHART = Path("helm") / "kubetrain"


def generated() -> dict[Path, str]:
    """Path (relative to the repository) -> the text it must hold."""
    crd_text = crd.render()
    values = (ROOT / CHART / "values.yaml").read_text()
    return {
        crd.CRD_PATH: crd_text,
        CHART / "files" / "crds" / crd.CRD_PATH.name: crd_text,
        apidoc.DOC_PATH: apidoc.render(),
        **admission.files(),
        CHART / "files" / "rbac.yaml": (ROOT / "operator" / "deploy" / "rbac.yaml").read_text(),
        CHART / "values.schema.json": chart_schema.render(values),
        **{CHART / "dashboards" / name: render_dashboard(b) for name, b in DASHBOARDS.items()},
    }


def stale(files: dict[Path, str]) -> list[Path]:
    def current(path: Path) -> str | None:
        return (ROOT / path).read_text() if (ROOT / path).is_file() else None

    return [path for path, text in files.items() if current(path) != text]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; fail if stale")
    args = parser.parse_args()
    files = generated()
    if args.check:
        old = stale(files)
        for path in old:
            print(f"stale: {path} (run `make generate`)")
        return 1 if old else 0
    for path in stale(files):
        (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / path).write_text(files[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
