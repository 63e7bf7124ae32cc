"""``/metrics`` on the dashboard: Prometheus' text format, read from the real broker of a real
worker, behind the same credentials as every other route."""

from __future__ import annotations

import sys

import httpx
import pytest
from helpers import wait_until
from prometheus_client.parser import text_string_to_metric_families

import celeriac
from celeriac.metrics import CONTENT_TYPE

from .support import (
    OPERATOR_TOKEN,
    READ_TOKEN,
    READER,
    READER_PASSWORD,
    Project,
    Served,
)  # fmt: skip

pytestmark = pytest.mark.timeout(60)

#: What Prometheus sends as Accept when it scrapes.
SCRAPER_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1"
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: ``(name, sorted labels) -> value``."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = client.get("/metrics", headers={"accept": SCRAPER_ACCEPT})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == CONTENT_TYPE
    return samples(answer.text)


def depth(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], queue: str) -> float:
    return found.get(("celeriac_queue_messages", (("queue", queue),)), -1.0)


def test_depths_and_dead_letters_of_a_real_broker(open_dashboard: Served, project: Project) -> None:
    broker = project.app.broker
    with open_dashboard.client() as client:
        before = scrape(client)
        assert before[("celeriac_broker_up", ())] == 1.0
        assert depth(before, "celeriac") >= 0  # the default queue, which the worker takes
        assert depth(before, "parked") >= 0  # a routed queue no worker takes from
        project.send("parked")  # waits: no worker consumes "parked"
        broker.publish("metrics-q", b"not a task message")
        [delivery] = broker.fetch(["metrics-q"], 1, timeout=5)
        assert broker.dead_letter(delivery, "metrics-test")
        after = scrape(client)
    assert depth(after, "parked") == depth(before, "parked") + 1
    assert after[("celeriac_dead_letters", ())] == before[("celeriac_dead_letters", ())] + 1


def test_queues_a_worker_takes_are_reported(open_dashboard: Served) -> None:
    """The dashboard learns each worker's queues by asking it; the metrics follow."""
    with open_dashboard.client() as client:
        wait_until(lambda: client.get("/api/queues").json()["queues"], 15, "queues sampled")
        known = {q["name"] for q in client.get("/api/queues").json()["queues"]}
        found = scrape(client)
    reported = {dict(labels)["queue"] for name, labels in found if name.endswith("_messages")}
    assert known <= reported


@pytest.mark.parametrize("token", [READ_TOKEN, OPERATOR_TOKEN])
def test_a_scraper_with_a_bearer_token(secured_dashboard: Served, token: str) -> None:
    with secured_dashboard.client(headers={"authorization": f"Bearer {token}"}) as client:
        found = scrape(client)
    assert found[("celeriac_broker_up", ())] == 1.0
    assert ("celeriac_dead_letters", ()) in found


def test_a_reader_with_basic_auth(secured_dashboard: Served) -> None:
    with secured_dashboard.client(auth=(READER, READER_PASSWORD)) as client:
        assert scrape(client)[("celeriac_broker_up", ())] == 1.0


@pytest.mark.parametrize("accept", [SCRAPER_ACCEPT, "text/html", "*/*"])
def test_no_credentials_no_metrics(secured_dashboard: Served, accept: str) -> None:
    """Never the login form's redirect: a scraper is told to bring a token."""
    with secured_dashboard.client() as client:
        answer = client.get("/metrics", headers={"accept": accept})
        wrong = client.get("/metrics", headers={"authorization": "Bearer " + "x" * 30})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="celeriac"'
    assert "celeriac_" not in answer.text
    assert wrong.status_code == 401


def test_without_prometheus_client_the_answer_names_the_extra(
    open_dashboard: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "celeriac.metrics")
    monkeypatch.delattr(celeriac, "metrics")
    with open_dashboard.client() as client:
        answer = client.get("/metrics")
    assert answer.status_code == 501
    assert answer.headers["content-type"].startswith("text/plain")
    assert "pip install 'celeriac[metrics]'" in answer.text
