"""Operating pixelmill: metrics, readiness, request logs and traces."""
