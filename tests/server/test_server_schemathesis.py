"""schemathesis against the served OpenAPI document: no generated request gets a 5xx.

Valid and invalid requests for every operation; half of the bodies that name a model are pointed
at the real one, so generation runs with generated settings (stop strings, sampling, JSON
schemas). max_tokens is bounded to 2 by the server's own setting (and so by its OpenAPI
document), and the number of examples is limited, to keep this near a minute.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from .conftest import Served


def test_no_generated_request_gets_a_server_error(served: Served) -> None:
    url = served.restart(max_tokens=2)
    try:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")

        def real_model(pair: tuple[Any, bool]) -> Any:
            case, point = pair
            if point and isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = served.model
            return case

        cases = st.tuples(
            st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)), st.booleans()
        ).map(real_model)

        @given(cases)
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error], timeout=300)  # a busy machine is slow, not broken

        check()
    finally:
        served.restart()
