"""The autoscaler's parts that need no Kubernetes: read, scrape, decide.

* ``metrics``:  Prometheus text -> ``QueueReading`` | ``MetricFailure`` (``read_queue``).
* ``scrape``:   ``Scraper.scrape(targets, names)`` -> {pod: result}, concurrent, bounded.
* ``decision``: ``decide(observation=, current_replicas=, policy=, history=, now=)`` ->
  ``Decision`` (desired replicas, new history, reason, message). Pure.

One cycle, as the operator loop runs it for each ModelDeployment with autoscaling::

    results = await scraper.scrape(targets_for(ready_pods), engine_for(spec.engine).metric_names)
    observation = Observation.from_results(results, starting=not_ready_pod_names)
    decision = decide(observation=observation, current_replicas=deployment_replicas,
                      policy=policy, history=histories[key], now=time.monotonic())
    histories[key] = decision.history
    if decision.desired_replicas != deployment_replicas: write replicas, emit an event

The loop (pod listing, replica writes, status, leader election) lives elsewhere.
"""

from openmodel.autoscaler.decision import (
    Decision,
    DecisionReason,
    Observation,
    Recommendation,
    ScalingHistory,
    ScalingPolicy,
    decide,
)
from openmodel.autoscaler.metrics import (
    FailureKind,
    MetricFailure,
    MetricNames,
    MetricResult,
    QueueReading,
    read_queue,
)
from openmodel.autoscaler.scrape import Scraper, ScrapeTarget

__all__ = [
    "Decision",
    "DecisionReason",
    "FailureKind",
    "MetricFailure",
    "MetricNames",
    "MetricResult",
    "Observation",
    "QueueReading",
    "Recommendation",
    "ScalingHistory",
    "ScalingPolicy",
    "ScrapeTarget",
    "Scraper",
    "decide",
    "read_queue",
]
