"""通报: one-way notifications and their acknowledgement (接收确认)."""
