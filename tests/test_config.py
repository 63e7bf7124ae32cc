"""The settings table, Settings, and loading configuration from objects, modules and Django."""

from __future__ import annotations

import pickle
import re
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator, MutableMapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from celeriac.config import DEFAULT_BROKER_URL, SETTINGS, Settings, lookup
from celeriac.errors import ConfigurationError, UnknownSettingError

WriteModule = Callable[[str], str]


@pytest.fixture
def conf() -> Settings:
    """Settings that ignore the process environment."""
    return Settings(environ={})


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModule]:
    """Write a uniquely named module on sys.path; return its name. Forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(source: str) -> str:
        name = f"celeriacconfig_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


# -- the table


def test_every_default_is_valid_and_already_coerced() -> None:
    for row in SETTINGS.values():
        assert row.coerce(row.default) == row.default, row.name


def test_every_row_is_named_documented_in_one_line_and_the_table_stays_lean() -> None:
    assert len(SETTINGS) <= 55
    for name, row in SETTINGS.items():
        assert row.name == name == name.lower()
        assert row.doc and "\n" not in row.doc and len(row.doc) <= 100, name


def test_no_setting_shadows_a_method_of_settings() -> None:
    assert set(SETTINGS).isdisjoint(dir(MutableMapping))
    assert set(SETTINGS).isdisjoint(vars(Settings))


def test_defaults(conf: Settings) -> None:
    assert conf.broker_url is None
    assert DEFAULT_BROKER_URL == "sqlite:///celeriac.sqlite3"
    assert conf.result_backend is None
    assert conf.broker_transport_options == {"lease_timeout": 30.0, "max_deliveries": 3}
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.result_accept_content is None
    assert conf.task_default_queue == "celeriac"
    assert conf.task_default_priority == 0
    assert conf.task_acks_late is True
    assert conf.result_expires == 86400
    assert conf.worker_concurrency is None
    assert conf.worker_prefetch_multiplier == 4
    assert conf.worker_pool == "prefork"
    assert conf.worker_shutdown_timeout == 30.0
    assert conf.timezone == "UTC"
    assert conf.beat_schedule == {}
    assert conf.imports == conf.include == []


def test_class_attribute_is_the_row() -> None:
    assert Settings.task_acks_late is SETTINGS["task_acks_late"]
    assert Settings.task_acks_late.default is True


# -- parsing and coercion


def test_timedelta_becomes_seconds(conf: Settings) -> None:
    conf.result_expires = timedelta(hours=1)
    conf.task_time_limit = timedelta(minutes=2)
    conf["worker_shutdown_timeout"] = "2.5"
    assert conf.result_expires == 3600.0
    assert conf.task_time_limit == 120.0
    assert conf.worker_shutdown_timeout == 2.5


def test_result_expires_accepts_int_float_timedelta_and_none(conf: Settings) -> None:
    for value, expected in [(60, 60.0), (1.5, 1.5), (timedelta(days=2), 172800.0), (None, None)]:
        conf.result_expires = value
        assert conf.result_expires == expected


def test_comma_separated_string_becomes_a_list(conf: Settings) -> None:
    conf.accept_content = "json, msgpack"
    conf.imports = ("proj.tasks",)
    assert conf.accept_content == ["json", "msgpack"]
    assert conf.imports == ["proj.tasks"]


@pytest.mark.parametrize(("word", "expected"), [("yes", True), ("Off", False), ("0", False)])
def test_boolean_words(conf: Settings, word: str, expected: bool) -> None:
    conf.task_track_started = word
    assert conf.task_track_started is expected


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("task_acks_late", "maybe", "expected True or False"),
        ("task_acks_late", 2, "expected True or False"),
        ("worker_concurrency", -1, "expected None or a positive integer"),
        ("worker_concurrency", True, "expected None or a positive integer"),
        ("worker_concurrency", 2.5, "expected None or a positive integer"),
        ("task_default_priority", 10, "expected an integer from 0 to 9"),
        ("timezone", "Mars/Olympus_Mons", "expected an IANA time zone name"),
        ("worker_pool", "gevent", "expected one of 'prefork', 'threads', 'solo', 'asyncio'"),
        ("result_expires", -5, "expected None or seconds > 0"),
        ("task_time_limit", "soon", "expected None or seconds > 0"),
        ("accept_content", ["json", 1], "expected a list of strings"),
        ("broker_url", "localhost", "expected None or a URL"),
        ("task_default_queue", "", "expected a non-empty string"),
        ("task_default_rate_limit", "10/d", "expected None, tasks per second, or a rate"),
        ("worker_redirect_stdouts_level", "LOUD", "expected a log level name"),
        ("beat_schedule", {"tick": {"task": "t"}}, "entry 'tick' is not"),
        ("broker_transport_options", {"lease_timeout": 0}, "'lease_timeout' is seconds > 0"),
        ("result_backend_transport_options", ["x"], "expected a dict"),
        ("task_routes", 42, "expected None, a dict"),
    ],
)
def test_bad_value_names_the_setting_the_value_and_what_was_expected(
    conf: Settings, name: str, value: Any, expected: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        conf[name] = value
    message = str(caught.value)
    assert f"setting {name!r}" in message
    assert repr(value) in message
    assert expected in message
    assert name not in conf.changes


def test_good_values_of_every_kind(conf: Settings) -> None:
    conf.update(
        timezone="Europe/Paris",
        worker_pool="THREADS",
        worker_redirect_stdouts_level="info",
        task_default_priority="9",
        task_default_rate_limit="100/m",
        task_routes=lambda name, args, kwargs, options, task=None, **kw: None,
        beat_schedule={"tick": {"task": "proj.tick", "schedule": 10.0}},
        broker_transport_options={"max_deliveries": 5, "visibility": "x"},
    )
    assert conf.timezone == "Europe/Paris"
    assert conf.worker_pool == "threads"
    assert conf.worker_redirect_stdouts_level == "INFO"
    assert conf.task_default_priority == 9
    assert conf.task_default_rate_limit == "100/m"
    assert callable(conf.task_routes)
    assert conf.beat_schedule["tick"]["schedule"] == 10.0
    assert conf.broker_transport_options == {
        "lease_timeout": 30.0, "max_deliveries": 5, "visibility": "x"
    }


# -- unknown names, through every way in


def test_unknown_setting_by_attribute_suggests_the_closest_name(conf: Settings) -> None:
    with pytest.raises(UnknownSettingError, match=r"^unknown setting 'broker_ur'; "
                       r"did you mean 'broker_url'\?$"):
        conf.broker_ur = "redis://"  # type: ignore[attr-defined]
    with pytest.raises(UnknownSettingError, match="did you mean 'task_acks_late'"):
        conf.task_ack_late  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(conf, "task_ack_late")
    assert getattr(conf, "broker_ur", "fallback") == "fallback"


def test_unknown_setting_by_item(conf: Settings) -> None:
    with pytest.raises(UnknownSettingError, match="did you mean 'worker_concurrency'"):
        conf["worker_concurency"] = 4
    with pytest.raises(UnknownSettingError, match="did you mean 'result_backend'"):
        conf["result_bakend"]
    with pytest.raises(UnknownSettingError, match=r"^unknown setting 'zzz'$"):
        del conf["zzz"]
    with pytest.raises(KeyError):  # still a KeyError, as a mapping promises
        conf["BROKER_URL"]
    assert "broker_ur" not in conf
    assert conf.get("broker_ur") is None


def test_unknown_setting_by_update_changes_nothing(conf: Settings) -> None:
    with pytest.raises(UnknownSettingError, match="did you mean 'task_routes'"):
        conf.update({"task_default_queue": "other", "task_rotes": {}})
    assert conf.task_default_queue == "celeriac"
    with pytest.raises(UnknownSettingError):
        Settings(environ={}, task_always_eagre=True)


def test_unknown_setting_from_a_dict(conf: Settings) -> None:
    with pytest.raises(UnknownSettingError, match="did you mean 'broker_url'"):
        conf.config_from_object({"broker_ulr": "redis://"})


def test_unknown_setting_from_an_object(conf: Settings) -> None:
    class Config:
        task_acks_late = False
        result_expries = 10

    with pytest.raises(UnknownSettingError, match="did you mean 'result_expires'"):
        conf.config_from_object(Config)
    assert conf.task_acks_late is True


def test_unknown_setting_from_a_module_with_namespace(
    conf: Settings, write_module: WriteModule
) -> None:
    module = write_module("""
        CELERIAC_BROKER_URL = "redis://localhost"
        CELERIAC_BROKER_UR = "redis://typo"
    """)
    with pytest.raises(UnknownSettingError) as caught:
        conf.config_from_object(module, namespace="CELERIAC")
    assert str(caught.value) == (
        "unknown setting 'CELERIAC_BROKER_UR'; did you mean 'CELERIAC_BROKER_URL'?"
    )
    assert conf.broker_url is None


# -- reading, writing, forgetting


def test_mapping_protocol(conf: Settings) -> None:
    assert list(conf) == list(SETTINGS)
    assert len(conf) == len(SETTINGS)
    assert "task_acks_late" in conf
    conf["task_acks_late"] = False
    assert conf.changes == {"task_acks_late": False}
    del conf.task_acks_late
    assert conf.task_acks_late is True
    assert conf.changes == {}


def test_clear_and_popitem_forget_values_set(conf: Settings) -> None:
    conf.update(task_acks_late=False, worker_concurrency=2)
    assert conf.popitem() == ("worker_concurrency", 2)
    conf.clear()
    assert conf.changes == {}
    with pytest.raises(KeyError):
        conf.popitem()


def test_mutable_defaults_belong_to_one_settings(conf: Settings) -> None:
    conf.beat_schedule["tick"] = {"task": "proj.tick", "schedule": 1.0}
    conf.include.append("proj.tasks")
    assert Settings(environ={}).beat_schedule == {}
    assert SETTINGS["include"].default == []
    assert conf.include == ["proj.tasks"]
    assert set(conf.changes) == {"beat_schedule", "include"}


def test_lookup() -> None:
    assert lookup("worker_pool") is SETTINGS["worker_pool"]
    with pytest.raises(UnknownSettingError, match="did you mean 'worker_pool'"):
        lookup("worker_poll")


def test_table_and_humanize_mask_passwords(conf: Settings) -> None:
    conf.broker_url = "redis://:hunter2@localhost:6379/0"
    conf.broker_transport_options = {"password": "hunter2"}
    rows = {name: (value, doc) for name, value, doc in conf.table()}
    assert set(rows) == set(SETTINGS)
    assert rows["broker_url"][0] == "redis://:********@localhost:6379/0"
    assert rows["task_acks_late"][1] == SETTINGS["task_acks_late"].doc
    text = conf.humanize()
    assert "hunter2" not in text and "hunter2" not in repr(conf)
    assert text.splitlines()[0] == "broker_url: 'redis://:********@localhost:6379/0'"
    assert len(text.splitlines()) == 2
    assert conf.table(censored=False)[0][1] == "redis://:hunter2@localhost:6379/0"


# -- environment overrides


def test_environment_beats_values_set_in_code(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = Settings(broker_url="redis://from-code", result_backend="redis://from-code")
    monkeypatch.setenv("CELERIAC_BROKER_URL", "redis://from-env:6379/0")
    monkeypatch.setenv("CELERIAC_RESULT_BACKEND", "redis://results-from-env")
    assert conf.broker_url == "redis://from-env:6379/0"
    assert conf["result_backend"] == "redis://results-from-env"
    assert conf.changes["broker_url"] == "redis://from-code"
    monkeypatch.setenv("CELERIAC_BROKER_URL", "")
    assert conf.broker_url == "redis://from-code"
    monkeypatch.delenv("CELERIAC_RESULT_BACKEND")
    assert conf.result_backend == "redis://from-code"


def test_environment_beats_defaults_and_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_BROKER_URL", "not a url")
    with pytest.raises(ConfigurationError, match="environment variable CELERIAC_BROKER_URL"):
        Settings().broker_url  # noqa: B018


def test_an_explicit_environ_mapping_replaces_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERIAC_BROKER_URL", "redis://os-environ")
    assert Settings(environ={}).broker_url is None
    assert Settings(environ={"CELERIAC_BROKER_URL": "memory://"}).broker_url == "memory://"


# -- config_from_object


def test_from_dict(conf: Settings) -> None:
    assert conf.config_from_object({"task_acks_late": "no", "BROKER_URL": "ignored"}) is True
    assert conf.changes == {"task_acks_late": False}


def test_from_object_skips_methods_and_private_names(conf: Settings) -> None:
    class Config:
        worker_concurrency = 3
        _helper = "private"

        def method(self) -> None:
            """Not a setting."""

    conf.config_from_object(Config())
    assert conf.changes == {"worker_concurrency": 3}


def test_from_a_module_on_sys_path(conf: Settings, write_module: WriteModule) -> None:
    module = write_module("""
        from __future__ import annotations

        import os
        from datetime import timedelta

        broker_url = "redis://localhost:6379/0"
        result_expires = timedelta(minutes=5)
        task_routes = {"proj.tasks.*": {"queue": "proj"}}
        CELERY_IGNORED = True
        _private = 1

        def helper() -> None:
            pass
    """)
    assert conf.config_from_object(module) is True
    assert conf.broker_url == "redis://localhost:6379/0"
    assert conf.result_expires == 300.0
    assert conf.task_routes == {"proj.tasks.*": {"queue": "proj"}}
    assert set(conf.changes) == {"broker_url", "result_expires", "task_routes"}


def test_a_module_object_is_read_like_its_name(
    conf: Settings, write_module: WriteModule
) -> None:
    name = write_module("task_default_queue = 'proj'\n")
    __import__(name)
    conf.config_from_object(sys.modules[name])
    assert conf.task_default_queue == "proj"


def test_a_module_with_a_stray_lower_case_value_is_a_typo(
    conf: Settings, write_module: WriteModule
) -> None:
    module = write_module("task_serialiser = 'json'\n")
    with pytest.raises(UnknownSettingError, match="did you mean 'task_serializer'") as caught:
        conf.config_from_object(module)
    assert "start a helper's name with '_'" in str(caught.value)


def test_module_colon_attribute(conf: Settings, write_module: WriteModule) -> None:
    module = write_module("""
        class Production:
            worker_concurrency = 8
            broker_url = "redis://prod"

        class Holder:
            settings = {"CELERIAC_TASK_DEFAULT_QUEUE": "nested"}
    """)
    conf.config_from_object(f"{module}:Production")
    assert (conf.worker_concurrency, conf.broker_url) == (8, "redis://prod")
    conf.config_from_object(f"{module}:Holder.settings", namespace="CELERIAC")
    assert conf.task_default_queue == "nested"


def test_missing_module_is_a_configuration_error(conf: Settings) -> None:
    with pytest.raises(ConfigurationError, match="cannot import configuration module "
                       "'celeriac_no_such_config'"):
        conf.config_from_object("celeriac_no_such_config")
    assert conf.config_from_object("celeriac_no_such_config", silent=True) is False


def test_missing_attribute_is_a_configuration_error(
    conf: Settings, write_module: WriteModule
) -> None:
    module = write_module("")
    with pytest.raises(ConfigurationError, match="has no attribute 'Missing'"):
        conf.config_from_object(f"{module}:Missing")
    assert conf.config_from_object(f"{module}:Missing", silent=True) is False


def test_namespace_takes_only_its_own_names(conf: Settings) -> None:
    conf.config_from_object(
        {
            "CELERIAC_BROKER_URL": "redis://localhost",
            "CELERIAC_WORKER_CONCURRENCY": "4",
            "task_acks_late": "not read with a namespace",
            "CELERY_BROKER_URL": "redis://not-ours",
            "DATABASES": {},
        },
        namespace="CELERIAC",
    )
    assert conf.changes == {"broker_url": "redis://localhost", "worker_concurrency": 4}


def test_a_bad_value_under_a_namespace_names_what_the_user_wrote(conf: Settings) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(
        "'worker_concurrency' (given as CELERIAC_WORKER_CONCURRENCY): 0"
    )):
        conf.config_from_object({"CELERIAC_WORKER_CONCURRENCY": 0}, namespace="CELERIAC")


def test_config_from_envvar(write_module: WriteModule) -> None:
    module = write_module("task_always_eager = True\n")
    conf = Settings(environ={"PROJ_CONFIG": module})
    assert conf.config_from_envvar("PROJ_CONFIG") is True
    assert conf.task_always_eager is True
    assert conf.config_from_envvar("PROJ_MISSING", silent=True) is False
    with pytest.raises(ConfigurationError, match="PROJ_MISSING is not set"):
        conf.config_from_envvar("PROJ_MISSING")


def test_django_settings_with_namespace(
    conf: Settings, write_module: WriteModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("django")
    settings_module = write_module("""
        SECRET_KEY = "test"
        INSTALLED_APPS = []
        CELERIAC_BROKER_URL = "redis://localhost:6379/1"
        CELERIAC_TASK_ACKS_LATE = False
        CELERIAC_RESULT_EXPIRES = 60
    """)
    # A fresh LazySettings, so the process-wide django.conf.settings is left alone.
    holder = write_module("from django.conf import LazySettings\nsettings = LazySettings()\n")
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", settings_module)
    conf.config_from_object(f"{holder}:settings", namespace="CELERIAC")
    assert conf.changes == {
        "broker_url": "redis://localhost:6379/1", "task_acks_late": False, "result_expires": 60.0
    }


def test_settings_survive_pickling_for_spawned_workers(conf: Settings) -> None:
    conf.update(task_acks_late=False, include=["proj.tasks"])
    copied = pickle.loads(pickle.dumps(conf))
    assert copied.changes == conf.changes
    assert copied.task_acks_late is False


def test_the_generation_changes_with_every_way_of_setting_or_forgetting(conf: Settings) -> None:
    seen = [conf.generation]

    def changed() -> None:
        assert conf.generation not in seen
        seen.append(conf.generation)

    conf.task_default_priority = 3
    changed()
    conf["task_time_limit"] = 10
    changed()
    conf.update(task_ignore_result=True)
    changed()
    conf.config_from_object({"task_serializer": "json"})
    changed()
    del conf.task_default_priority
    changed()
    conf.popitem()
    changed()
    conf.clear()
    changed()
    with pytest.raises(ConfigurationError):
        conf.update(task_default_priority="high")  # refused: nothing set, nothing changed
    assert conf.generation == seen[-1]


def test_a_value_read_before_a_change_is_never_read_after_it(conf: Settings) -> None:
    """Reads keep values until the next change: every way of changing one shows at once."""
    assert conf.task_default_priority == 0
    conf.task_default_priority = 3
    assert conf.task_default_priority == 3
    conf["task_default_priority"] = 4
    assert conf.task_default_priority == 4
    conf.update(task_default_priority=5)
    assert conf.task_default_priority == 5
    conf.config_from_object({"task_default_priority": 6})
    assert conf.task_default_priority == conf["task_default_priority"] == 6
    del conf.task_default_priority
    assert conf.task_default_priority == 0
    conf.task_default_priority = 7
    assert conf.task_default_priority == 7
    conf.popitem()
    assert conf.task_default_priority == 0
    conf.task_default_priority = 8
    assert conf.task_default_priority == 8
    conf.clear()
    assert conf.task_default_priority == 0
    routes = conf.task_routes = {"a": "q"}
    assert conf.task_routes == routes
    conf.beat_schedule["nightly"] = {"task": "t", "schedule": 60.0}  # a default changed in place
    assert conf.beat_schedule == {"nightly": {"task": "t", "schedule": 60.0}}


def test_a_setting_the_environment_can_set_is_read_from_it_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = Settings(broker_url="redis://code/0")
    assert conf.broker_url == "redis://code/0"
    monkeypatch.setenv("CELERIAC_BROKER_URL", "redis://environment/0")
    assert conf.broker_url == "redis://environment/0"
    monkeypatch.delenv("CELERIAC_BROKER_URL")
    assert conf.broker_url == "redis://code/0"
