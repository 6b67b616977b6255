"""Redis adapters: the relay, the history, the lease, the clients."""
