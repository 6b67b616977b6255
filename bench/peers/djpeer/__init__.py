"""The seed's own stack, as small as it can be while staying idiomatic:
Django + Channels 4 + channels_redis, served by daphne. Only for the benchmark."""
