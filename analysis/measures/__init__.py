"""unisweep package."""
