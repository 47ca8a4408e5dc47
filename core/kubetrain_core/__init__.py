"""The torch-free core both sides share: the TrainingJob API, the trainer config schema,
the operator/trainer contract, the component registry and the recovery policy."""
