"""The controller runtime: the one way into a reconcile pass, and what it remembers.

It knows objects only by key, (namespace, name); what a pass does is the domain's
(`reconcile/`). `queue.PassQueue` is the only door into a pass: kopf's events, the
resync's sweep and the cache audit, an election, a failed pass's retry, and the model
resolver's answers all add a key to it; `workers.work_forever` takes keys and runs the
passes, counted and limited alike. `memory.ObjectMemory` forgets everything kept about
one object in one call.
"""
