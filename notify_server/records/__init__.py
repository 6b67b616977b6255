"""Task records: what a record shows, how lists are asked for and paged (pure)."""
