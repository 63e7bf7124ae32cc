"""The dashboard's parts on their own: password hashes, credentials from the environment,
signed cookies, masking of secrets, and the task list with 100,000 tasks."""

from __future__ import annotations

import time
import uuid

import pytest

from celeriac import Celeriac
from celeriac.dashboard import Auth, hash_password, verify_password
from celeriac.dashboard.auth import OPERATOR, READ, parse_users
from celeriac.dashboard.data import TaskQuery, overview, task_page
from celeriac.dashboard.masking import mask_repr, mask_value
from celeriac.dashboard.monitor import Monitor


def test_password_hashes() -> None:
    hashed = hash_password("correct horse")
    assert hashed.startswith("scrypt$16384$8$1$")
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct horsE", hashed)
    assert hash_password("correct horse") != hashed  # salted
    assert not verify_password("x", "scrypt$nonsense")
    assert not verify_password("x", "")
    with pytest.raises(ValueError):
        hash_password("")


def test_credentials_from_the_environment() -> None:
    hashed = hash_password("pw")
    auth = Auth.from_env({
        "CELERIAC_DASHBOARD_TOKEN": "t" * 20, "CELERIAC_DASHBOARD_READ_TOKEN": "r" * 20,
        "CELERIAC_DASHBOARD_USERS": f"ann:operator:{hashed}, bob:read:{hashed}",
        "CELERIAC_DASHBOARD_SECRET": "s",
    })  # fmt: skip
    assert not auth.open
    assert (auth.by_token("t" * 20) or pytest.fail()).role == OPERATOR
    assert (auth.by_token("r" * 20) or pytest.fail()).role == READ
    assert auth.by_token("x" * 20) is None
    assert (auth.by_password("bob", "pw") or pytest.fail()).role == READ
    assert auth.by_password("bob", "wrong") is None and auth.by_password("eve", "pw") is None
    assert Auth.from_env({}).open
    same_secret = Auth.from_env({"CELERIAC_DASHBOARD_SECRET": "s"})
    assert same_secret.unsign(auth.sign({"sid": "1"})) is not None  # sessions outlive restarts


@pytest.mark.parametrize(
    ("users", "error"),
    [("ann:admin:scrypt$1$2$3$4$5", "role"), ("ann:operator", "name:role:hash"),
     ("ann:read:plain-password", "--hash-password"), (":read:scrypt$1$2$3$4$5", "user name")],
)  # fmt: skip
def test_bad_user_entries_are_refused(users: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_users(users)


def test_short_tokens_are_refused() -> None:
    with pytest.raises(ValueError, match="16 characters"):
        Auth({"short": OPERATOR})


def test_signed_cookies() -> None:
    auth = Auth()
    value = auth.sign({"sid": "abc", "name": "ann", "role": READ})
    assert auth.unsign(value) == {"sid": "abc", "name": "ann", "role": READ,
                                  "exp": pytest.approx(time.time() + 12 * 3600, abs=5)}  # fmt: skip
    payload, _, signature = value.partition(".")
    assert auth.unsign(payload + "." + signature[::-1]) is None
    assert Auth().unsign(value) is None  # another key
    assert auth.check_csrf("abc", auth.csrf_token("abc"))
    assert not auth.check_csrf("abd", auth.csrf_token("abc"))
    assert not auth.check_csrf("abc", "")


@pytest.mark.parametrize(
    ("text", "names", "shown"),
    [
        ("{'password': 'x', 'author': 'me'}", None, "{'password': '***', 'author': 'me'}"),
        ("{'nested': {'api_key': 1, 'db_token': [2]}}", None,
         "{'nested': {'api_key': '***', 'db_token': '***'}}"),
        ("('ann', 'hunter2', 3)", ["user", "password", "n"], "('ann', '***', 3)"),
        ("(<object at 0x1>, token='abc', x=1)", None, "(<object at 0x1>, token='***', x=1)"),
        ("{'secret': 'a', 'Authorization': 'Bearer x', ...}", None,
         "{'secret': '***', 'Authorization': '***', ...}"),
        ("('<b>',)", None, "('<b>',)"),
        ("", None, ""),
    ],
)  # fmt: skip
def test_masking(text: str, names: list[str] | None, shown: str) -> None:
    assert mask_repr(text, names) == shown


def test_masking_values() -> None:
    assert mask_value([{"password": 1, "ok": {"session_id": 2}}]) == [
        {"password": "***", "ok": {"session_id": "***"}}
    ]


def _events(count: int) -> list[dict[str, object]]:
    now = time.time()
    events: list[dict[str, object]] = []
    for i in range(count):
        task_id, stamp = str(uuid.uuid4()), now - 100 + i / 1000
        events.append({"type": "task-received", "uuid": task_id, "name": f"proj.t{i % 20}",
                       "args": f"({i}, 'x')", "kwargs": "{}", "queue": f"q{i % 3}",
                       "hostname": f"w{i % 4}@h", "timestamp": stamp})  # fmt: skip
        events.append({"type": "task-failed" if i % 10 == 0 else "task-succeeded",
                       "uuid": task_id, "result": str(i), "runtime": 0.001,
                       "hostname": f"w{i % 4}@h", "timestamp": stamp + 0.0005})  # fmt: skip
    return events


def test_the_task_list_stays_fast_with_100000_tasks() -> None:
    monitor = Monitor(Celeriac("scale", broker=f"memory://{uuid.uuid4().hex}"))
    events = _events(100_000)
    for start in range(0, len(events), 1000):
        monitor.fold(events[start : start + 1000])
    assert len(monitor.state.tasks) == 100_000
    queries = [TaskQuery(), TaskQuery(page=2000), TaskQuery(state="FAILURE"),
               TaskQuery(name="proj.t3", worker="w3@h", page=10), TaskQuery(search="(99999,"),
               TaskQuery(queue="q1", state="SUCCESS", page=500)]  # fmt: skip
    totals = []
    for query in queries:
        started = time.perf_counter()
        page = task_page(monitor, query)
        elapsed = time.perf_counter() - started
        assert elapsed < 0.5, (query, elapsed)  # about 60 ms on a 2-core machine
        assert len(page["rows"]) == min(50, page["total"])
        totals.append(page["total"])
    assert totals == [100_000, 100_000, 10_000, 5_000, 1, 30_000]
    started = time.perf_counter()
    summary = overview(monitor)
    assert time.perf_counter() - started < 0.5
    assert (summary["succeeded"], summary["failed"]) == (90_000, 10_000)
    assert summary["runtime"]["p50"] == 0.001


def test_the_monitor_is_bounded() -> None:
    monitor = Monitor(Celeriac("bound", broker=f"memory://{uuid.uuid4().hex}"), max_tasks=1000)
    monitor.fold(_events(3000))
    assert len(monitor.state.tasks) == 1000
    assert len(monitor.timelines) <= 5000
    newest = task_page(monitor, TaskQuery())["rows"][0]
    assert newest["args"] == "(2999, 'x')"
