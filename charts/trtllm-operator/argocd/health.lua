-- Argo CD health of trtllm.dev LLMEngine and LLMDeployment objects (both kinds follow the
-- same status contract). Register it under both keys of argocd-cm (see argocd-cm.yaml):
--   resource.customizations.health.trtllm.dev_LLMEngine
--   resource.customizations.health.trtllm.dev_LLMDeployment
--
-- Progressing  the operator has not reported on the current spec yet (status.observedGeneration
--              differs from metadata.generation), or Ready is False while work goes on
--              (Reconciling: a build running, GPUs or nodes awaited, a rollout)
-- Degraded     Stalled is True: a failed build, an invalid spec, a pod that cannot start;
--              the message says what to change
-- Healthy      Ready is True for the current spec
local hs = {}
hs.status = "Progressing"
hs.message = "Waiting for the operator to report status"

local function describe(c)
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = nil
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Stalled" and c.status == "True" then
      hs.status = "Degraded"
      hs.message = describe(c)
      return hs
    end
    if c.type == "Ready" then
      ready = c
    end
  end
end
if ready ~= nil then
  if ready.status == "True" then
    hs.status = "Healthy"
  end
  hs.message = describe(ready)
end
return hs
