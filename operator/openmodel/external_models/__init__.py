"""The operator's ExternalModel loop: each ExternalModel's verdict in its status, and the
gateway's egress NetworkPolicy for the declared upstreams (docs/api.md, "ExternalModel")."""
