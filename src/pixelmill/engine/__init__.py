"""The execution engine: validate and price graphs, persist, schedule, run nodes."""
