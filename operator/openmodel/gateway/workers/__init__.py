"""Several gateway processes in one pod (`gateway.workers` > 1): a supervisor
(`supervisor.py`) starts the workers, each a whole gateway on its own event loop sharing
the API port (SO_REUSEPORT), restarts one that dies, and serves the pod's one monitoring
view (`merge.py`: /demand summed, /metrics with a `worker` label); `role.py` is what a
worker changes in itself to take its share of the pod."""
