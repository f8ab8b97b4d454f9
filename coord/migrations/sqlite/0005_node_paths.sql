-- Path discovery: the node's disco key and home relay region, as it last reported them
-- in a map request; peers' netmaps carry both so they can probe and reach it by relay.
ALTER TABLE nodes ADD COLUMN disco_key TEXT;
ALTER TABLE nodes ADD COLUMN home_relay INTEGER;
