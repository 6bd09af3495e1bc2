-- Appends one `message` frame to its room's history stream and publishes
-- it to the room's channel with the new entry's id spliced in as its last
-- field, "position". One script, so the two happen together: no other
-- command runs between them, and every subscriber therefore sees a room's
-- messages in the order of its stream.
--
-- KEYS[1]  the room's history stream ({ns}:history:{room})
-- ARGV[1]  the room's channel ({ns}:room:{room})
-- ARGV[2]  entries to keep, approximately (MAXLEN ~)
-- ARGV[3]  oldest entry to keep, in ms of age (MINID ~ now - age); 0: none
-- ARGV[4]  the frame: a JSON object, so its last byte is '}'
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'frame', ARGV[4])
local age = tonumber(ARGV[3])
if age > 0 then
  local now = redis.call('TIME')
  local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - age
  redis.call('XTRIM', KEYS[1], 'MINID', '~', oldest)
end
redis.call('PUBLISH', ARGV[1], string.sub(ARGV[4], 1, -2) .. ',"position":"' .. id .. '"}')
