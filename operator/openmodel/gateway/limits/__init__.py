"""Limits per identity and per namespace (`gateway.limits`): the sliding windows, the
admission and settlement of token reservations, and the share each gateway replica takes.

* ``window``      -- a sliding-window log (pure, the clock passed in).
* ``limiter``     -- admit or refuse a caller's request; settle its tokens when it ends.
* ``reservation`` -- the tokens a request may use, known before it runs.
* ``replicas``    -- how many gateway replicas share the budgets.
"""
