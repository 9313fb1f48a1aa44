"""Fuzzing the REST API (issue 13 item 7): schemathesis generates requests from the app's own OpenAPI
schema and sends them, with a bearer token, to the real app (ASGI, no network). No answer may be a 5xx
or break the documented schema; bounded to a few hundred cases in all.

A property test of the settings validation checks that whatever a settings page submits, the result is
either a valid `Settings` or a `ValidationError`, never another exception or a silently wrong value.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis.checks import positive_data_acceptance

from maskwatch.config import Settings, apply_overrides
from maskwatch.store import Store
from maskwatch.web import create_app
from vision_helpers import make_tiny_model
from web_helpers import PASSWORD, shared_yunet, web_settings

MAX_EXAMPLES = 40  # per operation; 6 operations


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    settings = web_settings(tmp, model_dir=make_tiny_model(tmp / "models"), yunet=shared_yunet())
    store = Store.from_settings(settings)
    store.add_user("admin", PASSWORD)
    token = store.create_token("admin", "fuzz")
    app = create_app(settings, store=store, start_background=False)
    auth = {"Authorization": f"Bearer {token}"}
    yield schemathesis.openapi.from_asgi("/api/openapi.json", app, headers=auth), auth
    store.close()


OPERATIONS = [
    ("GET", "/api/health"),
    ("GET", "/api/status"),
    ("POST", "/api/detect"),
    ("GET", "/api/events"),
    ("GET", "/api/stats"),
    ("GET", "/api/cameras"),
]


def test_every_api_operation_is_fuzzed(api):
    documented = {(op.method.upper(), op.path) for op in (r.ok() for r in api[0].get_all_operations())}
    assert documented == set(OPERATIONS)  # a new route is added to OPERATIONS (and so fuzzed)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_the_api_never_answers_5xx_nor_outside_its_schema(api, method, path):
    schema, auth = api
    operation = schema[path][method]

    @hypothesis.given(operation.as_strategy())
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def check(case):
        response = case.call(headers=auth)
        assert response.status_code < 500, (method, path, response.status_code, response.text[:300])
        # an empty or non-image file is valid by the schema (a binary string) and rightly refused: the
        # schema cannot say "a decodable image", so that one check is left out; every other one applies
        case.validate_response(response, headers=auth, excluded_checks=[positive_data_acceptance])

    check()


SECTION_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
OVERRIDES = st.fixed_dictionaries(
    {},
    optional={
        "alerts": st.dictionaries(
            st.sampled_from(
                ["min_frames", "min_seconds", "min_confidence", "cooldown_s", "max_emails_per_hour"]
            ),
            SECTION_VALUES,
            max_size=3,
        ),
        "smtp": st.dictionaries(
            st.sampled_from(["host", "port", "security", "recipients"]), SECTION_VALUES, max_size=3
        ),
        "monitor": st.dictionaries(
            st.sampled_from(["workers", "max_detect_interval", "stall_after_s"]), SECTION_VALUES, max_size=2
        ),
        "cameras": st.lists(
            st.fixed_dictionaries({"name": st.text(max_size=8), "source": st.text(max_size=12)}), max_size=2
        ),
    },
)


@hypothesis.given(OVERRIDES)
@hypothesis.settings(max_examples=150, deadline=None)
def test_settings_validation_accepts_only_valid_settings(overrides):
    try:
        s = apply_overrides(Settings(), overrides)
    except ValidationError:
        return
    assert isinstance(s, Settings)
    assert 1 <= s.smtp.port <= 65535
    assert s.alerts.min_frames >= 1 and 0.5 <= s.alerts.min_confidence <= 1.0 and s.alerts.cooldown_s >= 0
    assert s.monitor.max_detect_interval >= 1 and s.monitor.stall_after_s > 0
    assert apply_overrides(s, {}) == s  # what was accepted survives a save / reload round trip
