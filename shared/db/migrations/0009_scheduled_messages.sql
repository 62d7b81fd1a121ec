-- Scheduled messages (Kamailio's msilo reminders) and ordered delivery windows.
--
-- offline_messages.not_before: an optional send time. msilo delivers such a message only
-- once it is due (not_before <= now()) and the recipient is registered; until then it is
-- kept like any offline message (it still expires at expires_at). Among the messages that
-- are due, delivery is in storage order (id); a message not yet due does not hold back the
-- ones behind it.
--
-- outbound_messages.order_key / claimed_by: ordered delivery chains. msilo queues a window
-- of one recipient's stored messages at once, every row with the same order_key
-- ('msilo:<recipient>'), ids in storage order. The relay sends the rows of one order_key
-- strictly one after the other in id order (the next only after the previous got a 2xx);
-- when one fails, every later row of that key still queued or being sent by the same relay
-- is finished 'failed' without being sent (last_status NULL, last_reason 'not sent: an
-- earlier message failed'), so nothing overtakes it. claimed_by is the relay instance that
-- claimed the row: a relay claims a row of an order_key only when every earlier row of that
-- key still queued or being sent is in the same claim or was claimed by itself (replicas
-- never split one chain). Rows with no order_key are sent independently, as before.
ALTER TABLE offline_messages ADD COLUMN not_before timestamptz;

ALTER TABLE outbound_messages ADD COLUMN order_key text;
ALTER TABLE outbound_messages ADD COLUMN claimed_by text;

CREATE INDEX outbound_messages_order ON outbound_messages (order_key, id)
    WHERE order_key IS NOT NULL AND status IN ('queued', 'sending');
-- msilo's look-ups of a recipient's messages in flight, and the next scheduled time.
CREATE INDEX offline_messages_sending ON offline_messages (recipient, id) WHERE state = 'sending';
CREATE INDEX offline_messages_not_before ON offline_messages (not_before)
    WHERE not_before IS NOT NULL;
