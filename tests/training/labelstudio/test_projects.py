"""The one project-reference rule: ids, Label Studio's "<id>.<created>" keys and webhook project objects."""

import re
from datetime import UTC, datetime

import pytest

from training.labelstudio.projects import created_of, event_key, is_instance_key, project_key, project_number


def test_project_number_drops_the_instance():
    assert project_number("12.1716912345") == 12
    assert project_number(3) == 3
    with pytest.raises(ValueError, match="abc"):
        project_number("abc")


@pytest.mark.parametrize(("value", "expected"), [
    (3, "3"), ("3", "3"), (" 3.1712345678 ", "3.1712345678"), ("007", "7"), (0, "0"), ("07.0017", "7.17"),
])
def test_project_key_forms(value, expected):
    assert project_key(value) == expected


def test_instance_keys_carry_the_creation_time():
    assert created_of("3.1712345678") == 1712345678 and is_instance_key("3.1712345678")
    assert created_of("3") is None and not is_instance_key("3")


@pytest.mark.parametrize(("value", "words"), [
    (-4, "must not be negative"), (True, "got True"), (None, "got None"), ("three", "got 'three'"),
    ("3.x", "got '3.x'"), ("3:1", "got '3:1'"), ("1" * 19, "project must be a project id"), ([3], "got [3]"),
    ("٣", "got '٣'"),
])
def test_project_key_refusals_name_the_value(value, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        project_key(value)


def test_a_webhook_project_object_gives_the_key_setup_got():
    # Label Studio's /setup key is f"{id}.{int(created_at.timestamp())}"; its webhooks carry created_at in ISO 8601.
    created = datetime(2026, 12, 1, 19, 45, 12, 987654, tzinfo=UTC)
    setup_key = f"3.{int(created.timestamp())}"
    assert event_key({"id": 3, "created_at": created.isoformat().replace("+00:00", "Z")}) == setup_key
    assert event_key({"id": 3, "created_at": "2026-12-01T20:45:12.987654+01:00"}) == setup_key
    assert event_key({"id": 3}) == "3" and event_key(3) == "3" and event_key("3.17") == "3.17"


@pytest.mark.parametrize(("created", "words"), [
    ("yesterday", "ISO 8601"), (1712345678, "ISO 8601"), ("2026-12-01T19:45:12", "time zone"),
    ("1900-01-01T00:00:00Z", "before 1970"), ("9" * 100, "ISO 8601"),
])
def test_a_malformed_created_at_is_named(created, words):
    with pytest.raises(ValueError, match=words):
        event_key({"id": 3, "created_at": created})
