"""Property-based API tests (schemathesis) against the app's own OpenAPI schema, in-process (ASGI):
no 5xx for any generated input, and every response conforms to the documented schema."""
from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
_events_dir = tempfile.mkdtemp(prefix="unisr-schema-")
app = create_app(Settings(artifacts_dir=ROOT / "artifacts" / "v1", data_dir=ROOT / "data", warmup=False, agent=False,
                          events_log=Path(_events_dir) / "events.log", admin_token="schema-test-token", _env_file=None))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case):
    # schemathesis' default checks (no 5xx, documented status codes and content types, response bodies that
    # conform, invalid input rejected) except positive_data_acceptance: some schema-valid input is refused on
    # purpose by what is loaded, not by its shape (a backend name with no artifacts -> 400 listing the loaded
    # ones; an item id not in the catalogue -> 422; a blank q -> 422)
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
