-- msilo's policies for messages that cannot be delivered (services/msilo/notices.py).
--
-- offline_messages.refusals: how many times the recipient's client refused the message with
-- a permanent final response (4xx-6xx other than the transient 408, 429, 480, 486, 491,
-- 500, 503, 504, 600; a timeout is 408, a transport failure 503, messages not sent behind a
-- failure have no status: none of these count). Once it reaches IMSTACK_MSILO_MAX_ATTEMPTS
-- msilo deletes the message, tells a local sender, and delivers the messages behind it.
--
-- offline_messages.notice: the row is msilo's own notice to a local sender who was offline
-- (their message expired or was given up). Its expiry or refusal never causes another
-- notice, so a notice can never answer a notice.
ALTER TABLE offline_messages ADD COLUMN refusals integer NOT NULL DEFAULT 0;
ALTER TABLE offline_messages ADD COLUMN notice boolean NOT NULL DEFAULT false;
