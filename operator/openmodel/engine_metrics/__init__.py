"""Reading the engines' own Prometheus metrics: what the autoscaler decides on and the
gateway balances by.

* ``exposition``: Prometheus text -> ``QueueReading`` | ``MetricFailure`` (``read_queue``),
  for the metric names an engine states (``Engine.metric_names``).
* ``scrape``: ``Scraper.scrape(targets, names)`` -> {pod: result}, concurrent, bounded.
"""
