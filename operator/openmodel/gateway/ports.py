"""Where the gateway listens (its Service, its pods, and the autoscaler's demand reads)."""

from typing import Final

GATEWAY_PORT: Final = 8080
