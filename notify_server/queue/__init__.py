"""The queue snapshot's rules: inspect replies, scoping, state, poll outcomes (pure)."""
