"""DRR synthesis: geometry, X-ray physics, the cone-beam projector and display processing."""
