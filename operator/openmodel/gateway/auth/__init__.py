"""The gateway's authentication and authorization (docs/security.md), one module a concern:

- `credentials`: the `Authorization` header -> an API key or a JWT (no I/O; malformed and
  overlong refused here);
- `decision_cache`: a bounded LRU whose entries expire;
- `token_review`: who a token is (TokenReview, cached; refused tokens briefly);
- `api_keys` / `api_key_watch`: our APIKey objects (hash + ServiceAccount), fed by a watch;
- `access_review`: may a caller `use` a ModelDeployment (SubjectAccessReview, cached);
- `kube_reviews`: the two review requests to the API server;
- `access_control`: the modes (off, audit, enforce), the middleware, the OpenAI errors.
"""
