"""Write the request and completion JSON Schemas from the pydantic models (a test checks they match)."""

import json
from pathlib import Path

from batch_relay.models import Completion, RequestMessage

ROOT = Path(__file__).resolve().parents[1] / "schemas"

for name, model in (("request", RequestMessage), ("completion", Completion)):
    path = ROOT / f"{name}.schema.json"
    path.write_text(json.dumps(model.model_json_schema(), indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT.parent)}")
