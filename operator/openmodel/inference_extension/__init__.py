"""Gateway API Inference Extension: per ModelDeployment an InferencePool
(inference.networking.k8s.io/v1) and an HTTPRoute (gateway.networking.k8s.io/v1) to it.

`config` parses the platform config's `inferenceExtension`, `render` builds the two
objects (pure), `discovery` asks whether the API server serves them (cached), and `gate`
leaves them out of the apply while it does not.
"""
