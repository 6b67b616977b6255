"""Celery adapters: the inspect poller and the event bridge, with their helper processes.

In the server process (event loop): `poller` (schedules inspect polls) and
`bridge` (supervises the event bridge's helper), both starting their helper
with `helper_process`. In the inspect helper: `inspect_helper`. In the
bridge's helper: `bridge_helper`, which follows the pure `bridge_rules` and
`bridge_mapping`. Both helpers reach the broker through `broker`.
"""
