"""The autoscaler: decide replicas from the engines' queues, and the loop that writes them.

Reading and scraping the engines' metrics is ``openmodel.engine_metrics`` (the gateway
reads them too); here:

* ``decision``: ``decide(observation=, current_replicas=, policy=, history=, now=)`` ->
  ``Decision`` (desired replicas, new history, reason, message). Pure.

One cycle, as the operator loop runs it for each ModelDeployment with autoscaling::

    results = await scraper.scrape(targets_for(ready_pods), engine_for(spec.engine).metric_names)
    observation = Observation.from_results(results, starting=not_ready_pod_names)
    decision = decide(observation=observation, current_replicas=deployment_replicas,
                      policy=policy, history=histories[key], now=time.monotonic())
    histories[key] = decision.history
    if decision.desired_replicas != deployment_replicas: write replicas, emit an event

The loop (``loop.py``: pods from the cache, replica writes, status) runs it.
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

__all__ = [
    "Decision",
    "DecisionReason",
    "Observation",
    "Recommendation",
    "ScalingHistory",
    "ScalingPolicy",
    "decide",
]
