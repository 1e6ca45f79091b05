"""What may leave an engine pod and who may reach it: the engines' telemetry and offline
switches in the environment, and the NetworkPolicy every ModelDeployment gets
(docs/security.md, *Data stays in*). Pure: the reconciler and `openmodel render` call it
alike."""
