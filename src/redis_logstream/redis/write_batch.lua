-- Write one chunk of log records (see sink.py).
-- KEYS[1]: the global stream; KEYS[2..]: the context streams of this chunk.
-- ARGV: maxlen, context ttl, ttl of KEYS[1] (0: none), length of the
--       stream prefix, PUBLISH or SPUBLISH, then per record: the index in
--       KEYS of its context stream (1 when it has none) and its JSON.
-- On a cluster, where a call's keys share a slot, KEYS[1] may be a
-- context's stream, with every record at index 1.
-- A stream's channel is its key without the stream prefix.
-- Returns {records stored, records refused, first refusal or ""}: a key of
-- the wrong type refuses its records, not the whole chunk.  A refused
-- PUBLISH, XTRIM or EXPIRE (an ACL that lacks it) refuses no record, but
-- its error is returned all the same, so that it is seen and counted.
local maxlen = ARGV[1]
local ctx_ttl = tonumber(ARGV[2])
local global_ttl = tonumber(ARGV[3])
local plen = tonumber(ARGV[4])
local publish = ARGV[5]
local refused, first_refusal = 0, ''

local function refuses(reply)
  if type(reply) == 'table' and reply.err then
    local text = tostring(reply.err)
    if string.find(text, 'OOM', 1, true) then
      error(reply) -- out of memory: the caller keeps the chunk and retries
    end
    if first_refusal == '' then first_refusal = text end
    return true
  end
  return false
end

local channels = {}
for i = 1, #KEYS do
  channels[i] = string.sub(KEYS[i], plen + 1)
end
local gkey, gchannel = KEYS[1], channels[1]
for i = 6, #ARGV, 2 do
  local k = tonumber(ARGV[i])
  local data = ARGV[i + 1]
  local bad = false
  if k > 1 then
    bad = refuses(redis.pcall('XADD', KEYS[k], '*', 'data', data))
    refuses(redis.pcall(publish, channels[k], data))
  end
  bad = refuses(redis.pcall('XADD', gkey, '*', 'data', data)) or bad
  refuses(redis.pcall(publish, gchannel, data))
  if bad then refused = refused + 1 end
end
for i = 1, #KEYS do
  refuses(redis.pcall('XTRIM', KEYS[i], 'MAXLEN', '~', maxlen))
  local ttl = ctx_ttl
  if i == 1 then ttl = global_ttl end
  if ttl > 0 then
    refuses(redis.pcall('EXPIRE', KEYS[i], ttl))
  end
end
return {(#ARGV - 5) / 2 - refused, refused, first_refusal}
