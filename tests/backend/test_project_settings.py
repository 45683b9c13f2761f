import pytest
import redis

from backend.project_settings import (
    ProjectSettings,
    ProjectSettingsStore,
    SettingsError,
    parse_extra_params,
)
from training.jobs.redis_conn import RedisUnavailable

DEAD_REDIS = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize("raw", [None, "", "  ", "null", "{}", {}])
def test_empty_extra_params_change_nothing(raw):
    assert parse_extra_params(raw) == {}


def test_extra_params_as_string_or_object():
    text = '{"predictions": false, "pinned_version": 3}'
    assert parse_extra_params(text) == {"predictions": False, "pinned_version": 3}
    assert parse_extra_params({"split_instances": True, "pinned_version": None}) == {
        "split_instances": True, "pinned_version": None}


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("{predictions: no}", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"predictions": True, "colour": "red", "zoom": 2}, "'colour', 'zoom'"),
        ({"pinned_version": 0}, "pinned_version"),
        ({"auto_training": "maybe"}, "auto_training"),
        ({"pinned_version": "three"}, "pinned_version"),
    ],
)
def test_bad_extra_params_are_named(raw, words):
    with pytest.raises(SettingsError, match=words):
        parse_extra_params(raw)


def test_store_round_trip_and_partial_updates(redis_client, redis_prefix):
    store = ProjectSettingsStore(redis_client, redis_prefix)
    assert store.get("5") == ProjectSettings()
    store.update("5", {"predictions": False})
    updated = store.update("5", {"pinned_version": 2})
    assert updated == ProjectSettings(predictions=False, pinned_version=2)
    # A second store (another process) sees the same settings.
    assert ProjectSettingsStore(redis_client, redis_prefix).get("5") == updated
    assert "5" in store.projects()


def test_label_config_is_kept_per_project(redis_client, redis_prefix):
    store = ProjectSettingsStore(redis_client, redis_prefix)
    store.remember_project("8", "<View/>")
    assert ProjectSettingsStore(redis_client, redis_prefix).label_config("8") == "<View/>"
    assert store.label_config("9") is None


def test_redis_down_reads_fall_back_and_writes_fail_clearly(redis_client, redis_prefix):
    store = ProjectSettingsStore(redis_client, redis_prefix)
    store.update("6", {"split_instances": True})
    store.client = redis.Redis.from_url(DEAD_REDIS, socket_connect_timeout=0.2)
    assert store.get("6").split_instances is True
    assert store.get("unknown") == ProjectSettings()
    with pytest.raises(RedisUnavailable, match="Redis unreachable"):
        store.update("6", {"predictions": False})
    store.remember_project("6", "<View/>")  # logged, not raised
    assert "6" in store.projects()


def test_read_gives_switches_and_label_config_and_notes_the_project(redis_client, redis_prefix):
    store = ProjectSettingsStore(redis_client, redis_prefix)
    store.update("7", {"predictions": False})
    assert store.read("7", "<View/>") == (ProjectSettings(predictions=False), "<View/>")
    other = ProjectSettingsStore(redis_client, redis_prefix)  # another process: nothing in memory
    assert other.read("7") == (ProjectSettings(predictions=False), "<View/>")
    assert other.read("8", "<View/>") == (ProjectSettings(), "<View/>")
    # "8" was never set up nor switched: reading it records nothing (made-up projects cannot fill Redis).
    assert "7" in other.projects() and "8" not in other.projects() and other.label_config("8") is None
    other.client = redis.Redis.from_url(DEAD_REDIS, socket_connect_timeout=0.2)
    assert other.read("7") == (ProjectSettings(predictions=False), "<View/>")  # logged, not raised


def test_rename_moves_switches_and_config_unless_the_target_has_its_own(redis_client, redis_prefix):
    store = ProjectSettingsStore(redis_client, redis_prefix)
    store.update("4", {"predictions": False})
    store.remember_project("4", "<View>a</View>")
    assert store.rename("4", "4.17") is True
    assert store.get("4.17").predictions is False and store.label_config("4.17") == "<View>a</View>"
    assert store.get("4").predictions is True and store.label_config("4") is None
    assert "4" not in store.projects() and "4.17" in store.projects()
    store.update("5", {"auto_training": False})
    store.update("5.17", {"predictions": False})
    assert store.rename("5", "5.17") is False
    assert store.get("5.17") == ProjectSettings(predictions=False) and store.get("5").auto_training is False
    assert {"5", "5.17"} <= set(store.projects())  # nothing lost, both still listed
