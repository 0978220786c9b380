"""Training: data, the networks, the verifier's head and the shipped pair."""
