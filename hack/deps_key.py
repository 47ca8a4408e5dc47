"""Print the key of the cached virtualenv: a hash of the dependency pins only.

Editing tool settings in pyproject.toml must not trigger a new multi-GB venv.
"""

import hashlib
import json
import tomllib
from pathlib import Path

project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
deps = [project["dependencies"], project["optional-dependencies"]]
blob = json.dumps(deps, sort_keys=True) + Path("constraints.txt").read_text()
print(hashlib.sha256(blob.encode()).hexdigest()[:12])
