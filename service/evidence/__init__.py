"""The evidence log: every message sent or received, hash-chained, checkpointed and verifiable
again, here or offline from an exported bundle (issue 10 item 1; docs/security/evidence.md)."""
