"""The openmodel gateway: one OpenAI-compatible endpoint for every ModelDeployment.

* ``routes``   -- model name -> ModelDeployment -> routable pods (pure).
* ``watch``    -- keeps the routes in step with the cluster (list + watch).
* ``static``   -- routes from a file instead (benchmarks).
* ``balancer`` -- least outstanding work among a model's pods.
* ``poller``   -- engines' queue gauges and loaded adapters, for the balancer.
* ``proxy``    -- the HTTP side: route, hold, forward, stream; /v1/models, /demand.
* ``server``   -- runs it all (``python -m openmodel.gateway``).
"""
