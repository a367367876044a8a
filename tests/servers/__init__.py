"""Real servers the integration tests start and stop: FreeRADIUS and friends."""
