-- Why an attempt failed, beyond its error class: a short text (the host and the system's own
-- words, e.g. "certificate verify failed: self-signed certificate"), credentials redacted,
-- at most a few hundred characters. NULL for successes, for HTTP answers (response_body
-- says it) and for rows written before this column existed.
ALTER TABLE delivery_attempts ADD COLUMN error_detail text;
