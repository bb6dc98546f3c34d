"""Staybook's actors: apartments and reservations (entities), and the event handlers."""
