"""The yes/no keyword model: its contract, training, evaluation and the shipped artifact."""
