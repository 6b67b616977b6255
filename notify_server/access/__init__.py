"""Who may connect: tokens and limits (pure)."""
