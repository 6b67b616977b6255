"""The wire: message shapes, stream ids, frames (pure)."""
