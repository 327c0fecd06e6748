-- HL7 v2 intake (issue 6): every message the gateway accepted (ACK AA), written in the same
-- transaction as the resources it produced, so that a message sent again with the same
-- control id (MSH-10) by the same sender (MSH-3 and MSH-4) is acknowledged without a second
-- write. Only ids are kept here, never the message or the resources' content (so erasure
-- of a resource leaves nothing of it behind in this table).
CREATE TABLE hl7v2_message (
    sender       TEXT NOT NULL,            -- MSH-3 and MSH-4 as sent, joined by MSH-1
    control_id   TEXT NOT NULL,            -- MSH-10
    message_type TEXT NOT NULL,            -- MSH-9
    ack_code     TEXT NOT NULL,            -- the MSA-1 the message was answered with
    responses    TEXT NOT NULL,            -- JSON: each Bundle entry's status, location, etag
    received_at  BIGINT NOT NULL,          -- ms since the epoch
    PRIMARY KEY (sender, control_id)
);
