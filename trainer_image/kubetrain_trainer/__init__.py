"""kubetrain modular trainer: the data plane that every TrainingJob pod runs."""
