-- Argo CD health check for openmodel.dev/ModelDeployment.
-- Install: argocd-cm key resource.customizations.health.openmodel.dev_ModelDeployment
-- (argocd/argocd-cm.yaml is generated from this file; see docs/gitops.md).
--
-- Order matters: a status written for an older generation says nothing about the
-- spec Argo CD just synced, so it is "waiting for the operator" whatever it holds.
-- Degraded (the spec cannot be served) wins over Ready: the previous version may
-- still be serving, but what Git asks for is not what runs.
local hs = {}

local function condition(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.observedGeneration == nil
    or (obj.metadata.generation ~= nil and obj.metadata.generation > status.observedGeneration) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end

local degraded = condition(status.conditions, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = degraded.message or degraded.reason or "Degraded"
  return hs
end

-- LoRA adapters (written by the operator's adapter loop): one the engines refuse makes
-- the app Degraded; adapters still loading keep a Ready model Progressing.
local adapters = condition(status.conditions, "AdaptersReady")
if adapters ~= nil and adapters.status == "False" and adapters.reason == "AdapterFailed" then
  hs.status = "Degraded"
  hs.message = adapters.message or "an adapter failed to load"
  return hs
end

local ready = condition(status.conditions, "Ready")
-- Scaled to zero is a state the user asked for (replicas: 0, or autoscaling with
-- minReplicas 0 and no requests): nothing serves, nothing is wrong, and no pod is there
-- to load adapters on. The operator writes it as Ready True; statuses written before
-- that said Ready False, and read the same.
if ready ~= nil and ready.reason == "ScaledToZero" then
  hs.status = "Healthy"
  hs.message = ready.message or "scaled to zero replicas"
  return hs
end
if ready ~= nil and ready.status == "True" and adapters ~= nil and adapters.status == "False" then
  hs.status = "Progressing"
  hs.message = adapters.message or "loading adapters"
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end
hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil then
  hs.message = ready.message
else
  hs.message = "waiting for the Ready condition"
end
return hs
