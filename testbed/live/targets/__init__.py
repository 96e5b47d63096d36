"""Chaos against the user's own deployment: a target spec, a journaled operator with rollbacks, safety checks, and the run driver for client and gateway modes."""
