"""Upstream RADIUS as the password check, against real FreeRADIUS."""
