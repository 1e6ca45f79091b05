"""The openmodel gateway: one OpenAI-compatible endpoint for every ModelDeployment.

* ``routes``   -- model name -> ModelDeployment -> routable pods (pure).
* ``watch``    -- keeps the routes in step with the cluster (list + watch).
* ``static``   -- routes from a file instead (benchmarks).
* ``balancer`` -- least outstanding work among a model's pods.
* ``poller``   -- engines' queue gauges and loaded adapters, for the balancer.
* ``proxy``    -- the HTTP side: route, hold, forward, stream; /v1/models; and, on the
                  metrics port, /metrics and /demand.
* ``limits``   -- per identity and per namespace budgets: admit, refuse (429), settle.
* ``usage``    -- the engine's token count of each answer (and the streams' usage chunk).
* ``external`` -- ExternalModels (APIs outside the cluster): their keys, forwarding,
                  `model` rewriting, and the overflow of a ModelDeployment to one.
* ``server``   -- runs it all (``python -m openmodel.gateway``).
"""
