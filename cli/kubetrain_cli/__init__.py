"""The `kubetrain` command: the one CLI on top of the operator and the trainer."""
