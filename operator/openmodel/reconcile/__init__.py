"""The reconcile: render and plan the children, apply what differs, build status; the resync
that drives it again now and then."""
