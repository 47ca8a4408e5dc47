"""kubetrain control plane: the TrainingJob API, pure recovery policy and the kopf operator."""
