from prometheus_client import REGISTRY

from kubetrain_operator import operator_metrics


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_per_job_series_follow_the_status_and_vanish_with_the_job() -> None:
    status = {"state": "Running", "restarts": {"nan": 1, "nodeFailure": 2}, "goodputPercent": 80.5}
    operator_metrics.record_job("ns", "a", status)
    job = {"namespace": "ns", "trainingjob": "a"}
    assert _value("kubetrain_operator_job_info", **job, state="Running") == 1
    assert _value("kubetrain_operator_job_restarts", **job, cause="nodeFailure") == 2
    assert _value("kubetrain_operator_job_restarts", **job, cause="hang") == 0
    assert _value("kubetrain_operator_job_goodput_percent", **job) == 80.5
    assert _value("kubetrain_operator_jobs", state="Running") == 1

    operator_metrics.record_job("ns", "a", {"state": "Succeeded"})
    assert _value("kubetrain_operator_job_info", **job, state="Running") is None
    assert _value("kubetrain_operator_job_info", **job, state="Succeeded") == 1
    assert _value("kubetrain_operator_jobs", state="Running") == 0

    operator_metrics.record_job("ns", "a", None)
    assert _value("kubetrain_operator_job_info", **job, state="Succeeded") is None
    assert _value("kubetrain_operator_job_goodput_percent", **job) is None
    assert _value("kubetrain_operator_jobs", state="Succeeded") == 0
