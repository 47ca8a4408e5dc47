"""The chart's values as a typed model, and values.schema.json generated from it."""
