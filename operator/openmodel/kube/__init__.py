"""Kubernetes access: typed requests (calls), the watch-fed cache, the Lease, events and the
loops' status writes."""
