"""Placement: where a sweep's live model and experts go (devices, memory plan, device map),
planned from the models' configs and headers before any weight is read."""
