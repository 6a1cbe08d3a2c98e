"""Leaving out Observations older than the rule set's look-back changes no card: the shipped examples and long
random histories (labs and symptom Observations over eight years) give the same cards with it as with every
Observation read."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from support.histories import long_history

from cds_service.config import load_config
from cds_service.evaluation import Runtime
from cds_service.facts.build import FactWindows, build_facts
from cds_service.record.model import PatientRecord
from cds_service.record.obtain import obtain_record
from cds_service.rules.engine import evaluate
from cds_service.viewer.examples import shipped_examples
from cds_service.wire.hook_request import HookCall

NOW = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime.load(load_config(overrides={"now": NOW.isoformat()}))


def cards(runtime: Runtime, record: PatientRecord, hook: str, windows: FactWindows) -> list[dict[str, Any]]:
    facts = build_facts(record, runtime.terminology, NOW, windows)
    issued = evaluate(runtime.ruleset, facts, hook, max_cards=100)
    return [{k: v for k, v in i.card.items() if k != "uuid"} | {"rule": i.rule_id} for i in issued]


def same_either_way(runtime: Runtime, record: PatientRecord, hook: str) -> list[dict[str, Any]]:
    with_lookback = cards(runtime, record, hook, runtime.fact_windows)
    assert _without_uuids(with_lookback) == _without_uuids(cards(runtime, record, hook, FactWindows()))
    return with_lookback


def _without_uuids(found: list[dict[str, Any]]) -> str:
    text = json.dumps(found, sort_keys=True)
    for card in found:  # suggestion uuids are fresh on every call
        for suggestion in card.get("suggestions", []):
            text = text.replace(suggestion["uuid"], "-")
    return text


@pytest.mark.parametrize("name", sorted(shipped_examples()))
def test_each_example_gives_the_same_cards_with_the_lookback(runtime, name):
    body = shipped_examples()[name].request
    service = runtime.registry.for_hook(body["hook"])
    record = obtain_record(HookCall.from_request(service.id, body), service.prefetch, runtime.record_settings)
    same_either_way(runtime, record, body["hook"])


def test_long_random_histories_give_the_same_cards_with_the_lookback(runtime):
    fired = 0
    for seed in range(40):
        fired += len(same_either_way(runtime, long_history(seed, NOW), "patient-view"))
    assert fired > 20  # the histories are meant to fire rules, or the comparison says little
