"""Tasks: what differs between kinds of learning (inputs, targets, loss, metrics, pictures)."""
