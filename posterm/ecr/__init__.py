"""The ECR side, protocol-independent: the journal of what was sent and what became of it."""
