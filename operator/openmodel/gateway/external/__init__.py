"""External models in the gateway: OpenAI-compatible APIs outside the cluster, routed
like self-hosted models (same door, limits and usage), and the overflow of a
ModelDeployment's requests to one while it has no room (docs/gateway.md).

* ``rewrite``  -- the body sent upstream (its `model`), the headers (the key), and the
                  `model` of every answer rewritten back to the client's name (pure).
* ``overflow`` -- whether a request overflows, and why (pure).
* ``privacy``  -- the namespaces whose data must stay in the cluster.
* ``keys``     -- each ExternalModel's key, read from its Secret, kept in memory only.
* ``forward``  -- send one request upstream and stream its answer back.
"""
