"""The torch-free core both sides share: the TrainingJob API, the trainer config schema,
the operator/trainer contract, the component registry, the recovery policy, and the
checkpoint store's read side (checkpoints/)."""
