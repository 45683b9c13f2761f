"""The one project-id rule."""

import re

import pytest

from training.labelstudio.projects import project_id, project_number


def test_project_id_parsing():
    assert project_number("12.1716912345") == 12
    assert project_number(3) == 3
    with pytest.raises(ValueError, match="abc"):
        project_number("abc")


@pytest.mark.parametrize(("value", "expected"), [(3, "3"), ("3", "3"), (" 3.1712345678 ", "3"), ("007", "7"), (0, "0")])
def test_project_id_forms(value, expected):
    assert project_id(value) == expected


@pytest.mark.parametrize(("value", "words"), [
    (-4, "must not be negative"), (True, "got True"), (None, "got None"), ("three", "got 'three'"),
    ("3.x", "got '3.x'"), ("3:1", "got '3:1'"), ("1" * 19, "project must be a project id"), ([3], "got [3]"),
])
def test_project_id_refusals_name_the_value(value, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        project_id(value)
