"""Helpers under Ray's `ray.util` names, so code written for Ray imports them unchanged."""
