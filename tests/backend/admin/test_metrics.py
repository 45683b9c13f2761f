"""/metrics in Prometheus' text format, parsed with prometheus-client's own parser, after some
predictions and one training job (run by a real worker: its outcome is counted in Redis)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.backend.admin.conftest import wait_for
from tests.backend.conftest import brush_task, encode, keypoint, noise_image, predict_body, publish_adapter


def scrape(live) -> dict[tuple[str, tuple], float]:
    with live.client(token=None) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_after_predictions_and_a_training_job(live, worker, project, file_server):
    publish_adapter(live.registry, live.services.models.weights, project, ["cat", "dog"])
    before = scrape(live)
    url = file_server.add(f"/{project}-m.png", encode(noise_image(80, 90, 5)))
    other = file_server.add(f"/{project}-n.png", encode(noise_image(70, 50, 6)))
    with live.client() as client:
        for _ in range(2):  # the second batch finds both embeddings in memory
            client.post("/predict", json=predict_body(project, [brush_task(1, url), brush_task(2, other)]))
        click = predict_body(project, [brush_task(1, url)], context={"result": [keypoint(40, 40)]})
        client.post("/predict", json=click)
        client.post(f"/admin/api/projects/{project}/train")
    wait_for(lambda: (s := scrape(live)) and value(s, "samloop_training_jobs_total", outcome="promoted") >= 1)
    after = scrape(live)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("samloop_prediction_seconds_count", kind="batch") == 2
    assert delta("samloop_prediction_seconds_count", kind="interactive") == 1
    assert delta("samloop_predicted_tasks_total", kind="batch") == 4
    assert delta("samloop_prediction_seconds_bucket", kind="batch", le="+Inf") == 2
    assert delta("samloop_prediction_seconds_sum", kind="batch") > 0
    assert delta("samloop_embedding_lookups_total", layer="memory", result="miss") >= 2
    assert delta("samloop_embedding_lookups_total", layer="memory", result="hit") >= 3  # batch 2 + the click
    assert delta("samloop_embedding_lookups_total", layer="store", result="miss") >= 2
    # One job in this module's Redis namespace: counted once, with its duration in the histogram.
    assert value(after, "samloop_training_jobs_total", outcome="promoted") == 1
    assert value(after, "samloop_training_job_seconds_count", outcome="promoted") == 1
    assert value(after, "samloop_training_job_seconds_bucket", outcome="promoted", le="+Inf") == 1
    assert 0 < value(after, "samloop_training_job_seconds_sum", outcome="promoted") < 60
    assert value(after, "samloop_active_adapter_version", project=project) == 2
    assert value(after, "samloop_served_adapter_version", project=project) == 2


def test_encodings_ahead_of_clicks_are_counted(live, project, file_server):
    # Untrained project: the single-task /predict Label Studio sends when a task opens only encodes.
    url = file_server.add(f"/{project}-open.png", encode(noise_image(64, 64, 8)))
    before = value(scrape(live), "samloop_encodings_ahead_total", source="task_opened")
    with live.client() as client:
        client.post("/predict", json=predict_body(project, [brush_task(1, url)]))
        client.post("/predict", json=predict_body(project, [brush_task(1, url)]))  # already encoded: not again
    assert value(scrape(live), "samloop_encodings_ahead_total", source="task_opened") - before == 1
