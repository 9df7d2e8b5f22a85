-- Argo CD health of an McpAuthPolicy or McpServer (mcpauth.dev), from what the operator writes:
-- status.observedGeneration and the Ready and Stalled conditions. Plain Lua 5.1 (Argo CD's).
local hs = { status = "Progressing", message = "Waiting for the operator to reconcile" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
-- A spec change is only reflected once the operator has reconciled that generation.
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for the operator to reconcile generation " .. tostring(generation)
  return hs
end
local ready = nil
local stalled = nil
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then ready = c end
  if c.type == "Stalled" then stalled = c end
end
-- Stalled=True: the operator cannot go on until someone fixes the spec, a Secret or Keycloak.
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = tostring(stalled.reason) .. ": " .. tostring(stalled.message)
  return hs
end
if ready == nil then
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = tostring(ready.message)
  return hs
end
-- Ready=False for a reason that can clear by itself (Keycloak unreachable, policy not Ready yet,
-- no replica available yet, a Secret not applied yet).
hs.message = tostring(ready.reason) .. ": " .. tostring(ready.message)
return hs
